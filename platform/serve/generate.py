"""Generation deployment: ``Ankh.generate`` / ``variants`` / scoring behind a Serve handle.

Model calls run one at a time in a worker thread (the event loop stays free for health checks
and queueing; ``max_ongoing_requests`` bounds the queue). Decoding compiles per distinct
(shape, decoding settings) and caches per replica; the default settings are warmed up at start.
Several checkpoints per replica (``ServeConfig.models``): ``serve_models.ModelSet``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np
from ray import serve
from ray.serve import metrics

from ankh.generation_config import GenerationConfig
from ankh_platform.serve.models import ModelSet

log = logging.getLogger("ray.serve")


def _inc(counter, n: float) -> None:
    if n > 0:  # Ray counters reject 0
        counter.inc(n)


def load_generator(checkpoint: str, dtype: str, warmup: bool):
    """An ``Ankh`` ready to generate; greedy decoding of a short prompt compiled if ``warmup``."""
    import ankh

    model = ankh.load(checkpoint, dtype=dtype)
    if warmup:  # the most common compile
        model.generate(["MKTAYIAK"], GenerationConfig(max_new_tokens=8))
    return model


@serve.deployment(ray_actor_options={"num_cpus": 1})
class Generator:
    """Handle API: ``generate(sequences, **kw)``, ``variants(parent, **kw)``, ``score(...)``;
    ``handle.options(multiplexed_model_id=NAME)`` picks one of ``ServeConfig.models``."""

    def __init__(
        self,
        checkpoint: str,
        dtype: str = "auto",
        warmup: bool = True,
        models: dict[str, str] | None = None,
        default_name: str = "",
        max_models: int = 2,
    ):
        t0 = time.perf_counter()
        name = default_name or checkpoint
        self.models = ModelSet(
            name,
            load_generator(checkpoint, dtype, warmup),
            {name: checkpoint, **(models or {})},
            max_models,
            lambda _, ckpt: load_generator(ckpt, dtype, warmup),
        )
        self.checkpoint = checkpoint
        self._lock = asyncio.Lock()
        self.m_tokens = metrics.Counter("ankh_generated_tokens", description="Tokens generated")
        self.m_latency = metrics.Histogram(
            "ankh_model_call_seconds",
            description="Generation/scoring model call latency (s)",
            boundaries=[0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
            tag_keys=("op",),
        )
        log.info(
            "generator ready",
            extra={
                "checkpoint": checkpoint,
                "models": self.models.names(),
                "startup_s": round(time.perf_counter() - t0, 2),
            },
        )

    def loaded_models(self) -> list[str]:
        return self.models.resident()

    def health(self) -> bool:
        return True

    async def _call(self, op: str, *args, **kwargs) -> Any:
        """``model.<op>(...)`` on the request's model (loaded and warmed up if needed)."""
        _, model = await self.models.get()
        fn = getattr(model, op)
        async with self._lock:
            t0 = time.perf_counter()
            out = await asyncio.to_thread(fn, *args, **kwargs)
        self.m_latency.observe(time.perf_counter() - t0, tags={"op": op})
        return out

    async def generate(
        self, sequences: list[str], generation_config: GenerationConfig | None = None, **kwargs: Any
    ) -> list[list[str]]:
        """Same arguments and result as ``Ankh.generate``: the settings whole (the ingress
        sends one ``GenerationConfig``) and/or by keyword; seeded sampling is reproducible."""
        out = await self._call("generate", list(sequences), generation_config, **kwargs)
        _inc(self.m_tokens, sum(len(s) for rows in out for s in rows))
        return out

    async def variants(self, parent: str, **kwargs: Any) -> dict[str, Any]:
        """``Ankh.variants(...).to_dict()``: accepted sequences, masked inputs, rejections
        (sampling settings as ``generation_config=`` or by keyword, as ``Ankh.variants``)."""
        out = await self._call("variants", parent, **kwargs)
        _inc(self.m_tokens, sum(len(s) for s in out.sequences))
        return out.to_dict()

    async def score(
        self,
        sequences: list[str] | None = None,
        per_residue: bool = False,
        wild_type: str | None = None,
        mutants: list[str] | None = None,
    ) -> dict[str, Any]:
        """``scores``: ``Ankh.score`` per sequence; ``mutation_scores``: vs ``wild_type``."""
        out: dict[str, Any] = {"scores": None, "mutation_scores": None}
        if sequences:
            scores = await self._call("score", list(sequences))
            if not per_residue:
                for s in scores:
                    s.pop("per_residue_log_probs", None)
            out["scores"] = scores
        if wild_type is not None:
            ms = await self._call("mutation_scores", wild_type, list(mutants or []))
            out["mutation_scores"] = np.asarray(ms, np.float64).tolist()
        return out
