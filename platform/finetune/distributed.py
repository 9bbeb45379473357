"""Data-parallel fine-tuning on Ray Train (``scale.num_workers`` > 1, or GPU/TPU workers).

The driver (``run_ray``) starts a ``ray.train.v2.jax.JaxTrainer`` as ``jobs.pretrain`` does
(``train.job.scaling_config`` / ``worker_env``); every worker joins the JAX distributed runtime
(``train.worker._join_jax``: on CPU over gloo, the coordinator address broadcast from rank 0)
and runs ``job.train``, the same loop as one process. The global batch (``batch_size`` rows,
a function of (seed, step) as in one process) is split by rows over the processes' devices
(``ankh.sharding.global_batch``); the parameters and optimizer state are replicated, so the
jitted step's loss is the global batch's mean and XLA all-reduces the gradients: 2 workers
take the steps 1 worker takes, up to float reduction order. Every worker scores the
validation split on its local copy of the (replicated) parameters, so all reach the same
early-stopping decision with no further communication; process 0 writes the records, the
best state, the test figures and the run directory. Checkpoints are Orbax's, written by all.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from ankh import sharding, storage
from ankh_platform.core.config import to_dict
from ankh_platform.finetune.config import FinetuneJobConfig

log = logging.getLogger(__name__)


def wanted(cfg: FinetuneJobConfig) -> bool:
    """Ray Train, or one process here (``jobs.pretrain --in-process``'s loop, the default for
    one CPU worker: no Ray to start)."""
    s = cfg.scale
    return s.num_workers > 1 or s.use_gpu or s.use_tpu


def mesh() -> Mesh | None:
    """A data-parallel mesh over every process's devices; None in a single process."""
    return sharding.make_mesh({"data": -1}) if jax.process_count() > 1 else None


def replicate(module: nnx.Module, m: Mesh) -> None:
    """Every process-local array of ``module`` (the model, or the optimizer) as a global array
    replicated over ``m`` (all processes hold the same values: the same seed built them);
    arrays already global (the moments of replicated parameters) are kept.

    The optimizer too: its step count is made on this process's device, which jit accepts
    while uncommitted, but restored from a checkpoint it is committed there, and the step
    would refuse to mix it with the global parameters (a resumed run on 2 workers)."""
    state = nnx.state(module)
    rep = sharding.replicated(m)

    def place(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return x
        return jax.make_array_from_process_local_data(rep, np.asarray(x))

    nnx.update(module, jax.tree.map(place, state))


def shard(batch: dict[str, np.ndarray], m: Mesh) -> dict[str, jax.Array]:
    """The global batch (every process builds it whole) -> this process's rows -> global
    arrays sharded by rows; ``class_w`` (per class, not per row) replicated."""
    rank, world = jax.process_index(), jax.process_count()
    rows = len(batch["ids"])
    if rows % world:
        raise ValueError(f"batch_size {rows} is not divisible by {world} workers")
    per = rows // world
    local = {k: v[rank * per : (rank + 1) * per] for k, v in batch.items() if k != "class_w"}
    out = sharding.global_batch(local, m)
    if "class_w" in batch:
        out["class_w"] = jax.make_array_from_process_local_data(
            sharding.replicated(m), np.asarray(batch["class_w"])
        )
    return out


def local_copy(model: nnx.Module) -> nnx.Module:
    """``model`` with process-local arrays (the replicated values): scored here alone."""
    graph, state = nnx.split(model)
    here = jax.local_devices()[0]
    return nnx.merge(graph, jax.tree.map(lambda x: jax.device_put(np.asarray(x), here), state))


def join(cfg: FinetuneJobConfig) -> None:
    """In a Ray Train worker: start this process's JAX distributed runtime (pretraining's)."""
    from ankh_platform.core.runtime import configure_logging
    from ankh_platform.train.worker import _join_jax

    configure_logging()
    _join_jax(cfg.scale)


def run_ray(
    cfg: FinetuneJobConfig, train_loop: Callable[[dict], None], ray_address: str | None = None
) -> dict[str, Any]:
    """Fine-tune on ``cfg.scale.num_workers`` Ray Train workers, each running ``train_loop``
    (``job.train_loop``: ``join``, then the loop); returns ``summary.json``."""
    from ray.train import FailureConfig, RunConfig
    from ray.train.v2.jax import JaxTrainer

    from ankh_platform.core.runtime import init_ray, worker_output_to
    from ankh_platform.train.job import scaling_config, worker_env

    out = cfg.output.rstrip("/")
    init_ray(ray_address, dashboard=True)  # as jobs.pretrain: Ray Train's watchdog needs it
    storage_path, storage_fs = storage.pyarrow_gcs(
        out if storage.is_gcs(out) else os.path.abspath(out)
    )
    run_config = RunConfig(
        name="ray_train",
        storage_path=storage_path,
        storage_filesystem=storage_fs,
        failure_config=FailureConfig(max_failures=cfg.max_failures),
        worker_runtime_env={"env_vars": worker_env(cfg)},
    )
    trainer = JaxTrainer(
        train_loop,
        train_loop_config=to_dict(cfg),
        scaling_config=scaling_config(cfg.scale),
        run_config=run_config,
    )
    log_path = f"{out}/logs/job.log" if not storage.is_gcs(out) else "outputs/logs/finetune.log"
    with worker_output_to(log_path):
        result = trainer.fit()
    if result.error:
        raise RuntimeError(f"fine-tuning run {out} failed: {result.error}") from result.error
    with storage.open_file(f"{out}/summary.json", "r") as fh:
        return json.load(fh)
