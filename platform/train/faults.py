"""Fault injection for the tests of fault tolerance (``cfg.fault``; off by default).

``maybe_inject_fault``: a signal to one worker at one step, once per run (SIGKILL: a crash;
SIGTERM: a preemption notice). ``maybe_hold``: the loop stops at a step while a file exists, so
a test can take hosts away or give them back at a known step (the elastic test) instead of
racing a run that would otherwise finish first.
"""

from __future__ import annotations

import logging
import os
import signal
import time

from ankh import storage
from ankh_platform.train import preemption
from ankh_platform.train.config import PretrainConfig

log = logging.getLogger(__name__)
HOLD_POLL_S = 0.2


def maybe_inject_fault(cfg: PretrainConfig, step: int, rank: int) -> None:
    """Signal this worker once per run when ``cfg.fault`` says so (tests of fault tolerance)."""
    if step != cfg.fault.kill_at_step or rank != cfg.fault.rank:
        return
    marker = f"{cfg.run_dir()}/fault-injected-{step}"
    fs, path = storage.filesystem(marker)
    if fs.exists(path):
        return
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.touch(path)
    log.warning(
        "fault injection: %s to worker rank %d (pid %d) at step %d",
        cfg.fault.signal,
        rank,
        os.getpid(),
        step,
    )
    os.kill(os.getpid(), getattr(signal, cfg.fault.signal))


def hold_path(cfg: PretrainConfig, step: int) -> str:
    return f"{cfg.run_dir()}/hold-{step}"


def maybe_hold(cfg: PretrainConfig, step: int, wait_for_saves) -> None:
    """At a step of ``cfg.fault.hold_steps``: finish the saves in flight (``wait_for_saves``: the
    step's checkpoint is then final), then wait while ``<run>/hold-<step>`` exists (or until a
    SIGTERM, which the loop then handles). Checked only at those steps: no storage call per
    step otherwise. Every process decides alike, so all leave at the same poll: one that went
    on alone would meet the others' next all-gather with its training step. Both tests are
    collectives (``preemption.requested`` is ``any_process`` of the local flag), and the second
    runs only when the first, the same on every process, is true."""
    if step not in cfg.fault.hold_steps:
        return
    wait_for_saves()
    fs, path = storage.filesystem(hold_path(cfg, step))
    if fs.exists(path):
        log.warning("fault injection: holding at step %d while %s exists", step, path)
    while preemption.any_process(fs.exists(path)) and not preemption.requested():
        time.sleep(HOLD_POLL_S)
