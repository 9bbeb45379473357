"""Ankh's pretraining objective: 1-gram span partial de-masking (pure numpy, no Ray).

Each selected residue is its own span. In the encoder input it is replaced by a sentinel
(``<extra_id_0>`` = 143, then 142, ... in order of position); the decoder target lists each
sentinel followed by the residue it hid, then ``</s>``::

    residues  A B C D E F G          input   A B <x0> D E F <x1> </s>
    masked       ^       ^           target  <x0> C <x1> G </s>

With ``full_reconstruction`` the encoder input is the same but the target is the whole
original sequence + ``</s>`` (the "full de-masking" ablation of the Ankh paper).

With ``mean_span > 1`` (T5's span corruption, another arm of the paper's masking ablation) the
same number of residues is masked in contiguous runs of mean length ``mean_span``; each run
becomes one sentinel in the encoder input, and the target lists each sentinel followed by the
residues it hid::

    residues  A B C D E F G          input   A <x0> E F <x1> </s>
    masked      ^ ^ ^       ^        target  <x0> B C D <x1> G </s>

With ``shared_mask`` every masked residue (or run) gets the same token, ``<extra_id_0>``,
in the encoder input and in the target, instead of distinct sentinels counting down: the
decoder then tells the masks apart by their order alone.

``kind="mlm"`` is the encoder-only masked language model (BERT / ESM): the same crop and the
same selected positions as 1-gram de-masking (the same random draws), but the encoder input
keeps its length -- each selected residue becomes the mask token ``<extra_id_0>`` (with
probability ``1 - mlm_random - mlm_keep``), a random residue (``mlm_random``) or stays
(``mlm_keep``) -- and the target is aligned with it: the original residue at each selected
position, pad everywhere else (pad targets carry no loss: ``ankh.packing.build_batch``)::

    residues  A B C D E F G          input   A B <x0> D E F G </s>   (G kept: the 10 %)
    selected     ^       ^           target  _ _ C    _ _ _ G _      (_ = pad)

A run is ``(start, length)`` (``random_runs``, ``mask_runs``); ``ankh.infill``'s spans are
``(start, end)``, a different pair, hence the different word.

Randomness is a pure function of ``(seed, epoch, example_id)``: the same example gets the same
crop and mask wherever and whenever it is processed (any worker, after any resume), and a
different crop and mask in the next epoch.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from ankh.tokenizer import AnkhTokenizer


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    mask_prob: float = 0.20  # fraction of residues replaced by sentinels (rounded per sequence)
    max_residues: int = 512  # longer sequences are randomly cropped (crop seeded per epoch)
    full_reconstruction: bool = False  # target = whole sequence instead of the masked residues
    mean_span: float = 1.0  # 1 = Ankh's 1-gram masking; > 1 = spans of this mean length (T5)
    kind: Literal["ankh", "mlm"] = "ankh"  # encoder-decoder de-masking, or encoder-only MLM
    shared_mask: bool = False  # ankh: one mask token (<extra_id_0>) instead of distinct sentinels
    # mlm: of the selected residues, these fractions become a random residue / stay as they are
    # (BERT's 80/10/10); 0 and 0: every selected residue is the mask token (held-out batches)
    mlm_random: float = 0.1
    mlm_keep: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in ("ankh", "mlm"):
            raise ValueError(f"objective kind must be ankh or mlm, got {self.kind!r}")
        if not (
            self.mlm_random >= 0.0
            and self.mlm_keep >= 0.0
            and self.mlm_random + self.mlm_keep <= 1.0
        ):
            raise ValueError(
                f"mlm_random={self.mlm_random}, mlm_keep={self.mlm_keep}: need both >= 0 and a "
                "sum <= 1"
            )
        if self.kind == "mlm" and (self.full_reconstruction or self.mean_span != 1.0):
            raise ValueError(
                "the mlm objective masks single residues in place: full_reconstruction and "
                "mean_span > 1 belong to the ankh objective"
            )
        if not 0.0 < self.mask_prob <= 1.0:
            raise ValueError(f"mask_prob must be in (0, 1], got {self.mask_prob}")
        if self.mean_span < 1.0:
            raise ValueError(f"mean_span must be >= 1 (1 = 1-gram masking), got {self.mean_span}")
        if self.max_residues < 1:
            raise ValueError(f"max_residues must be >= 1, got {self.max_residues}")

    def num_masked(self, n: int) -> int:
        """Residues masked in a sequence of ``n`` residues (at least one)."""
        return max(1, int(round(n * self.mask_prob))) if n > 0 else 0

    def max_encoder_tokens(self) -> int:
        return self.max_residues + 1  # + </s>

    def num_spans(self, n: int) -> int:
        """Masked runs in a sequence of ``n`` residues: one per masked residue for 1-gram
        masking; else ``k / mean_span`` rounded, at least one, and no more than the unmasked
        residues can separate."""
        k = self.num_masked(n)
        if self.mean_span <= 1.0 or k == 0:
            return k
        return max(1, min(int(round(k / self.mean_span)), n - k + 1))

    def max_decoder_tokens(self) -> int:
        if self.full_reconstruction or self.kind == "mlm":  # mlm: targets aligned with the input
            return self.max_residues + 1
        # k residues + one sentinel per run + </s> (both counts grow with the length)
        return self.num_masked(self.max_residues) + self.num_spans(self.max_residues) + 1


def example_rng(seed: int, epoch: int, example_id: int) -> np.random.Generator:
    """Independent stream per (seed, epoch, example): order- and worker-independent."""
    return np.random.default_rng([seed & 0xFFFFFFFF, epoch, int(example_id) & 0xFFFFFFFFFFFFFFFF])


class Objective:
    """Turns residue ids into ``(encoder_input, target)`` pairs, both ending in ``</s>``."""

    def __init__(
        self, cfg: ObjectiveConfig = ObjectiveConfig(), tokenizer: AnkhTokenizer | None = None
    ) -> None:
        self.cfg = cfg
        tok = tokenizer or AnkhTokenizer()
        self.eos_id = tok.eos_id
        self.pad_id = tok.pad_id
        first = tok.sentinel_id(0)  # also the one mask token (shared_mask, mlm)
        self.residue_ids = np.flatnonzero(tok.residue_table()).astype(np.int32)  # mlm's random
        # Sentinels must count down contiguously from <extra_id_0> (true of every Ankh vocab).
        n = 0
        while f"<extra_id_{n}>" in tok.vocab:
            if tok.vocab[f"<extra_id_{n}>"] != first - n:
                raise ValueError(f"sentinel <extra_id_{n}> is not {first - n}: vocab not Ankh-like")
            n += 1
        if cfg.shared_mask or cfg.kind == "mlm":  # one token for every mask: never runs out
            n = cfg.max_residues
            self.sentinels = np.full(n, first, np.int32)
        else:
            self.sentinels = first - np.arange(n, dtype=np.int32)  # [n_sentinels]
        self._sentinel_set = set(self.sentinels.tolist())
        need = cfg.num_spans(cfg.max_residues)
        if need > n:
            raise ValueError(
                f"mask_prob={cfg.mask_prob} x max_residues={cfg.max_residues} needs {need} sentinels "
                f"but the vocabulary has only {n}; lower one of them (or raise mean_span)"
            )

    def crop(self, residues: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A random window of ``max_residues`` (the whole sequence if it is shorter)."""
        n, m = len(residues), self.cfg.max_residues
        if n <= m:
            return residues
        start = int(rng.integers(0, n - m + 1))
        return residues[start : start + m]

    def apply(
        self, residues: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """``residues`` int32 [n] without ``</s>`` -> (encoder ids [n+1], target ids [2k+1])."""
        n = len(residues)
        if n == 0:
            raise ValueError("cannot mask an empty sequence")
        if self.cfg.kind == "mlm":
            pos = np.sort(rng.choice(n, size=self.cfg.num_masked(n), replace=False))
            return self.mlm_at(residues, pos, rng.random(len(pos)), rng)
        if self.cfg.mean_span > 1.0:
            return self.mask_runs(
                residues, random_runs(n, self.cfg.num_masked(n), self.cfg.num_spans(n), rng)
            )
        pos = np.sort(rng.choice(n, size=self.cfg.num_masked(n), replace=False))  # [k], in order
        return self.mask_at(residues, pos)

    def mask_runs(self, residues: np.ndarray, runs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mask the given sorted, disjoint, non-adjacent runs (``runs`` int [s, 2]: start,
        length): each run becomes one sentinel, in order."""
        residues = np.asarray(residues, np.int32)
        if len(runs) > len(self.sentinels):
            raise ValueError(f"{len(runs)} masked runs but only {len(self.sentinels)} sentinels")
        enc, tgt, prev = [], [], 0
        for j, (start, length) in enumerate(runs):
            enc += [residues[prev:start], self.sentinels[j : j + 1]]
            tgt += [self.sentinels[j : j + 1], residues[start : start + length]]
            prev = start + length
        eos = np.array([self.eos_id], np.int32)
        enc_ids = np.concatenate(enc + [residues[prev:], eos]).astype(np.int32)
        if self.cfg.full_reconstruction:
            return enc_ids, np.append(residues, np.int32(self.eos_id))
        return enc_ids, np.concatenate(tgt + [eos]).astype(np.int32)

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
            tgt[0 : 2 * k : 2] = sent
            tgt[1 : 2 * k : 2] = residues[pos]
            tgt[2 * k] = self.eos_id
        return enc, tgt

    def mlm_at(
        self,
        residues: np.ndarray,
        pos: np.ndarray,
        u: np.ndarray | None = None,
        rng: np.random.Generator | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """MLM pair (encoder ids [n+1], aligned target [n+1]) for the selected positions ``pos``.
        ``u`` (uniform [len(pos)]) picks what each becomes: below ``1 - mlm_random - mlm_keep``
        the mask token, then a random residue (drawn from ``rng``), else the residue itself;
        None: all mask tokens (the held-out definition)."""
        residues = np.asarray(residues, np.int32)
        pos = np.asarray(pos, np.int64)
        n = len(residues)
        enc = np.append(residues, np.int32(self.eos_id))
        tgt = np.full(n + 1, self.pad_id, np.int32)
        tgt[pos] = residues[pos]
        if u is None:
            enc[pos] = self.sentinels[0]
            return enc, tgt
        cut_mask = 1.0 - self.cfg.mlm_random - self.cfg.mlm_keep
        to_mask, to_rand = u < cut_mask, (u >= cut_mask) & (u < cut_mask + self.cfg.mlm_random)
        enc[pos[to_mask]] = self.sentinels[0]
        if to_rand.any():
            enc[pos[to_rand]] = rng.choice(self.residue_ids, size=int(to_rand.sum()))
        return enc, tgt

    def __call__(
        self, residues: np.ndarray, seed: int, epoch: int, example_id: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Crop then mask, with randomness from ``(seed, epoch, example_id)``."""
        rng = example_rng(seed, epoch, example_id)
        return self.apply(self.crop(np.asarray(residues, np.int32), rng), rng)

    def reconstruct(self, enc: np.ndarray, tgt: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`apply` (for tests/debugging): the residues that were masked in.
        Masks are matched to the target's groups in order (distinct or shared sentinels)."""
        enc = np.asarray(enc)[:-1]  # drop </s>
        if self.cfg.full_reconstruction:
            return np.asarray(tgt)[:-1]
        if self.cfg.kind == "mlm":
            tgt = np.asarray(tgt)[:-1]
            return np.where(tgt != self.pad_id, tgt, enc).astype(np.int32)
        groups: list[tuple[int, list[int]]] = []  # (sentinel, the residues it stands for)
        for t in np.asarray(tgt)[:-1].tolist():
            if t in self._sentinel_set:
                groups.append((t, []))
            else:
                groups[-1][1].append(t)
        out, j = [], 0
        for t in enc.tolist():
            if t not in self._sentinel_set:
                out.append(t)
                continue
            if j >= len(groups) or groups[j][0] != t:
                raise ValueError(f"mask {t} at its place in the input has no matching target group")
            out += groups[j][1]
            j += 1
        if j != len(groups):
            raise ValueError(
                f"sentinels {[g for g, _ in groups[j:]]} of the target are not in the encoder input"
            )
        return np.asarray(out, np.int32)


def random_runs(n: int, k: int, s: int, rng: np.random.Generator) -> np.ndarray:
    """``s`` runs covering ``k`` of ``n`` positions, int [s, 2] (start, length), sorted, with at
    least one unmasked residue between runs: the masked count is cut into ``s`` positive parts,
    the unmasked one into ``s + 1`` gaps (inner gaps >= 1), both uniformly at random."""
    if not 1 <= s <= k <= n or n - k < s - 1:
        raise ValueError(f"cannot place {s} runs of {k} masked residues in {n}")
    lengths = np.diff(
        np.concatenate([[0], np.sort(rng.choice(np.arange(1, k), s - 1, replace=False)), [k]])
    )
    free = n - k - (s - 1)  # unmasked residues beyond the one each inner gap needs
    cuts = np.sort(rng.integers(0, free + 1, s))  # s cuts of `free` into s + 1 gaps (>= 0)
    gaps = np.diff(np.concatenate([[0], cuts, [free]])) + np.r_[0, np.ones(s - 1, int), 0]
    starts = np.cumsum(gaps[:-1]) + np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return np.stack([starts, lengths], axis=1).astype(np.int64)
