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
        self._pending: list[int] = []

    # ---- saving ------------------------------------------------------------------------------
    def should_save(self, step: int, final: bool = False) -> bool:
        return step > 0 and (final or step % self.every == 0) and step not in self.mgr.all_steps()

    def save(self, step: int, state: dict, meta: dict) -> None:
        """Start an async save of ``state`` ({params, opt_state, ...}) and the JSON ``meta``."""
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(state["params"]),
            opt_state=ocp.args.StandardSave(state["opt_state"]),
            meta=ocp.args.JsonSave(meta),
        )
        self.mgr.save(step, args=args)
        self._pending.append(step)
        self.poll()

    def poll(self) -> None:
        """Write manifests of saves that have finished (cheap; call every step)."""
        if not self._pending or self.mgr.is_saving_in_progress():
            return
        if jax.process_index() == 0:
            for step in self._pending:
                d = f"{self.directory}/{step}"
                fs, root = storage.filesystem(d)
                if fs.exists(root):  # may already be garbage-collected (keep=K)
                    ackpt.write_manifest(d)
        self._pending = []

    def wait(self) -> None:
        self.mgr.wait_until_finished()
        self.poll()

    def save_now(self, step: int, state: dict, meta: dict, timeout_s: float) -> bool:
        """Save ``step`` (unless it is already saved or saving) and wait for it, manifest
        included, for at most ``timeout_s``; True if it is final. On a preemption notice."""
        t0 = time.perf_counter()
        if step not in self.mgr.all_steps():
            self.save(step, state, meta)
        done = threading.Thread(target=self.mgr.wait_until_finished, daemon=True)
        done.start()
        done.join(max(timeout_s - (time.perf_counter() - t0), 0.0))
        if done.is_alive():
            log.error(
                "checkpoint %s/%d not final after %.1f s (preempt_timeout_s): stopping without "
                "it; a resume uses the previous good step",
                self.directory,
                step,
                timeout_s,
            )
            return False
        self.poll()
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
