"""Distributed pretraining: Ray Train workers, one JAX process each, one sharded model.

``run(cfg)`` starts a ``ray.train.v2.jax.JaxTrainer``; every worker runs ``train_loop``:
join the JAX distributed runtime (on TPU/GPU Ray Train does it; on CPU the loop does, with the
coordinator address broadcast from rank 0), build the ``data x fsdp x tensor`` mesh, restore the
newest good checkpoint (or initialise), then step: host batch -> global array -> jitted step.
Metrics go to ``ray.train.report`` and ``<run>/metrics.jsonl`` (+ TensorBoard when available).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import socket
import time
from typing import Any

from ankh.training import OptimConfig
from ankh_platform.core.config import from_dict, to_dict
from ankh_platform.data.pipeline import DataConfig
from ankh_platform.train.source import SourceConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    data: int = -1     # -1 = all remaining devices
    fsdp: int = 1
    tensor: int = 1


@dataclasses.dataclass(frozen=True)
class ScaleConfig:
    num_workers: int = 1          # Ray Train workers = JAX processes (TPU: one per host)
    cpus_per_worker: float = 1.0
    devices_per_worker: int = 1   # CPU only: simulated JAX devices per process
    use_tpu: bool = False
    use_gpu: bool = False
    topology: str = ""            # TPU, e.g. "2x2x2" for a v4-16
    accelerator_type: str = "TPU-V4"


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every: int = 100
    keep: int = 3
    async_save: bool = True


@dataclasses.dataclass(frozen=True)
class FaultConfig:
    """Fault injection for tests: SIGKILL worker ``rank`` at ``kill_at_step`` once per run."""
    kill_at_step: int = -1
    rank: int = 0


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    model: str = "tiny"                 # an ankh.config preset
    steps: int = 300
    seed: int = 0
    output: str = "outputs/pretrain"    # storage path: local dir or gs://bucket/prefix
    name: str = "ankh-tiny"             # run name; same name + output = resume
    optim: OptimConfig = OptimConfig(peak_lr=0.004, warmup_steps=30, total_steps=0)  # 0 = steps
    data: DataConfig = DataConfig(paths=("data/uniprot_sample/train",), rows=8, enc_len=264,
                                  max_residues=128, max_segments=8, window=512)
    source: SourceConfig = SourceConfig()
    mesh: MeshConfig = MeshConfig()
    scale: ScaleConfig = ScaleConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    log_every: int = 10
    eval_every: int = 100               # 0 = only at the end
    max_failures: int = 3
    log_example_ids: bool = False       # <run>/examples/rank<r>.jsonl (exactly-once checks)
    fault: FaultConfig = FaultConfig()
    compile_cache: str = "~/.cache/ankh/jax"  # persistent XLA cache ("" = off): fast restarts

    def run_dir(self) -> str:
        out = self.output if "://" in self.output else os.path.abspath(self.output)
        return f"{out.rstrip('/')}/{self.name}"


# ---- worker side --------------------------------------------------------------------------------
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
    import jax

    # Bind the coordinator to the address we advertise (loopback on one node), not 0.0.0.0.
    jax.distributed.initialize(addr, num_processes=world, process_id=rank, coordinator_bind_address=addr)
    return rank, world


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train worker entry point (``config`` is ``to_dict(PretrainConfig)``)."""
    cfg = from_dict(PretrainConfig, config)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    rank, world = _join_jax(cfg.scale)
    from ankh_platform.train.worker import Run

    import ray.train

    Run(cfg, rank, world, report=lambda m: ray.train.report(m)).fit()


def maybe_inject_fault(cfg: PretrainConfig, step: int, rank: int) -> None:
    if step != cfg.fault.kill_at_step or rank != cfg.fault.rank:
        return
    import fsspec

    marker = f"{cfg.run_dir()}/fault-injected-{step}"
    fs, path = fsspec.core.url_to_fs(marker)
    if fs.exists(path):
        return
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.touch(path)
    log.warning("fault injection: SIGKILL to worker rank %d (pid %d) at step %d", rank, os.getpid(), step)
    os.kill(os.getpid(), signal.SIGKILL)


# ---- driver side --------------------------------------------------------------------------------
def worker_env(cfg: PretrainConfig) -> dict[str, str]:
    env = {"RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    if os.environ.get("STORAGE_EMULATOR_HOST"):  # a GCS emulator (tests, local dev) reaches workers
        env["STORAGE_EMULATOR_HOST"] = os.environ["STORAGE_EMULATOR_HOST"]
    env |= {"JAX_COMPILATION_CACHE_DIR": os.path.expanduser(cfg.compile_cache)} if cfg.compile_cache else {}
    if cfg.scale.use_tpu:
        return env | {"JAX_PLATFORMS": "tpu"}
    if cfg.scale.use_gpu:
        return env | {"JAX_PLATFORMS": "cuda"}
    return env | {"JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": str(cfg.scale.devices_per_worker),
                  "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}


def resolved(cfg: PretrainConfig) -> PretrainConfig:
    """Relative local paths made absolute here, on the driver (workers may run elsewhere)."""
    from ankh_platform.train.source import resolve_paths

    out = cfg.output if "://" in cfg.output else os.path.abspath(cfg.output)
    return dataclasses.replace(
        cfg, output=out, data=dataclasses.replace(cfg.data, paths=resolve_paths(cfg.data.paths)),
        source=dataclasses.replace(cfg.source, eval_paths=resolve_paths(cfg.source.eval_paths)))


def run(cfg: PretrainConfig, ray_address: str | None = None) -> dict[str, Any]:
    """Train (or resume) ``cfg.name`` under ``cfg.output``; returns the final metrics and paths."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.v2.jax import JaxTrainer

    from ankh_platform.core.runtime import init_ray

    init_ray(ray_address, dashboard=True)  # loopback dashboard: metrics + Train's PG watchdog
    cfg = resolved(cfg)
    s = cfg.scale
    if s.use_tpu:
        scaling = ScalingConfig(use_tpu=True, num_workers=s.num_workers, topology=s.topology or None,
                                accelerator_type=s.accelerator_type)
    else:
        scaling = ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu,
                                resources_per_worker={"CPU": s.cpus_per_worker})
    from ankh_platform.train.checkpoints import ray_train_storage

    storage_path, storage_fs = ray_train_storage(cfg.run_dir().rsplit("/", 1)[0])  # gs:// ok
    run_config = RunConfig(name=cfg.name, storage_path=storage_path, storage_filesystem=storage_fs,
                           failure_config=FailureConfig(max_failures=cfg.max_failures),
                           worker_runtime_env={"env_vars": worker_env(cfg)})
    trainer = JaxTrainer(train_loop, train_loop_config=to_dict(cfg), scaling_config=scaling,
                         run_config=run_config)
    result = trainer.fit()
    if result.error:
        raise RuntimeError(f"training run {cfg.name} failed: {result.error}") from result.error
    summary_path = f"{cfg.run_dir()}/summary.json"
    import fsspec

    with fsspec.open(summary_path) as fh:
        summary = json.load(fh)
    return summary | {"metrics": dict(result.metrics or {})}


def run_local_process(cfg: PretrainConfig) -> dict[str, Any]:
    """The same loop in this process without Ray (one JAX process; tests and benchmarks)."""
    import jax

    from ankh_platform.train.worker import Run

    if cfg.compile_cache:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(cfg.compile_cache))
    return Run(resolved(cfg), 0, 1, report=None).fit()

