"""Fine-tuning over a device mesh, and on Ray Train (``scale.num_workers`` > 1, or GPU/TPU workers).

The mesh (``cfg.mesh``, pretraining's ``MeshConfig``: ``data x fsdp x tensor``, data = the
devices left over) spans every process's devices. Its parameters -- the encoder's, and the
embedding -- are placed by ``ankh.sharding.param_shardings`` (the one rule table: ``embed`` over
fsdp, ``mlp heads vocab`` over tensor; the LoRA adapters and the head carry no logical axes and
are replicated); the optimizer moments follow their parameters (``zeros_like`` keeps a
sharding), the jitted step keeps both where they are (``constrain``), and XLA places the
gradients alike. Each step's global batch (``batch_size`` rows, a function of (seed, step);
every process builds it whole) is split by rows over ``data`` and ``fsdp`` (``put``), so the
loss is the global batch's mean and N devices take the steps one takes, up to float reduction
order. The default mesh (all data) in one process is no mesh: one device, as before.

With a mesh, every process takes part in each jitted call: validation and the test split are
scored by all on the sharded model (each builds the same batches, the outputs are gathered to
every host), so all reach the same early-stopping decision; ``best.safetensors`` and the run
directory are gathered to the hosts (``host``) and written by process 0. Checkpoints are
Orbax's, written by all, each process its shards; restoring into the placed state restores the
shards. On Ray Train (``run_ray``: ``ray.train.v2.jax.JaxTrainer``, as ``jobs.pretrain``)
every worker joins the JAX distributed runtime (``train.worker._join_jax``: on CPU over gloo)
and runs ``job.train``, the same loop as one process.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from ankh import sharding, storage
from ankh_platform.core.config import to_dict
from ankh_platform.finetune.config import FinetuneJobConfig
from ankh_platform.train.config import MeshConfig

log = logging.getLogger(__name__)


def wanted(cfg: FinetuneJobConfig) -> bool:
    """Ray Train, or one process here (``jobs.pretrain --in-process``'s loop, the default for
    one CPU worker: no Ray to start)."""
    s = cfg.scale
    return s.num_workers > 1 or s.use_gpu or s.use_tpu


def mesh(cfg: FinetuneJobConfig) -> Mesh | None:
    """``cfg.mesh`` over every process's devices; None for the default mesh in one process."""
    if jax.process_count() == 1 and cfg.mesh == MeshConfig():
        return None
    n, sizes = jax.device_count(), dataclasses.asdict(cfg.mesh)
    try:
        m = sharding.make_mesh(sizes)
    except ValueError as e:
        raise ValueError(
            f"mesh.data={cfg.mesh.data} mesh.fsdp={cfg.mesh.fsdp} mesh.tensor={cfg.mesh.tensor} "
            f"does not divide the {n} devices ({jax.process_count()} processes); -1 = the rest"
        ) from e
    rows = m.shape["data"] * m.shape["fsdp"]  # the batch is split over both
    if cfg.batch_size % rows:
        raise ValueError(
            f"batch_size {cfg.batch_size} is not divisible by mesh data x fsdp = {rows} "
            f"(the rows of a batch are split over them)"
        )
    return m


def check(module: nnx.Module, m: Mesh) -> None:
    """Refuse a mesh axis that would leave a parameter dim it shards whole: the rule table
    replicates an indivisible dim, which here would quietly keep the memory a mesh was asked
    to save."""
    bad = sharding.indivisible(nnx.state(module, nnx.Param), m)
    if bad:
        sizes = {a: m.shape[a] for a in sharding.MESH_AXES}
        rules = ", ".join(f"{k}->{v}" for k, v in sharding.RULES.items() if v and k != "batch")
        raise ValueError(
            f"mesh {sizes} does not divide the sharded dims of {len(bad)} parameters, e.g. "
            f"{'; '.join(bad[:3])} (ankh.sharding.RULES: {rules}); pick fsdp / tensor sizes "
            "that divide them"
        )


def place(module: nnx.Module, m: Mesh) -> None:
    """Every array of ``module`` (the model, or its optimizer) as a global array on ``m``:
    parameters by the rule table, the rest replicated; arrays already on ``m`` (the optimizer
    moments of placed parameters) are kept. Each process supplies its devices' slices of the
    values it holds whole (the same seed and weights built them in every process)."""
    state = nnx.state(module)
    want = sharding.param_shardings(state, m)

    def one(x, sh):
        if isinstance(x.sharding, NamedSharding) and x.sharding.mesh == m:
            return x
        return put(x, sh)

    pure = jax.tree.map(one, nnx.to_pure_dict(state), want)
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(module, state)


def put(x: Any, sh: NamedSharding) -> jax.Array:
    """A value every process holds whole -> the global array ``sh`` places."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sh, lambda idx: x[idx])


def shardings(module: nnx.Module) -> dict:
    """Where ``module``'s arrays are now (a pure dict): the step keeps them there."""
    return jax.tree.map(lambda x: x.sharding, nnx.to_pure_dict(nnx.state(module)))


def constrain(module: nnx.Module, where: dict) -> None:
    """Inside a jitted function: pin ``module``'s new arrays to ``where`` (their placement);
    XLA would otherwise pick the updated parameters' and moments' shardings itself."""
    state = nnx.state(module)
    nnx.replace_by_pure_dict(
        state, jax.lax.with_sharding_constraint(nnx.to_pure_dict(state), where)
    )
    nnx.update(module, state)


def shard(batch: dict[str, np.ndarray], m: Mesh) -> dict[str, jax.Array]:
    """The global batch (every process builds it whole) -> global arrays split by rows over
    ``data`` and ``fsdp``; ``class_w`` (per class, not per row) replicated."""
    return {
        k: put(v, sharding.replicated(m) if k == "class_w" else sharding.batch_sharding(m, v.ndim))
        for k, v in batch.items()
    }


def to_host(x: Any) -> np.ndarray:
    """A (global) array's whole value on this host, writable (``lora.merge`` assigns into
    it); every process must call it."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.array(multihost_utils.process_allgather(x, tiled=True))
    return np.array(x)


def host(model: nnx.Module) -> nnx.Module:
    """``model`` with host (numpy) arrays, gathered from the mesh (every process calls it):
    what the run directory is written from (merging LoRA included) by process 0 alone."""
    graph, state = nnx.split(model)
    return nnx.merge(graph, jax.tree.map(to_host, state))


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
