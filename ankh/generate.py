"""``Ankh.generate`` and ``Ankh.variants``: batched, jitted decoding with HF ``generate`` names.

The mixin expects the host (``ankh.api.Ankh``) to provide ``config``, ``tokenizer``,
``graphdef``, ``params`` and a ``_fns`` dict for compiled functions. Shapes and batches come
from ``ankh.batching``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ankh import batching, infill
from ankh.beam_search import beam_search
from ankh.decoding import forced_scores, sample_loop
from ankh.generation_config import GenerationConfig, settings_from
from ankh.seeds import derive_seed
from ankh.tokenizer import TokenizerError

# Ankh.variants' sampling unless told otherwise: warmer than generate's default, which moves
# variants away from the parent (docs/generation.md).
VARIANTS_SAMPLING = GenerationConfig(do_sample=True, temperature=1.5)


@dataclasses.dataclass
class Variants:
    """Accepted variants of one parent, plus what was rejected and why (list-like)."""

    parent: str
    sequences: list[str]
    masked_inputs: list[str]
    rejected: dict[str, int]
    generated: int

    def __len__(self) -> int:
        return len(self.sequences)

    def __iter__(self):
        return iter(self.sequences)

    def __getitem__(self, i):
        return self.sequences[i]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _run_sample(graphdef, params, ids, mask, keys, gp, *, max_new, sample, num_return):
    model = nnx.merge(graphdef, params)
    return sample_loop(
        model, ids, mask, keys, gp, max_new=max_new, sample=sample, num_return=num_return
    )


def _run_beam(graphdef, params, ids, mask, gp, *, max_new, num_beams, length_penalty, num_return):
    model = nnx.merge(graphdef, params)
    seq, _ = beam_search(
        model, ids, mask, gp, max_new=max_new, num_beams=num_beams, length_penalty=length_penalty
    )
    return seq[:, :num_return].reshape(-1, seq.shape[-1])


def _run_forced(graphdef, params, ids, mask, forced, gp, *, sample):
    return forced_scores(nnx.merge(graphdef, params), ids, mask, forced, gp, sample=sample)


def _warp_params(gc: GenerationConfig) -> dict[str, jax.Array]:
    """The settings the compiled program reads as traced values: changing them does not
    recompile (what changes shapes or the program -- lengths, beams, sampling or not, rows
    per input -- is static in ``_generate_fn``'s key instead)."""
    return {
        "temperature": jnp.float32(gc.temperature),
        "top_k": jnp.int32(gc.top_k),
        "top_p": jnp.float32(gc.top_p),
        "repetition_penalty": jnp.float32(gc.repetition_penalty),
        "min_new_tokens": jnp.int32(gc.min_new_tokens),
    }


def _row_keys(seed: int, rows: np.ndarray) -> jax.Array:
    base = jax.random.PRNGKey(seed)
    return jax.vmap(lambda r: jax.random.fold_in(base, r))(jnp.asarray(rows, jnp.uint32))


def _variant_sampling(gc: GenerationConfig) -> GenerationConfig:
    one_draw = (gc.num_beams, gc.num_return_sequences, gc.min_new_tokens) == (1, 1, 0)
    if not (gc.do_sample and one_draw):
        raise ValueError(
            "variants samples one answer per masked input: it needs do_sample=True, "
            f"num_beams=1, num_return_sequences=1 and min_new_tokens=0, got {gc}"
        )
    return gc


class GenerationMixin:
    """Decoding methods shared by ``ankh.api.Ankh``."""

    def _encode_inputs(self, inputs: Sequence[str], prefix: str | None = None) -> list[np.ndarray]:
        """Ids per input; ``prefix`` (ankh3's ``[NLU]``/``[S2S]``) first, not counted in length."""
        toks = []
        for i, s in enumerate(inputs):
            if not isinstance(s, str):
                raise TokenizerError(f"input {i}: expected a string, got {type(s).__name__}")
            try:
                ids = self.tokenizer.encode(s, allow_sentinels=True, prefix=prefix)
            except TokenizerError as e:
                raise TokenizerError(f"input {i}: {e}") from None
            n = len(ids) - 1 - int(int(ids[0]) in self.tokenizer.task_ids.values())
            if n <= 0:
                raise TokenizerError(f"input {i} is empty")
            if n > self.config.max_length:
                raise TokenizerError(
                    f"input {i} has {n} tokens, over the model's "
                    f"max_length {self.config.max_length}"
                )
            toks.append(ids)
        return toks

    def _generate_fn(self, kind: str, **static):
        key = ("generate", kind, tuple(sorted(static.items())))
        if key not in self._fns:
            fn = {"beam": _run_beam, "sample": _run_sample, "forced": _run_forced}[kind]
            self._fns[key] = jax.jit(partial(fn, self.graphdef, **static))
        return self._fns[key]

    def _decode_calls(self, inputs: Sequence[str] | str, gc: GenerationConfig, batch_size: int):
        """Validate, then per batch: (input indices, rows, the jitted program, its arguments).
        One call of the program decodes the whole batch (the step loop runs inside it)."""
        inputs = [inputs] if isinstance(inputs, str) else list(inputs)
        gc.check_for(self.config)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        toks = self._encode_inputs(inputs, prefix=self.task_prefix("[S2S]"))
        gp = _warp_params(gc)
        nr = gc.num_return_sequences
        ladder = batching.decode_ladder(self.config.max_length)
        for idx, length, rows in batching.sorted_batches(
            [len(t) for t in toks], batch_size, ladder
        ):
            ids, mask = batching.pad_rows(
                [toks[k] for k in idx], rows, length, self.tokenizer.pad_id
            )
            if gc.num_beams > 1:
                fn = self._generate_fn(
                    "beam",
                    max_new=gc.max_new_tokens,
                    num_beams=gc.num_beams,
                    length_penalty=float(gc.length_penalty),
                    num_return=nr,
                )
                yield idx, rows, fn, (self.params, ids, mask, gp)
            else:
                gids = np.concatenate([idx, np.arange(len(idx), rows) + len(toks)])
                keys = _row_keys(gc.seed, (gids[:, None] * nr + np.arange(nr)[None]).reshape(-1))
                fn = self._generate_fn(
                    "sample", max_new=gc.max_new_tokens, sample=bool(gc.do_sample), num_return=nr
                )
                yield idx, rows, fn, (self.params, ids, mask, keys, gp)

    def generate_ids(
        self,
        inputs: Sequence[str] | str,
        generation_config: GenerationConfig | None = None,
        *,
        batch_size: int = 32,
        **settings: Any,
    ) -> list[list[np.ndarray]]:
        """Like ``generate`` but returns the raw ids after the start token, cut after ``</s>``."""
        gc = settings_from(generation_config, settings, GenerationConfig())
        inputs = [inputs] if isinstance(inputs, str) else list(inputs)
        out: list[list[np.ndarray]] = [[] for _ in inputs]
        eos, nr = self.tokenizer.eos_id, gc.num_return_sequences
        drop = np.array([self.tokenizer.pad_id, *self.tokenizer.task_ids.values()], np.int32)
        for idx, rows, fn, args in self._decode_calls(inputs, gc, batch_size):
            seqs = np.asarray(fn(*args)).reshape(rows, nr, -1)[:, :, 1:]
            for r, k in enumerate(idx):
                for row in seqs[r]:
                    stop = np.flatnonzero(row == eos)
                    row = row[: stop[0] + 1] if stop.size else row
                    out[k].append(row[~np.isin(row, drop)])  # pad and task tokens out
        return out

    def decoding_hlo(
        self,
        inputs: Sequence[str] | str,
        generation_config: GenerationConfig | None = None,
        *,
        batch_size: int = 32,
        **settings: Any,
    ) -> str:
        """The optimised HLO text of the program ``generate_ids`` runs for the first batch of
        ``inputs`` (profiling: what one decode step executes, whether caches are copied)."""
        gc = settings_from(generation_config, settings, GenerationConfig())
        _, _, fn, args = next(self._decode_calls(inputs, gc, batch_size))
        return fn.lower(*args).compile().as_text()

    def step_scores(
        self,
        inputs: Sequence[str],
        decoder_ids: np.ndarray,
        generation_config: GenerationConfig | None = None,
        **settings: Any,
    ) -> np.ndarray:
        """The warped next-token scores ``[n, s, vocab]`` that sampling draws from at each step
        along given decoder ids ``[n, s + 1]`` (start token first) — HF's ``output_scores``.
        Reads the warping settings (``min_new_tokens`` included); ``do_sample`` defaults on."""
        gc = settings_from(generation_config, settings, GenerationConfig(do_sample=True))
        toks = self._encode_inputs(list(inputs), prefix=self.task_prefix("[S2S]"))
        length = batching.padded_length(
            max(len(t) for t in toks), batching.decode_ladder(self.config.max_length)
        )
        ids, mask = batching.pad_rows(toks, len(toks), length, self.tokenizer.pad_id)
        gp = _warp_params(gc)
        fn = self._generate_fn("forced", sample=bool(gc.do_sample))
        return np.asarray(fn(self.params, ids, mask, np.asarray(decoder_ids, np.int32), gp))

    def generate(
        self,
        inputs: Sequence[str] | str,
        generation_config: GenerationConfig | None = None,
        *,
        batch_size: int = 32,
        **settings: Any,
    ) -> list[list[str]]:
        """Decode each input (sentinels allowed); per input, ``num_return_sequences`` strings.

        The settings are ``ankh.GenerationConfig``'s, as in HF ``generate``: given whole
        (``generation_config``), by keyword (``max_new_tokens=64``, ``do_sample=True``, ...), or
        both (keywords override the config's fields). Greedy (default), sampling (``do_sample``,
        ``temperature``, ``top_k``, ``top_p``, ``repetition_penalty``) or beam search
        (``num_beams``, ``length_penalty``); ``min_new_tokens`` bars ``</s>`` before that many
        tokens. Sampling is deterministic for a given ``seed`` and independent of batching
        (``batch_size``: input rows per compiled call).

        Sentinels in the output are kept as ``<extra_id_N>``; pad, ``</s>`` and task tokens are
        dropped. A model with task prefixes (ankh3) reads ``[S2S]`` + input.
        """
        ids = self.generate_ids(inputs, generation_config, batch_size=batch_size, **settings)
        return [[self.tokenizer.decode(r) for r in rows] for rows in ids]

    def variants(
        self,
        parent: str,
        mask_fraction: float = 0.4,
        *,
        n: int = 10,
        spans: Sequence[Sequence[int]] | None = None,
        same_length: bool = True,
        max_rounds: int = 3,
        generation_config: GenerationConfig | None = None,
        **settings: Any,
    ) -> Variants:
        """``n`` full variants of ``parent`` by sentinel infilling with temperature sampling.

        Without ``spans`` each variant gets its own seeded random mask of ``mask_fraction`` of
        the residues (one sentinel per residue, as Ankh was trained); with ``spans`` (0-based
        ``(start, end)``) every variant infills the same spans. Malformed answers are rejected
        and counted in ``.rejected`` by reason (``infill.REJECT_REASONS``); up to ``max_rounds``
        rounds are run to reach ``n`` accepted variants.

        Sampling settings as for ``generate`` (``temperature``, ``top_k``, ``top_p``,
        ``repetition_penalty``, ``seed``; default ``VARIANTS_SAMPLING``: temperature 1.5), whole
        or by keyword. Each round sets its own ``max_new_tokens`` (room for every span) and seed
        (derived from ``seed``); one sampled answer per masked input, so ``do_sample`` must be
        on and ``num_beams``, ``num_return_sequences`` 1, ``min_new_tokens`` 0.
        """
        gc = _variant_sampling(settings_from(generation_config, settings, VARIANTS_SAMPLING))
        parent = self.tokenizer.normalize(parent) if isinstance(parent, str) else parent
        self._encode_inputs([parent])  # validates residues and length
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        max_spans = infill.num_sentinels(self.tokenizer)
        fixed = infill.check_spans(spans, len(parent), max_spans) if spans is not None else None
        result = Variants(parent, [], [], {r: 0 for r in infill.REJECT_REASONS}, 0)
        for rnd in range(max_rounds):
            need = n - len(result)
            if need <= 0:
                break
            masks = [
                fixed
                or infill.random_spans(
                    len(parent), mask_fraction, np.random.default_rng([gc.seed, rnd, j]), max_spans
                )
                for j in range(need)
            ]
            texts = [infill.masked_input(parent, m) for m in masks]
            # Room for every sentinel + fill + </s>; a longer answer shows up as "no_eos".
            masked = max(sum(e - s for s, e in m) for m in masks)
            budget = 2 * masked + 2 if same_length else 3 * masked + 8
            outs = self.generate_ids(
                texts,
                gc.replace(
                    max_new_tokens=min(budget, self.config.max_length + 1),
                    seed=derive_seed(gc.seed, "variants-round", rnd),
                ),
            )
            for m, text, (ids,) in zip(masks, texts, outs):
                result.generated += 1
                seq, reason = infill.splice(parent, m, ids, self.tokenizer, same_length)
                if seq is None:
                    result.rejected[reason] += 1
                else:
                    result.sequences.append(seq)
                    result.masked_inputs.append(text)
        return result
