"""Sharded, asynchronous Orbax checkpoints of a training run, with safe resume.

Every process writes its own shards (Orbax OCDBT); process 0 writes a manifest (sizes and
CRC32Cs) once a save is final (``ankh.checkpoint``). On resume, checkpoints are tried newest
first: one that fails verification or restore is named in a warning, moved aside to
``<run>/corrupt/`` (kept, not deleted) and the next older one is used -- a bad checkpoint never
poisons a run.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from ankh import checkpoint as ackpt
from ankh import storage

log = logging.getLogger(__name__)


class CheckpointStore:
    """``save`` every ``every`` steps (async), keep the newest ``keep``; ``restore`` with fallback."""

    def __init__(self, directory: str, every: int, keep: int = 3, async_save: bool = True):
        self.directory = storage.norm_path(str(directory)).rstrip("/")
        storage.apply_emulator_env()  # gs:// under an emulator: tensorstore goes there too
        self.every = every
        opts = ocp.CheckpointManagerOptions(
            save_interval_steps=1,
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            create=True,
            cleanup_tmp_directories=True,
        )
        self.mgr = ocp.CheckpointManager(self.directory, options=opts, item_names=ackpt.ITEMS)
        self._pending: list[int] = []  # saved by Orbax, no manifest yet
        self.failed: set[int] = set()  # saves that did not complete (logged; never picked)

    # ---- saving ------------------------------------------------------------------------------
    def should_save(self, step: int, final: bool = False) -> bool:
        return step > 0 and (final or step % self.every == 0) and step not in self.mgr.all_steps()

    def save(self, step: int, state: dict, meta: dict) -> None:
        """Start an async save of ``state`` ({params, opt_state, ...}) and the JSON ``meta``.
        A save that fails (storage unreachable past the clients' retries) is logged and
        dropped: training goes on and the next save tries again."""
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(state["params"]),
            opt_state=ocp.args.StandardSave(state["opt_state"]),
            meta=ocp.args.JsonSave(meta),
        )
        try:
            self.mgr.save(step, args=args)  # also raises an earlier async save's error
        except Exception as e:  # tensorstore/gcsfs/orbax raise many types
            self._failed(self._pending + [step], e)
            return
        self._pending.append(step)
        self.poll()

    def poll(self) -> None:
        """Write manifests of saves that have finished (cheap; call every step). Only a save
        Orbax finished without error gets one: a failed save's partial step is removed, and
        in any case has no manifest, so a resume never picks it."""
        if not self._pending or self.mgr.is_saving_in_progress():
            return
        try:
            self.mgr.wait_until_finished()  # returns at once; raises the save's error if any
        except Exception as e:
            self._failed(self._pending, e)
            return
        if jax.process_index() == 0:
            for step in list(self._pending):
                d = f"{self.directory}/{step}"
                try:
                    fs, root = storage.filesystem(d)
                    if fs.exists(root):  # may already be garbage-collected (keep=K)
                        ackpt.write_manifest(d)
                except Exception as e:  # storage away: the step stays unpicked; retried later
                    log.warning("manifest of %s not written yet (%s); will retry", d, e)
                    return
                self._pending.remove(step)
        self._pending = []

    def _failed(self, steps: list[int], error: Exception) -> None:
        """A save that did not complete: log it, remove what it wrote (best effort; a resume
        would move it aside anyway: no manifest) and forget it, so training goes on."""
        log.error(
            "checkpoint step(s) %s failed (%s: %s); training continues, the next save retries",
            steps,
            type(error).__name__,
            str(error)[:300],
        )
        self.failed.update(steps)
        if jax.process_index() == 0:
            for step in steps:
                with contextlib.suppress(Exception):
                    fs, root = storage.filesystem(f"{self.directory}/{step}")
                    if fs.exists(root) and not fs.exists(f"{root}/{ackpt.MANIFEST}"):
                        fs.rm(root, recursive=True)
        self._pending = [s for s in self._pending if s not in steps]
        with contextlib.suppress(Exception):
            self.mgr.reload()

    def wait(self) -> None:
        with contextlib.suppress(Exception):  # a failed save is handled (and logged) by poll
            self.mgr.wait_until_finished()
        self.poll()

    def save_now(self, step: int, state: dict, meta: dict, timeout_s: float) -> bool:
        """Save ``step`` (unless it is already saved or saving) and wait for it, manifest
        included, for at most ``timeout_s``; True if it is final. On a preemption notice."""
        t0 = time.perf_counter()
        if step not in self.mgr.all_steps():
            self.save(step, state, meta)
        done = threading.Thread(target=self.wait, daemon=True)
        done.start()
        done.join(max(timeout_s - (time.perf_counter() - t0), 0.0))
        if done.is_alive() or step in self._pending or step in self.failed:
            log.error(
                "checkpoint %s/%d not final after %.1f s (it failed, or preempt_timeout_s ran "
                "out): stopping without it; a resume uses the previous good step",
                self.directory,
                step,
                time.perf_counter() - t0,
            )
            return False
        log.warning(
            "preemption checkpoint %s/%d written in %.2f s",
            self.directory,
            step,
            time.perf_counter() - t0,
        )
        return True

    def close(self) -> None:
        self.wait()
        self.mgr.close()

    # ---- restoring -----------------------------------------------------------------------------
    def restore(self, abstract_state: dict) -> tuple[dict, dict] | None:
        """(state, meta) of the newest good checkpoint, or None for a fresh run."""
        for step in sorted(self.mgr.all_steps(), reverse=True):
            d = f"{self.directory}/{step}"
            why = ackpt.verify(d) if jax.process_index() == 0 else None
            if why and ackpt.verify(d, ackpt.MODEL_ITEMS) is None:
                raise ackpt.CheckpointError(
                    f"{d} holds model weights without optimizer state (ankh.checkpoint.save_model); "
                    "a training run cannot resume from it -- use another output/name"
                )
            bad = _agree(why is not None)  # every process takes the same branch
            if not bad:
                try:
                    return self._restore_step(step, abstract_state)
                except Exception as e:  # tensorstore/orbax raise many types
                    why = f"{d} could not be restored: {type(e).__name__}: {str(e)[:300]}"
                    bad = True
            log.warning("checkpoint %s is unusable, falling back to an older one: %s", d, why)
            self._quarantine(step)
        return None

    def _restore_step(self, step: int, abstract_state: dict) -> tuple[dict, dict]:
        args = ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_state["params"]),
            opt_state=ocp.args.StandardRestore(abstract_state["opt_state"]),
            meta=ocp.args.JsonRestore(),
        )
        out = self.mgr.restore(step, args=args)
        meta = dict(out["meta"])
        rep = abstract_state["step"].sharding
        state = {
            "params": out["params"],
            "opt_state": out["opt_state"],
            "step": jax.device_put(np.int32(meta["step"]), rep),
            "rng": jax.device_put(np.asarray(meta["rng"], np.uint32), rep),
        }
        log.info("restored checkpoint %s/%d", self.directory, step)
        return state, meta

    def _quarantine(self, step: int) -> None:
        """Move a bad step aside (kept for inspection) so the step can be saved again."""
        multihost_utils.sync_global_devices(f"ankh-quarantine-{step}")
        fs, root = storage.filesystem(self.directory)
        local = storage.is_local(fs)
        if jax.process_index() == 0:
            src, dst = (
                f"{root}/{step}",
                f"{root.rsplit('/', 1)[0]}/corrupt/{step}-{int(time.time())}",
            )
            if fs.exists(src):
                fs.makedirs(dst.rsplit("/", 1)[0], exist_ok=True)
                # Object stores: copy here, delete through Orbax below -- its gcsfs instance caches
                # listings, and a step removed behind its back still "exists" when saved again.
                (fs.mv if local else fs.copy)(src, dst, recursive=True)
                log.warning("moved bad checkpoint %s to %s", src, dst)
        multihost_utils.sync_global_devices(f"ankh-quarantined-{step}")
        if not local and step in self.mgr.all_steps():
            # already gone (removed by hand): nothing left to delete
            with contextlib.suppress(FileNotFoundError):
                self.mgr.delete(step)
        self.mgr.reload()


def _agree(flag: bool) -> bool:
    """Process 0's decision, broadcast to every process."""
    if jax.process_count() == 1:
        return flag
    return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))
