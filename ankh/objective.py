"""Ankh's pretraining objective: 1-gram span partial de-masking (pure numpy, no Ray).

Each selected residue is its own span. In the encoder input it is replaced by a sentinel
(``<extra_id_0>`` = 143, then 142, ... in order of position); the decoder target lists each
sentinel followed by the residue it hid, then ``</s>``::

    residues  A B C D E F G          input   A B <x0> D E F <x1> </s>
    masked       ^       ^           target  <x0> C <x1> G </s>

With ``full_reconstruction`` the encoder input is the same but the target is the whole
original sequence + ``</s>`` (the "full de-masking" ablation of the Ankh paper).

Randomness is a pure function of ``(seed, epoch, example_id)``: the same example gets the same
crop and mask wherever and whenever it is processed (any worker, after any resume), and a
different crop and mask in the next epoch.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ankh.tokenizer import AnkhTokenizer


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    mask_prob: float = 0.20  # fraction of residues replaced by sentinels (rounded per sequence)
    max_residues: int = 512  # longer sequences are randomly cropped (crop seeded per epoch)
    full_reconstruction: bool = False  # target = whole sequence instead of the masked residues

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_prob <= 1.0:
            raise ValueError(f"mask_prob must be in (0, 1], got {self.mask_prob}")
        if self.max_residues < 1:
            raise ValueError(f"max_residues must be >= 1, got {self.max_residues}")

    def num_masked(self, n: int) -> int:
        """Residues masked in a sequence of ``n`` residues (at least one)."""
        return max(1, int(round(n * self.mask_prob))) if n > 0 else 0

    def max_encoder_tokens(self) -> int:
        return self.max_residues + 1  # + </s>

    def max_decoder_tokens(self) -> int:
        if self.full_reconstruction:
            return self.max_residues + 1
        return 2 * self.num_masked(self.max_residues) + 1


def example_rng(seed: int, epoch: int, example_id: int) -> np.random.Generator:
    """Independent stream per (seed, epoch, example): order- and worker-independent."""
    return np.random.default_rng([seed & 0xFFFFFFFF, epoch, int(example_id) & 0xFFFFFFFFFFFFFFFF])


class Objective:
    """Turns residue ids into ``(encoder_input, target)`` pairs, both ending in ``</s>``."""

    def __init__(self, cfg: ObjectiveConfig = ObjectiveConfig(),
                 tokenizer: AnkhTokenizer | None = None) -> None:
        self.cfg = cfg
        tok = tokenizer or AnkhTokenizer()
        self.eos_id = tok.eos_id
        first = tok.sentinel_id(0)
        # Sentinels must count down contiguously from <extra_id_0> (true of every Ankh vocab).
        n = 0
        while f"<extra_id_{n}>" in tok.vocab:
            if tok.vocab[f"<extra_id_{n}>"] != first - n:
                raise ValueError(f"sentinel <extra_id_{n}> is not {first - n}: vocab not Ankh-like")
            n += 1
        self.sentinels = first - np.arange(n, dtype=np.int32)  # [n_sentinels]
        need = cfg.num_masked(cfg.max_residues)
        if need > n:
            raise ValueError(
                f"mask_prob={cfg.mask_prob} x max_residues={cfg.max_residues} masks {need} residues "
                f"but the vocabulary has only {n} sentinels; lower one of them")

    def crop(self, residues: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A random window of ``max_residues`` (the whole sequence if it is shorter)."""
        n, m = len(residues), self.cfg.max_residues
        if n <= m:
            return residues
        start = int(rng.integers(0, n - m + 1))
        return residues[start:start + m]

    def apply(self, residues: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``residues`` int32 [n] without ``</s>`` -> (encoder ids [n+1], target ids [2k+1])."""
        n = len(residues)
        if n == 0:
            raise ValueError("cannot mask an empty sequence")
        pos = np.sort(rng.choice(n, size=self.cfg.num_masked(n), replace=False))  # [k], in order
        return self.mask_at(residues, pos)

    def mask_at(self, residues: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mask the given sorted positions: each becomes its own sentinel, in order."""
        residues = np.asarray(residues, np.int32)
        pos = np.asarray(pos, np.int64)
        n, k = len(residues), len(pos)
        if k > len(self.sentinels):
            raise ValueError(f"{k} masked residues but only {len(self.sentinels)} sentinels")
        sent = self.sentinels[:k]
        enc = np.empty(n + 1, np.int32)
        enc[:n] = residues
        enc[pos] = sent
        enc[n] = self.eos_id
        if self.cfg.full_reconstruction:
            tgt = np.append(residues, np.int32(self.eos_id))
        else:
            tgt = np.empty(2 * k + 1, np.int32)
            tgt[0:2 * k:2] = sent
            tgt[1:2 * k:2] = residues[pos]
            tgt[2 * k] = self.eos_id
        return enc, tgt

    def __call__(self, residues: np.ndarray, seed: int, epoch: int,
                 example_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Crop then mask, with randomness from ``(seed, epoch, example_id)``."""
        rng = example_rng(seed, epoch, example_id)
        return self.apply(self.crop(np.asarray(residues, np.int32), rng), rng)

    def reconstruct(self, enc: np.ndarray, tgt: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`apply` (for tests/debugging): the residues that were masked in."""
        enc = np.asarray(enc)[:-1].copy()  # drop </s>
        if self.cfg.full_reconstruction:
            return np.asarray(tgt)[:-1]
        tgt = np.asarray(tgt)[:-1]
        for s, r in zip(tgt[0::2], tgt[1::2]):
            hit = np.flatnonzero(enc == s)
            if hit.size != 1:
                raise ValueError(f"sentinel {s} appears {hit.size} times in the encoder input")
            enc[hit[0]] = r
        return enc
