"""SIGTERM -- the notice a TPU VM (or a spot VM) gets before preemption or a maintenance event
-- turned into a flag the training loop reads after each step (``worker.Run.fit``), so the run
can checkpoint at the step it is at and stop (docs/pretraining.md, "Preemptible TPUs").

Three processes may get the notice: the in-process run, a Ray Train worker (one per host), and
the driver of ``ray job submit`` (``ray job stop`` sends it SIGTERM; its host may be taken too).
Our handler must outlive the libraries that start after it and install their own (``ensure``);
the driver's notice reaches the workers through a tiny named actor (``NoticeBoard``), and a
stop the driver asked for ends the run (no Ray Train restart).
"""

from __future__ import annotations

import ctypes
import functools
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
# Set in a worker when the notice came from the driver: the run stops for good, not restarts.
_FROM_DRIVER = threading.Event()
# The driver's NoticeBoard actor's name, in every worker's environment (``job.worker_env``).
NOTICE_ENV = "ANKH_PREEMPT_NOTICE"
NOTICE_NAMESPACE = "ankh-preempt"
POLL_S = 1.0  # how often workers read the board, and the driver re-checks its handler


def _on_sigterm(signum: int, frame: Any) -> None:
    if not _SIGTERM.is_set():
        log.warning("SIGTERM to pid %d: checkpointing after this step, then stopping", os.getpid())
    _SIGTERM.set()


_PREVIOUS: list[Any] = []  # the handler ours replaced (kept in the process that set it)
# The C-level SIGTERM action that ``signal.signal`` installed for ours (Python's trampoline),
# as raw ``struct sigaction`` bytes: libraries that start after us (Ray's core worker installs
# absl's failure-signal handler, XLA's preemption notifier, ...) replace it with ``sigaction``
# directly, which ``signal.getsignal`` cannot see; ``ensure`` compares and puts it back.
_ACTION: list[Any] = []


@functools.cache
def _libc() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.sigaction.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    return libc


def _c_action() -> Any:
    """The process's current SIGTERM ``struct sigaction`` (a buffer big enough for any libc's;
    its first field is the handler pointer on Linux and macOS), or None where unavailable."""
    try:
        buf = ctypes.create_string_buffer(256)
        if _libc().sigaction(signal.SIGTERM, None, buf) != 0:
            return None
        return buf
    except (OSError, AttributeError):  # no libc sigaction (Windows)
        return None


def _handler_ptr(action: Any) -> bytes:
    return action.raw[: ctypes.sizeof(ctypes.c_void_p)]


def _install() -> None:
    _PREVIOUS.append(signal.signal(signal.SIGTERM, _on_sigterm))
    _ACTION[:] = [_c_action()]


def _reinstall() -> None:
    """Ours again at the Python level (main thread only), e.g. after ``ray.init`` set its own."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    _ACTION[:] = [_c_action()]


def _restore() -> None:
    _ACTION.clear()
    _LOST[0] = None
    if _PREVIOUS:
        signal.signal(signal.SIGTERM, _PREVIOUS.pop())


_LOST: list[Any] = [None]  # a Python-level handler we could not replace (reported once)


def ensure() -> None:
    """Put our SIGTERM handler back if a library replaced it since ``sigterm_notice`` began
    (cheap: one ``sigaction`` query; call after anything that may start a library, and each
    step). Python level: ``ray.init`` sets a handler that exits the process; it is replaced
    from the main thread (``_in_main_thread``). C level: absl's failure-signal handler (Ray's
    core worker), which prints a stack trace and exits; restored with ``sigaction``, which
    any thread may call. Ours does not chain to what it replaces: on SIGTERM the run's answer
    is to save and stop, which is what every replaced handler was standing in the way of."""
    if not _ACTION:
        return  # not inside sigterm_notice (or no handler could be installed)
    h = signal.getsignal(signal.SIGTERM)
    if h is not _on_sigterm and h is not _LOST[0]:
        log.warning(
            "SIGTERM handler replaced by %s.%s (a library started after the run began, e.g. "
            "ray.init): re-installing the checkpoint-on-SIGTERM handler",
            getattr(h, "__module__", "?"),
            getattr(h, "__qualname__", h),
        )
        try:
            _in_main_thread(_reinstall)
        except Exception as e:  # a driver's helper thread: no actor to ask for the main thread
            _LOST[0] = h  # said once, not at every check
            log.error("SIGTERM handler not re-installed (%s): a notice may end the run", e)
        return
    want, now = _ACTION[0], _c_action()
    if want is None or now is None or _handler_ptr(now) == _handler_ptr(want):
        return
    log.warning(
        "SIGTERM's native handler replaced (a library's own, e.g. absl's failure-signal "
        "handler that Ray installs): re-installing the checkpoint-on-SIGTERM handler"
    )
    if _libc().sigaction(signal.SIGTERM, want, None) != 0:
        log.error("could not re-install the SIGTERM handler: errno %d", ctypes.get_errno())


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
    _FROM_DRIVER.clear()
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


def from_driver() -> bool:
    """Whether the stop was the driver's (on every process: all must end alike)."""
    return any_process(_FROM_DRIVER.is_set())


class NoticeBoard:
    """One flag, in a Ray actor the driver owns: set by the driver's SIGTERM, read by workers."""

    def __init__(self) -> None:
        self._set = False

    def request(self) -> None:
        self._set = True

    def requested(self) -> bool:
        return self._set


def _poll(stop: threading.Event, every: float, fn: Callable[[], bool]) -> threading.Thread:
    """A daemon thread calling ``fn`` every ``every`` s until ``stop`` is set or it returns True."""

    def loop() -> None:
        while not stop.wait(every):
            if fn():
                return

    t = threading.Thread(target=loop, daemon=True, name="ankh-preempt")
    t.start()
    return t


@contextmanager
def driver_notice(name: str) -> Iterator[None]:
    """The driver's side, around ``trainer.fit()`` (main thread, after ``ray.init``): SIGTERM
    sets the ``NoticeBoard`` named ``name``, which the workers read every ``POLL_S`` s; they
    save at one step and return, ``fit`` returns, and the driver exits. The driver must live
    until then: if it exits, Ray ends the job's workers mid-save."""
    import ray

    board = (
        ray.remote(num_cpus=0)(NoticeBoard)
        .options(name=name, namespace=NOTICE_NAMESPACE, max_concurrency=4)
        .remote()
    )
    ray.get(board.requested.remote())  # up before any worker looks for it
    stop = threading.Event()

    def check() -> bool:
        ensure()
        if _SIGTERM.is_set():
            log.warning("SIGTERM to the driver: asking every worker to checkpoint and stop")
            board.request.remote()
            return True
        return False

    with sigterm_notice():
        _poll(stop, POLL_S / 4, check)
        try:
            yield
        finally:
            stop.set()
            ray.kill(board)


@contextmanager
def watch_driver() -> Iterator[None]:
    """A worker's side: read the driver's ``NoticeBoard`` (named in ``NOTICE_ENV``; absent in
    process and outside ``job.run``) every ``POLL_S`` s; a request acts like a SIGTERM here."""
    name = os.environ.get(NOTICE_ENV)
    if not name:
        yield
        return
    import ray

    try:
        board = ray.get_actor(name, namespace=NOTICE_NAMESPACE)
    except ValueError as e:  # gone already (the driver ended): SIGTERM to this worker still works
        log.warning("driver's preemption board %s not found (%s); not watched", name, e)
        yield
        return
    stop = threading.Event()

    def check() -> bool:
        try:
            asked = ray.get(board.requested.remote(), timeout=30)
        except Exception as e:  # the driver is gone: Ray is ending this job's workers anyway
            log.warning("driver's preemption board unreachable (%s); not watched any more", e)
            return True
        if asked:
            log.warning("the driver got SIGTERM: checkpointing after this step, then stopping")
            _FROM_DRIVER.set()
            _SIGTERM.set()
        return asked

    _poll(stop, POLL_S, check)
    try:
        yield
    finally:
        stop.set()
