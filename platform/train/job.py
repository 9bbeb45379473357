"""Distributed pretraining, the driver side: ``run(cfg)`` trains or resumes a run.

``run`` resolves the config's paths once, starts a ``ray.train.v2.jax.JaxTrainer`` and waits;
every Ray Train worker runs ``ankh_platform.train.worker.train_loop`` (one JAX process each,
one sharded model). ``run_local_process`` runs the same loop in this process without Ray.
The config is ``ankh_platform.train.config.PretrainConfig``.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

from ankh import storage
from ankh_platform.core import progress
from ankh_platform.core.config import to_dict
from ankh_platform.train import preemption
from ankh_platform.train.config import PretrainConfig, ScaleConfig, resolve_paths
from ankh_platform.train.worker import Run, train_loop


def worker_env(cfg: PretrainConfig) -> dict[str, str]:
    env = {
        "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
        progress.WORKER_CONSOLE_ENV: "1",
    } | storage.storage_env()  # e.g. a GCS emulator
    env |= (
        {"JAX_COMPILATION_CACHE_DIR": os.path.expanduser(cfg.compile_cache)}
        if cfg.compile_cache
        else {}
    )
    if cfg.scale.use_tpu:
        return env | {"JAX_PLATFORMS": "tpu"}
    if cfg.scale.use_gpu:
        return env | {"JAX_PLATFORMS": "cuda"}
    return env | {
        "JAX_PLATFORMS": "cpu",
        "JAX_NUM_CPU_DEVICES": str(cfg.scale.devices_per_worker),
        "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
    }


def scaling_config(s: ScaleConfig) -> Any:
    """Ray Train's (V2) ``ScalingConfig`` for a run: on TPU one worker per host, Ray giving each
    the chips of its host (``python -m jobs.check_cluster --compile`` checks it against the
    mesh). A worker range makes it elastic: ``num_workers=(min, max)``, Ray Train starting (and
    restarting after a lost host) with the workers the cluster can place, >= min, and checking
    every ``resize_interval_s`` whether returned hosts let it grow (a restart from the newest
    checkpoint). TPU: Ray counts whole slices (``topology``) in an elastic range."""
    from ray.train.v2.api.config import ScalingConfig

    workers = s.worker_range if s.elastic else s.num_workers
    resize = {"elastic_resize_monitor_interval_s": s.resize_interval_s}
    if s.use_tpu:
        return ScalingConfig(
            use_tpu=True,
            num_workers=workers,
            topology=s.topology or None,
            accelerator_type=s.accelerator_type,
            **resize,
        )
    return ScalingConfig(
        num_workers=workers,
        use_gpu=s.use_gpu,
        resources_per_worker={"CPU": s.cpus_per_worker} | dict(s.resources),
        **resize,
    )


def job_log_path(cfg: PretrainConfig) -> str:
    """``<run>/logs/job.log`` (driver + every Ray worker line); a local copy for a gs:// run."""
    fs, _ = storage.filesystem(cfg.output)
    if storage.is_local(fs):
        return os.path.join(cfg.run_dir(), "logs", "job.log")
    return os.path.join("outputs", "logs", cfg.name, "job.log")  # object stores cannot append


def run(cfg: PretrainConfig, ray_address: str | None = None) -> dict[str, Any]:
    """Train (or resume) ``cfg.name`` under ``cfg.output``; returns the final metrics and paths."""
    from ray.train import FailureConfig, RunConfig
    from ray.train.v2.jax import JaxTrainer

    from ankh_platform.core.runtime import init_ray, log_to_file, worker_output_to

    cfg = resolve_paths(cfg)
    log_path = log_to_file(job_log_path(cfg))  # before Ray starts: its start-up lines go there
    progress.console(
        f"run {cfg.name}: {cfg.steps} steps; framework logs: {log_path} (-v shows them)"
    )
    init_ray(ray_address, dashboard=True)  # loopback dashboard: metrics + Train's PG watchdog
    scaling = scaling_config(cfg.scale)
    storage_path, storage_fs = storage.pyarrow_gcs(cfg.output)  # gs:// ok
    notice = f"{cfg.name}-{uuid.uuid4().hex[:12]}"  # the driver's SIGTERM -> every worker
    run_config = RunConfig(
        name=cfg.name,
        storage_path=storage_path,
        storage_filesystem=storage_fs,
        failure_config=FailureConfig(max_failures=cfg.max_failures),
        worker_runtime_env={"env_vars": worker_env(cfg) | {preemption.NOTICE_ENV: notice}},
    )
    # Ray Train takes the worker's config as a dict (its dashboard shows it): the JSON form.
    trainer = JaxTrainer(
        train_loop, train_loop_config=to_dict(cfg), scaling_config=scaling, run_config=run_config
    )
    with worker_output_to(log_path), preemption.driver_notice(notice):
        result = trainer.fit()
    if result.error:
        raise RuntimeError(f"training run {cfg.name} failed: {result.error}") from result.error
    with storage.open_file(f"{cfg.run_dir()}/summary.json", "r") as fh:
        summary = json.load(fh)
    return summary | {"metrics": dict(result.metrics or {})}


def run_local_process(cfg: PretrainConfig) -> dict[str, Any]:
    """The same loop in this process without Ray (one JAX process; tests and benchmarks)."""
    import jax

    if cfg.compile_cache:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(cfg.compile_cache))
    return Run(resolve_paths(cfg), 0, 1, report=None).fit()
