"""SIGTERM -- the notice a TPU VM (or a spot VM) gets before preemption or a maintenance event
-- turned into a flag the training loop reads after each step (``worker.Run.fit``), so the run
can checkpoint at the step it is at and stop (docs/pretraining.md, "Preemption").
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import jax
import numpy as np

log = logging.getLogger(__name__)


class Preempted(RuntimeError):
    """The run stopped on SIGTERM after checkpointing; the same command resumes it."""


# Set by SIGTERM (a TPU maintenance / spot preemption notice); the loop reads it after each step.
_SIGTERM = threading.Event()


def _on_sigterm(signum: int, frame: Any) -> None:
    if not _SIGTERM.is_set():
        log.warning("SIGTERM to pid %d: checkpointing after this step, then stopping", os.getpid())
    _SIGTERM.set()


_PREVIOUS: list[Any] = []  # the handler ours replaced (kept in the process that set it)


def _install() -> None:
    _PREVIOUS.append(signal.signal(signal.SIGTERM, _on_sigterm))


def _restore() -> None:
    if _PREVIOUS:
        signal.signal(signal.SIGTERM, _PREVIOUS.pop())


def _in_main_thread(fn: Callable, *args: Any) -> Any:
    """Run ``fn`` in this process's main thread: signal handlers can only be set there, and Ray
    Train runs the loop in a thread of its worker actor, whose main thread runs the actor's
    methods (so its own ``execute`` method runs ``fn`` there)."""
    if threading.current_thread() is threading.main_thread():
        return fn(*args)
    import ray

    return ray.get(ray.get_runtime_context().current_actor.execute.remote(fn, *args), timeout=60)


@contextmanager
def sigterm_notice() -> Iterator[None]:
    """While training, SIGTERM sets a flag instead of ending the process (restored after)."""
    _SIGTERM.clear()
    try:
        _in_main_thread(_install)
    except Exception as e:  # no main thread to ask: train on, with the default behaviour
        log.warning(
            "no SIGTERM handler (%s: %s): a preemption notice ends this worker without "
            "a checkpoint",
            type(e).__name__,
            e,
        )
        yield
        return
    try:
        yield
    finally:
        try:
            _in_main_thread(_restore)
        except Exception as e:  # the actor is going away anyway
            log.debug("SIGTERM handler not restored: %s", e)


def requested() -> bool:
    """Whether any process got SIGTERM (the same answer on every process)."""
    return any_process(_SIGTERM.is_set())


def any_process(flag: bool) -> bool:
    """True on every process if ``flag`` is true on any (one tiny all-gather when multi-process:
    all processes must stop at the same step, since saving is collective)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.max(multihost_utils.process_allgather(np.int32(flag))))
