"""Several checkpoints per replica, chosen per request: Ray Serve model multiplexing.

The default model is loaded (and warmed up) in the replica's constructor and never evicted,
so clients that name no model behave exactly as with a single-model app. Every other model in
``ServeConfig.models`` is loaded on its first request by a ``@serve.multiplexed`` loader --
off the event loop, warmed up before it answers anything -- and at most
``max_models_per_replica`` of them stay resident per replica (least recently used goes first).
Serve routes a request carrying a model id to a replica that already holds that model.

A request names its model with ``handle.options(multiplexed_model_id=NAME)`` or the HTTP
header ``serve_multiplexed_model_id`` (both read back with ``serve.get_multiplexed_model_id()``);
the ingress also maps the JSON field ``"model"`` onto it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from ray import serve

from ankh_platform.serve.schema import ModelLoadError, UnknownModelError

log = logging.getLogger("ray.serve")
M = TypeVar("M")


class _Resident(Generic[M]):
    """A loaded extra model; Serve calls ``__del__`` when it evicts it (LRU)."""

    def __init__(self, name: str, model: M, on_unload: Callable[[str], None]):
        self.name, self.model, self._on_unload = name, model, on_unload

    def __del__(self) -> None:  # called by Serve on eviction, again (a no-op) by the GC
        cb, self._on_unload = self._on_unload, None
        if cb is not None:
            cb(self.name)


class ModelSet(Generic[M]):
    """The default model plus named extras loaded on demand; ``await get()`` picks one."""

    def __init__(
        self,
        default_name: str,
        default: M,
        catalog: dict[str, str],
        max_models: int,
        load: Callable[[str, str], M],
    ):
        """``catalog``: ``{name: checkpoint}`` of every served model (default included);
        ``load(name, checkpoint)`` builds and warms one model (runs in a worker thread)."""
        self.default_name, self.default = default_name, default
        self.catalog = dict(catalog)
        self._load = load
        self._resident: dict[str, float] = {}  # name -> load time, in load order
        self._lock = threading.Lock()  # eviction callbacks run in Serve's executor thread

        async def load_model(model_id: str) -> _Resident[M]:  # Serve caches what this returns
            return await self._load_extra(model_id)

        self._get = serve.multiplexed(max_num_models_per_replica=max_models)(load_model)

    def names(self) -> list[str]:
        return [self.default_name] + [n for n in self.catalog if n != self.default_name]

    def resident(self) -> list[str]:
        """Models loaded in this replica now: the default first, then extras in load order."""
        with self._lock:
            return [self.default_name, *self._resident]

    async def get(self, model_id: str | None = None) -> tuple[str, M]:
        """``(name, model)`` for ``model_id`` (default: the request's multiplexed model id)."""
        mid = serve.get_multiplexed_model_id() if model_id is None else model_id
        if not mid or mid == self.default_name:
            return self.default_name, self.default
        if mid not in self.catalog:
            raise UnknownModelError(mid, self.names())
        return mid, (await self._get(mid)).model

    async def _load_extra(self, name: str) -> _Resident[M]:
        if name not in self.catalog:  # get() checks first; a direct call must not load junk
            raise UnknownModelError(name, self.names())
        ckpt, t0 = self.catalog[name], time.perf_counter()
        try:
            model = await asyncio.to_thread(self._load, name, ckpt)
        except Exception as e:
            log.error("model load failed", extra={"model": name, "checkpoint": ckpt}, exc_info=e)
            raise ModelLoadError(
                f"model {name!r} ({ckpt}) failed to load: {type(e).__name__}: {e}"
            ) from None
        with self._lock:
            self._resident[name] = time.time()
        log.info(
            "model loaded",
            extra={"model": name, "checkpoint": ckpt, "load_s": round(time.perf_counter() - t0, 2)},
        )
        return _Resident(name, model, self._unloaded)

    def _unloaded(self, name: str) -> None:
        with self._lock:
            self._resident.pop(name, None)
        log.info("model evicted", extra={"model": name})
