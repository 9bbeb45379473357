"""Embedding deployment: dynamic batching into a few fixed shapes compiled at replica start.

Every request is split into sequences; ``@serve.batch`` gathers sequences from concurrent
requests, groups them by (variant, layer), packs them longest-first into batches of shape
``[rows, length]`` (``ankh.batching.BatchPlan``, the offline API's policy) -- all compiled and
run once in ``__init__``, so no request pays a compile. The encoder program is the offline
API's (``ankh.embedding.encode_pool``), so a served embedding equals ``Ankh.embed`` up to float32
rounding of the batch shape (~1e-7). Several checkpoints per replica (``ServeConfig.models``):
``serve.models.ModelSet``; each one is warmed up the same way before it serves its first
request, reusing the compiled shapes of any loaded checkpoint of the same architecture.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import numpy as np
from ray import serve
from ray.serve import metrics

from ankh.batching import SERVE_MIN_LENGTH, BatchPlan, pad_rows, sequence_ladder
from ankh.embedding import encoder_depth, jit_encoder
from ankh_platform.core.config import from_dict
from ankh_platform.serve.models import ModelSet
from ankh_platform.serve.schema import EmbedOptions, LimitError

log = logging.getLogger("ray.serve")  # Serve formats this logger (JSON, request ids)
Item = tuple["EmbedModel", np.ndarray, bool, int]  # (model, token ids, per_residue, layer)


_ENCODERS: dict[tuple, Any] = {}  # (graphdef, per_residue, num_layers) -> jitted encoder
_ENCODERS_LOCK = threading.Lock()


def shared_encoder_fn(model: Any, per_residue: bool, num_layers: int | None):
    """The offline API's encoder program (``ankh.embedding``: same function, same numbers),
    jitted once per architecture (equal ``graphdef``). The params are an argument, so a second
    checkpoint of the same shape (a fine-tune, another seed) reuses the compiled shapes instead
    of compiling them again."""
    key = (model.graphdef, per_residue, num_layers, model.num_prefix)
    with _ENCODERS_LOCK:
        if key not in _ENCODERS:  # the jitted fn closes over the graphdef only, not the params
            # ankh3's leading [NLU] (``Ankh.tokenize`` adds it) stays out of the mean.
            _ENCODERS[key] = jit_encoder(
                model.graphdef, per_residue, num_layers, skip_first=model.num_prefix
            )
        return _ENCODERS[key]


class EmbedModel:
    """One checkpoint ready to embed: its bucket plan, served layers, every shape compiled."""

    def __init__(self, checkpoint: str, dtype: str, opts: EmbedOptions):
        import ankh

        t0 = time.perf_counter()
        self.checkpoint = checkpoint
        self.model = ankh.load(checkpoint, dtype=dtype)
        cfg = self.model.config
        ladder = list(opts.length_buckets) or sequence_ladder(cfg.max_length, SERVE_MIN_LENGTH)
        self.plan = BatchPlan(ladder, opts.batch_tokens, opts.row_growth)
        self.max_residues = min(cfg.max_length, self.plan.max_tokens - 1 - self.model.num_prefix)
        for layer in opts.layers:
            if not 1 <= layer <= cfg.num_layers:
                raise ValueError(f"embed.layers: {layer} is not in 1..{cfg.num_layers}")
        self.layers = sorted({cfg.num_layers, *opts.layers})
        self.per_residue = opts.per_residue
        self.variants = [False, True] if opts.per_residue else [False]
        self.compiled_shapes = self._warmup()
        self.startup_s = round(time.perf_counter() - t0, 2)

    def fn(self, per_residue: bool, layer: int):
        nl = encoder_depth(layer, self.model.config.num_layers)
        return shared_encoder_fn(self.model, per_residue, nl)

    def _warmup(self) -> int:
        """Compile and run every shape once, so requests never trigger a compile."""
        n = 0
        one = self.model.tokenize(["M"])[0]  # one residue + </s> in every row
        for per_residue in self.variants:
            for layer in self.layers:
                fn = self.fn(per_residue, layer)
                for rows, length in self.plan.shapes():
                    ids, mask = pad_rows([one] * rows, rows, length, self.model.tokenizer.pad_id)
                    out = fn(self.model.params, ids, mask)
                    np.asarray(out["pooled"])
                    n += 1
        return n

    def info(self) -> dict[str, Any]:
        cfg = self.model.config
        return {
            "checkpoint": self.checkpoint,
            "d_model": cfg.d_model,
            "num_layers": cfg.num_layers,
            "max_residues": self.max_residues,
            "layers": self.layers,
            "per_residue": self.per_residue,
            "length_buckets": self.plan.ladder,
            "num_params": int(self.model.num_params()),
            "dtype": str(np.dtype(self.model.dtype)),
            "vocab": self.model.tokenizer.vocab,
        }

    def check(
        self, sequences: list[str], pooling: str, layer: int | None
    ) -> tuple[list[np.ndarray], bool, int]:
        """Tokens, per_residue, layer -- or a ValueError/LimitError naming the problem."""
        if pooling not in ("mean", "none"):
            raise ValueError(f"pooling must be 'mean' or 'none', got {pooling!r}")
        per_residue = pooling == "none"
        if per_residue and not self.per_residue:
            raise ValueError("pooling 'none' is not served by this deployment (embed.per_residue)")
        layer = self.model.config.num_layers if layer is None else layer
        if layer not in self.layers:
            raise ValueError(f"layer {layer} is not served; served layers: {self.layers}")
        toks = self.model.tokenize(sequences)  # TokenizerError names the bad sequence/letter
        for i, t in enumerate(toks):
            n = len(t) - 1 - self.model.num_prefix  # residues: no </s>, no [NLU]
            if n > self.max_residues:
                raise LimitError(
                    f"sequence {i} has {n} residues > the served maximum {self.max_residues}"
                )
        return toks, per_residue, layer


# Deployed under the name "Embedder": the handle name clients use (docs/serving.md).
@serve.deployment(name="Embedder", ray_actor_options={"num_cpus": 1})
class EmbedDeployment:
    """Handle API: ``await handle.embed.remote(seqs, pooling="mean"|"none", layer=None)``;
    ``handle.options(multiplexed_model_id=NAME)`` picks one of ``ServeConfig.models``."""

    def __init__(
        self,
        checkpoint: str,
        dtype: str = "auto",
        options: dict | None = None,
        models: dict[str, str] | None = None,
        default_name: str = "",
        max_models: int = 2,
    ):
        self.opts = from_dict(EmbedOptions, options or {})
        default = EmbedModel(checkpoint, dtype, self.opts)
        self.models = ModelSet(
            default_name or checkpoint,
            default,
            {default_name or checkpoint: checkpoint, **(models or {})},
            max_models,
            lambda name, ckpt: EmbedModel(ckpt, dtype, self.opts),
        )
        self._embed_seq.set_max_batch_size(self.opts.max_batch_size)
        self._embed_seq.set_batch_wait_timeout_s(self.opts.batch_wait_timeout_s)
        self.m_batch = metrics.Histogram(
            "ankh_embed_batch_sequences",
            description="Sequences per encoder step",
            boundaries=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512],
        )
        self.m_latency = metrics.Histogram(
            "ankh_embed_step_seconds",
            description="Encoder step latency (s)",
            boundaries=[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
        )
        self.m_tokens = metrics.Counter("ankh_embed_tokens", description="Real tokens embedded")
        self.m_padded = metrics.Counter(
            "ankh_embed_padded_tokens", description="Tokens computed incl. padding"
        )
        log.info(
            "embedder ready",
            extra={
                "checkpoint": checkpoint,
                "compiled_shapes": default.compiled_shapes,
                "startup_s": default.startup_s,
                "models": self.models.names(),
            },
        )

    # ---- handle API ----------------------------------------------------------------------------
    async def info(self) -> dict[str, Any]:
        """The request's model (``multiplexed_model_id``; loads it if needed): dims, buckets."""
        name, m = await self.models.get()
        return {"id": name, **m.info()}

    def loaded_models(self) -> list[str]:
        """Models resident in this replica: the default, then extras in load order."""
        return self.models.resident()

    def health(self) -> bool:
        return True

    async def embed(
        self, sequences: list[str], pooling: str = "mean", layer: int | None = None
    ) -> np.ndarray | list[np.ndarray]:
        """Mean: float32 ``[n, d_model]``; none: a list of ``[L_i, d_model]`` arrays."""
        _, model = await self.models.get()
        toks, per_residue, layer = model.check(sequences, pooling, layer)
        outs = await asyncio.gather(
            *[self._embed_seq((model, t, per_residue, layer)) for t in toks]
        )
        return list(outs) if per_residue else np.stack(outs)

    @serve.batch(max_batch_size=256, batch_wait_timeout_s=0.005)
    async def _embed_seq(self, items: list[Item]) -> list[np.ndarray]:
        # Compute off the event loop, so requests keep queueing (and batching) meanwhile.
        return await asyncio.to_thread(self._run, items)

    def _run(self, items: list[Item]) -> list[np.ndarray]:
        t0 = time.perf_counter()
        results: list[np.ndarray | None] = [None] * len(items)
        groups: dict[tuple[int, bool, int], list[int]] = {}
        for i, (model, _, per_residue, layer) in enumerate(items):
            groups.setdefault((id(model), per_residue, layer), []).append(i)
        padded = 0
        for (_, per_residue, layer), idx in groups.items():
            model: EmbedModel = items[idx[0]][0]  # one model per group (Serve splits by id too)
            fn = model.fn(per_residue, layer)
            for part, length, rows in model.plan.batches([len(items[i][1]) for i in idx]):
                part = [idx[j] for j in part]
                ids, mask = pad_rows(
                    [items[i][1] for i in part], rows, length, model.model.tokenizer.pad_id
                )  # [rows, length]
                out = fn(model.model.params, ids, mask)
                key = "hidden" if per_residue else "pooled"
                arr = np.asarray(out[key])  # [rows, d] or [rows, bucket, d]
                for r, i in enumerate(part):
                    lead = model.model.num_prefix  # rows align with residues (ankh3: no [NLU])
                    results[i] = (
                        arr[r, lead : len(items[i][1]) - 1].copy() if per_residue else arr[r]
                    )
                padded += rows * length
        self.m_batch.observe(len(items))
        self.m_latency.observe(time.perf_counter() - t0)
        self.m_tokens.inc(sum(len(t) for _, t, _, _ in items))
        self.m_padded.inc(padded)
        return results  # type: ignore[return-value]
