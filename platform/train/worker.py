"""Distributed pretraining, the worker side: the body of one JAX process (any process count).

``train_loop`` is the Ray Train worker entry point: join the JAX distributed runtime (on TPU/GPU
Ray Train does it; on CPU the loop does, with the coordinator address broadcast from rank 0),
then ``Run.fit``: build the ``data x fsdp x tensor`` mesh, restore the newest good checkpoint
(or initialise), then step: host batch -> global array -> jitted step. Metrics go to
``ray.train.report`` and, through ``records``, to ``<run>/metrics.jsonl`` (+ TensorBoard when
available), the console, and at the end ``summary.json`` and ``curves.png``.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from ankh import sharding
from ankh.flops import measure_matmul_peak, train_step_flops
from ankh.resolve import Resolved, resolve
from ankh_platform.core import progress
from ankh_platform.core.config import from_dict, to_dict
from ankh_platform.core.runtime import configure_logging
from ankh_platform.train import preemption, program
from ankh_platform.train.checkpoints import CheckpointStore
from ankh_platform.train.config import PretrainConfig, ScaleConfig, eval_masking_note
from ankh_platform.train.faults import maybe_hold, maybe_inject_fault
from ankh_platform.train.lanes import LaneSource, accum_factor, merge_states
from ankh_platform.train.probe import RunProbe, residue_unigram
from ankh_platform.train.records import (
    MetricsWriter,
    console_lines,
    discard_examples_after,
    log_examples,
    write_curves,
    write_summary,
)

log = logging.getLogger(__name__)


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train worker entry point (``config`` is ``to_dict`` of the driver's resolved config)."""
    import ray.train

    cfg = from_dict(PretrainConfig, config)
    configure_logging()
    rank, world = _join_jax(cfg.scale)
    Run(cfg, rank, world, report=lambda m: ray.train.report(m)).fit()


def _join_jax(scale: ScaleConfig) -> tuple[int, int]:
    """Start this worker's JAX runtime; returns (process index, process count)."""
    import ray.train
    from ray.train.collective import broadcast_from_rank_zero

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if scale.use_tpu or scale.use_gpu or world == 1:
        return rank, world  # TPU/GPU: Ray Train's JaxConfig backend already initialised JAX
    one_node = ctx.get_local_world_size() == world
    host = "127.0.0.1" if one_node else ray.util.get_node_ip_address()
    addr = None
    if rank == 0:
        with socket.socket() as s:
            s.bind((host, 0))
            addr = f"{host}:{s.getsockname()[1]}"
    addr = broadcast_from_rank_zero(addr)
    # Bind the coordinator to the address we advertise (loopback on one node), not 0.0.0.0.
    jax.distributed.initialize(
        addr, num_processes=world, process_id=rank, coordinator_bind_address=addr
    )
    return rank, world


def gather_json(obj: Any, size: int = 65536) -> list[Any]:
    """Every process's small JSON-able ``obj``, in process order (e.g. data positions)."""
    if jax.process_count() == 1:
        return [obj]
    from jax.experimental import multihost_utils

    raw = json.dumps(obj).encode()
    if len(raw) > size:
        raise ValueError(f"state too large to gather ({len(raw)} bytes)")
    buf = np.zeros(size, np.uint8)
    buf[: len(raw)] = np.frombuffer(raw, np.uint8)
    rows = np.asarray(multihost_utils.process_allgather(buf))  # [processes, size]
    return [json.loads(bytes(r).rstrip(b"\0")) for r in rows]


class Run:
    def __init__(
        self, cfg: PretrainConfig, rank: int, world: int, report: Callable[[dict], None] | None
    ):
        self.cfg, self.rank, self.world, self.report = cfg, rank, world, report
        self.run_dir = cfg.run_dir()
        self.primary = jax.process_index() == 0
        self.writer = MetricsWriter(self.run_dir, self.primary)

    def _setup(self) -> None:
        # The network to train: a preset's config, or the config, tokenizer (and, at step 0,
        # the weights) of whatever ``model`` names. A resume re-reads config and tokenizer from
        # it but its weights from the run's own checkpoint (``_start_state``).
        self.origin: Resolved = resolve(self.cfg.model)
        # Data lanes (train/lanes.py): the run's global batch is data.rows x scale.num_workers
        # rows whatever the worker count; fewer workers accumulate more micro-batches.
        lanes = self.cfg.scale.num_workers
        self.accum = accum_factor(jax.process_count(), lanes)
        # The same builder the compile-only TPU plan uses (ankh_platform.plan.train). Residue
        # targets as the run's tokenizer spells them (ankh3's ids differ from ankh's).
        prog = program.build(
            self.cfg,
            self.origin.config,
            from_weights=self.origin.kind != "preset",
            tokenizer=self.origin.tokenizer,
            accum_factor=self.accum,
        )
        self.cfg = cfg = prog.cfg
        self.model_cfg, self.mesh, self.trainer = prog.model_cfg, prog.mesh, prog.trainer
        self.residues = self.trainer.residues
        self.probe = RunProbe(
            cfg.eval, self.model_cfg, self.origin.tokenizer, cfg.seed, self.primary
        )
        self.source = LaneSource(
            cfg.data,
            cfg.source,
            jax.process_index(),
            jax.process_count(),
            lanes,
            self.origin.tokenizer,
        )
        if (note := eval_masking_note(cfg.data, cfg.source)) and self.primary:
            log.warning("%s", note)
        ck = cfg.checkpoint
        self.store = CheckpointStore(
            f"{self.run_dir}/checkpoints", ck.every, ck.keep, ck.async_save
        )
        spec = self.source.spec
        self.encoder_only = cfg.data.objective == "mlm"  # no decoder tokens: count none
        dec_len = 0 if self.encoder_only else spec.dec_len
        self.flops = train_step_flops(self.model_cfg, spec.rows * lanes, spec.enc_len, dec_len)
        self.peak = measure_matmul_peak(cfg.optim.compute_dtype, seconds=0.5)

    def _start_state(self) -> tuple[dict, int]:
        restored = self.store.restore(self.trainer.abstract_state())
        if self.cfg.log_example_ids:  # the steps to be trained again: recorded once, anew
            step = int(restored[1]["step"]) if restored else 0
            discard_examples_after(self.run_dir, step, jax.process_index(), jax.process_count())
        if restored is None:
            if self.primary:  # a restart with no good checkpoint: earlier attempts' steps go
                self.writer.discard_after(0)
            flat = self.origin.load_params()  # None for a preset: initialised from the seed
            if flat is not None:
                log.info(
                    "step 0 from the weights of %s (%s %s, peak lr %g)",
                    self.cfg.model,
                    self.origin.kind,
                    self.origin.pinned,
                    self.cfg.optim.peak_lr,
                )
            return self.trainer.init_state(flat), 0
        state, meta = restored
        self.source.restore(meta["data"])
        dropped = self.writer.discard_after(int(meta["step"])) if self.primary else 0
        self.writer.write(
            {
                "event": "resumed",
                "step": meta["step"],
                "workers": self.world,
                "accum_factor": self.accum,
                "discarded_records": dropped,
                "data": meta["data"],
            }
        )
        log.info("resumed %s at step %d with %d worker(s)", self.run_dir, meta["step"], self.world)
        return state, int(meta["step"])

    def _meta(self, step: int, state: dict) -> dict:
        return {
            "step": step,
            "rng": np.asarray(jax.device_get(state["rng"])).tolist(),
            "data": merge_states(gather_json(self.source.state())),  # one per lane
            "model": self.model_cfg.to_hf_dict(),
            "source": self.source_record(),
            "config": to_dict(self.cfg),
        }

    def source_record(self) -> dict[str, Any]:
        """Where the run's step-0 weights came from (reproducibility): kind (preset / hf /
        checkpoint), the pinned location, and a hub model's commit."""
        o = self.origin
        return {"ref": o.ref, "kind": o.kind, "location": o.location, "revision": o.revision}

    def evaluate(self, params: dict) -> dict[str, float]:
        sums: dict[str, float] = {}
        for b in self.eval_batches:
            out = jax.device_get(self.trainer.evaluate(params, sharding.global_batch(b, self.mesh)))
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        n, nr = max(sums.get("tokens", 0), 1.0), max(sums.get("res_tokens", 0), 1.0)
        return {
            "val_loss": sums["ce"] / n,
            "val_accuracy": sums["correct"] / n,
            "val_residue_loss": sums["res_ce"] / nr,
            **self.reference_line(),
            **self.probe(params),
        }

    def reference_line(self) -> dict[str, float]:
        """The unigram entropy beside every held-out residue loss (once known)."""
        u = self.reference.get("unigram_entropy")
        return {} if u is None else {"unigram_entropy": u}

    def _references(self, step: int) -> None:
        """Once per run attempt: the held-out residues' unigram entropy (every process) and the
        probe's baselines (process 0), as a metrics record and one console line."""
        self.reference = (
            {"unigram_entropy": residue_unigram(self.eval_batches, self.residues)}
            if self.eval_batches
            else {}
        )
        self.reference |= self.probe.baselines()
        if self.primary and self.reference:
            rec = {"step": step, "event": "reference", **self.reference}
            self.writer.write(rec)
            for line in console_lines(rec, self.cfg.steps):
                progress.console(line)

    def _log(self, step: int, m: dict, window: dict) -> dict:
        m = {k: float(v) for k, v in jax.device_get(m).items()}
        dt = time.perf_counter() - window["t0"]
        steps = max(step - window["step0"], 1)
        rec = {
            "step": step,
            **m,
            "step_time_s": dt / steps,
            "tokens_per_s": window["tokens"] / dt,
            "flops_per_s": self.flops * steps / dt,
            "mfu": self.flops * steps / dt / (self.peak * jax.process_count()),
            "data_wait_frac": window["wait"] / dt,
            "residues": window["residues"],  # since the last record (all workers)
            "workers": self.world,
        }
        log.info(
            "step %d loss %.4f acc %.3f lr %.2e gnorm %.3f tok/s %.0f mfu %.3f",
            step,
            rec["loss"],
            rec["accuracy"],
            rec["lr"],
            rec["grad_norm"],
            rec["tokens_per_s"],
            rec["mfu"],
        )
        window.update(t0=time.perf_counter(), step0=step, tokens=0, residues=0, wait=0.0)
        return rec

    def _emit(self, rec: dict) -> None:
        self.writer.write(rec)
        if self.primary:
            for line in console_lines(rec, self.cfg.steps):
                progress.console(line)
        if self.report is not None:
            self.report({k: v for k, v in rec.items() if isinstance(v, (int, float))})

    def fit(self) -> dict[str, Any]:
        """Train to ``cfg.steps`` (resuming if the run has checkpoints). On SIGTERM: checkpoint
        at the current step within ``checkpoint.preempt_timeout_s`` and stop -- under Ray Train
        by raising ``preemption.Preempted`` (``FailureConfig`` restarts the workers, which resume from
        that step), in-process by returning a summary with ``preempted: True``."""
        with preemption.sigterm_notice(), preemption.watch_driver():
            return self._fit()

    def _fit(self) -> dict[str, Any]:
        self._setup()
        preemption.ensure()  # the source may have started Ray (in-process) and its handlers
        cfg = self.cfg  # with its effective optimizer settings
        state, step = self._start_state()
        self.eval_batches = self.source.eval_batches()
        self._references(step)
        window = {"t0": time.perf_counter(), "step0": step, "tokens": 0, "residues": 0, "wait": 0.0}
        rec: dict[str, Any] = {}
        while step < cfg.steps:
            preemption.ensure()  # a library started since may have taken SIGTERM over
            maybe_hold(cfg, step, self.store.wait)
            maybe_inject_fault(cfg, step, self.rank)
            t = time.perf_counter()
            local = self.source.next()
            batch = sharding.global_batch(local, self.mesh)
            window["wait"] += time.perf_counter() - t
            enc, dec = (local[k].astype(bool).sum() for k in ("segment_ids", "decoder_segment_ids"))
            window["tokens"] += int(enc + (0 if self.encoder_only else dec)) * self.world
            # residues seen: encoder tokens less one </s> per packed sequence (1-gram, mlm)
            window["residues"] += int(enc - (local["example_ids"] >= 0).sum()) * self.world
            if cfg.log_example_ids:
                self._log_examples(step, local)
            state, m = self.trainer.step(state, batch)
            step += 1
            if step % cfg.log_every == 0 or step == cfg.steps:
                rec = self._log(step, m, window)
                if cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.steps:
                    rec |= self.evaluate(state["params"])
                self._emit(rec)
            if self.store.should_save(step, final=step == cfg.steps):
                self.store.save(step, state, self._meta(step, state))
                if self.primary:
                    progress.console(f"checkpoint step {step} -> {self.run_dir}/checkpoints/{step}")
            self.store.poll()
            if preemption.requested() and step < cfg.steps:
                return self._stop_preempted(step, state)
        final = self.evaluate(state["params"]) if self.eval_batches else {}
        self._emit({"step": step, "event": "final", **final})
        self.store.close()
        self.source.close()
        summary = {
            "run_dir": self.run_dir,
            "checkpoint_dir": f"{self.run_dir}/checkpoints/{step}",
            "step": step,
            "source": self.source_record(),
            "peak_lr": cfg.optim.peak_lr,
            "last": rec,
            **self.reference,
            **final,
        }
        if self.primary and cfg.eval.curves and self.writer.enabled:
            summary["curves"] = write_curves(self.run_dir, self.cfg.name)
        if self.primary:
            write_summary(self.run_dir, summary)
        return summary

    def _stop_preempted(self, step: int, state: dict) -> dict[str, Any]:
        by_driver = preemption.from_driver()  # the job is being stopped: end, do not restart
        t0 = time.perf_counter()
        ok = self.store.save_now(
            step, state, self._meta(step, state), self.cfg.checkpoint.preempt_timeout_s
        )
        secs = time.perf_counter() - t0
        self._emit(
            {"step": step, "event": "preempted", "checkpoint_saved": ok, "checkpoint_s": secs}
        )
        if self.primary:
            progress.console(
                f"SIGTERM: stopped at step {step}; checkpoint "
                f"{'written' if ok else 'NOT written'} in {secs:.1f} s; "
                "the same command resumes the run"
            )
        if ok:  # else a save is still running: closing would wait for it past the deadline
            self.store.close()
        self.source.close()
        summary = {
            "run_dir": self.run_dir,
            "step": step,
            "preempted": True,
            "notice": "driver" if by_driver else "sigterm",
            "checkpoint_dir": f"{self.run_dir}/checkpoints/{step}" if ok else None,
        }
        if self.primary:
            write_summary(self.run_dir, summary)
        if self.report is not None and not by_driver:  # Ray Train: restarted per FailureConfig
            raise preemption.Preempted(
                f"SIGTERM at step {step}: checkpoint {'written' if ok else 'NOT written'} in "
                f"{secs:.1f} s; the run resumes from the newest good checkpoint"
            )
        return summary

    def _log_examples(self, step: int, local: dict) -> None:
        ids = local["example_ids"]
        log_examples(self.run_dir, jax.process_index(), step, ids[ids >= 0].tolist())
