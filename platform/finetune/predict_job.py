"""Batch prediction with a fine-tuned run (``python -m jobs.predict``), a Ray Data job like
``jobs.embed`` and built from its pieces.

read (``embed.inputs``: FASTA[.gz] / Parquet shards, one streaming task per file, groups of
``group_rows`` rows) -> predict (``map_batches`` on a pool of ``replicas`` predictor actors,
each loading the run once; a group is predicted sorted by length in padded batches of
``batch_size`` rows, ``loop.predict``) -> write part files (tasks) -> the driver counts the
rows per input shard and, when a shard is complete, merges its parts into
``<output>/<shard>.parquet`` whole or not at all (``predict_parts``). Every input record is
one row there or one rejected entry (id, row, reason) in the shard's footer and
``_summary.json``. A rerun skips the shards already written and, within the others, the rows a
killed run's finished parts hold.

Without a cluster and with one replica (``runner=auto``) the same stages run here, in this
process, one group after another: no Ray to start for a small file.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Literal

from ankh import storage
from ankh.storage import join
from ankh_platform.core import progress
from ankh_platform.embed import inputs, outputs
from ankh_platform.finetune.predict_parts import PredictReplica, merge_shard, write_parts

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PredictJobConfig:
    run: str = ""  # a jobs.finetune output directory (local or gs://)
    input: str = ""  # file, directory, glob or comma list; Parquet (id, sequence) or FASTA[.gz]
    output: str = "outputs/predict"  # <shard>.parquet per input + _summary.json
    input_format: Literal["auto", "parquet", "fasta"] = "auto"
    batch_size: int = 8  # sequences per model call (padded to a length rung)
    group_rows: int = 1024  # rows read, sorted by length and predicted together
    # auto: Ray Data when a cluster is named (RAY_ADDRESS), replicas > 1 or GPUs are asked
    # for; else the same stages in this process
    runner: Literal["auto", "ray", "local"] = "auto"
    replicas: int = 1  # predictor actors (each loads the run once)
    gpus_per_replica: float = -1  # -1: 1 if the cluster has GPUs, else 0
    cpus_per_replica: float = 1
    replica_niceness: int = 0  # as jobs.embed: replicas above Ray's light tasks (15)
    write_rows: int = 2048  # rows per part file (at most; per shard)
    block_bytes: int = 1 << 20  # Ray Data block size target: small, so groups stream

    def __post_init__(self) -> None:
        if self.runner not in ("auto", "ray", "local"):
            raise ValueError(f"runner must be auto, ray or local, got {self.runner!r}")
        if min(self.batch_size, self.group_rows, self.replicas, self.write_rows) < 1:
            raise ValueError("batch_size, group_rows, replicas and write_rows must be >= 1")


def use_ray(cfg: PredictJobConfig) -> bool:
    """The one place the job decides between Ray Data and this process."""
    if cfg.runner != "auto":
        return cfg.runner == "ray"
    return bool(os.environ.get("RAY_ADDRESS")) or cfg.replicas > 1 or cfg.gpus_per_replica > 0


def _run_facts(run: str) -> dict:
    with storage.open_file(f"{run.rstrip('/')}/run.json", "r") as fh:
        info = json.load(fh)
    return {"run": run, "task": info["task"]["name"], "mode": info["mode"], "model": info["model"]}


def run(cfg: PredictJobConfig) -> dict:
    """Predict every pending shard; returns (and writes) ``<output>/_summary.json``."""
    for name in ("run", "input", "output"):
        if not getattr(cfg, name):
            raise ValueError(f"{name} is required")
    t0 = time.perf_counter()
    facts = _run_facts(cfg.run)  # an unreadable run fails here, before any work
    shards = inputs.discover(cfg.input, cfg.input_format)
    outputs.check_settings(cfg.output, facts)
    pending, counts, resumed = outputs.pending_shards(cfg.output, shards)
    done = [s for s in shards if s not in pending]  # merged by an earlier run
    left = {s.stem: counts[s.stem] - len(resumed[s.stem]) for s in pending}
    bar = progress.Progress("predict", total=sum(left.values()), unit="rows")
    stats = {"rows_this_run": 0, "model_s": 0.0, "init_s": []}
    on_ray = use_ray(cfg)
    if on_ray:
        reports = _on_ray(cfg, pending, counts, resumed, left, bar, stats)
    else:
        reports = _here(cfg, pending, counts, resumed, left, bar, stats)
    bar.close()
    outputs.clear_parts(cfg.output)
    previous = [outputs.shard_report(cfg.output, s.stem) for s in done]
    rejected = [dict(shard=r["shard"], **x) for r in reports + previous for x in r["invalid"]]
    summary = {
        **facts,
        "input": cfg.input,
        "output": cfg.output,
        "ray": on_ray,
        "replicas": cfg.replicas if on_ray else 1,
        "shards": {
            r["shard"]: {"rows": r["sequences"], "rejected": len(r["invalid"])}
            for r in previous + reports
        },
        "shards_written": len(reports),
        "shards_skipped_done": len(done),
        "predicted": sum(r["sequences"] for r in reports + previous),
        "rejected_count": len(rejected),
        "rows_this_run": stats["rows_this_run"],
        "rows_resumed": sum(len(r) for r in resumed.values()),
        "wall_s": round(time.perf_counter() - t0, 3),
        "timing": {"replica_init_s": stats["init_s"], "model_s": round(stats["model_s"], 3)},
        "rejected": rejected,
    }
    path = join(cfg.output, "_summary.json")
    storage.atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(summary, indent=1)))
    return summary


def _account(stats: dict, counters: dict, bar: progress.Progress) -> dict[str, int]:
    """Add ``write_parts``' counters to the run's figures; rows written per shard."""
    got: dict[str, int] = {}
    for i, stem in enumerate(counters["shard"].tolist()):
        got[stem] = got.get(stem, 0) + int(counters["rows"][i])
        stats["model_s"] += float(counters["model_s"][i])
        if counters["init_s"][i] > 0:  # a replica's first group
            stats["init_s"].append(round(float(counters["init_s"][i]), 2))
    n = sum(got.values())
    stats["rows_this_run"] += n
    bar.update(n)
    return got


def _here(cfg, pending, counts, resumed, left, bar, stats) -> list[dict]:
    """The pipeline's stages in this process: read, predict and write a group at a time."""
    replica, reports = None, []
    for s in pending:
        if left[s.stem]:
            replica = replica or PredictReplica(cfg.run, cfg.batch_size)
            skip = json.dumps(inputs.to_ranges(resumed[s.stem]))
            src = {"path": [s.path], "fmt": [s.fmt], "skip": [skip]}
            for b in inputs.read_batches(src, chunk=cfg.group_rows):
                _account(stats, write_parts(replica(b), cfg.output), bar)
        reports.append(merge_shard(cfg.output, s.stem, counts[s.stem], s.path, cfg.run))
    return reports


def _on_ray(cfg, pending, counts, resumed, left, bar, stats) -> list[dict]:
    """Ray Data: read (tasks) -> predict (actor pool) -> write parts (tasks); each shard merged
    by a task as soon as its rows are all written."""
    import ray

    from ankh_platform.core import runtime
    from ankh_platform.embed.pipeline import read_stage, runtime_env

    runtime.init_ray()
    merge = ray.remote(num_cpus=0, max_retries=2)(merge_shard).options(runtime_env=runtime_env())
    path_of = {s.stem: s.path for s in pending}
    merges = {
        st: merge.remote(cfg.output, st, counts[st], path_of[st], cfg.run)
        for st in path_of
        if left[st] == 0
    }
    todo = [s for s in pending if left[s.stem] > 0]
    if todo:
        ctx = ray.data.DataContext.get_current()
        ctx.target_max_block_size = cfg.block_bytes
        ctx.enable_progress_bars = runtime.verbose()  # our one bar of rows, as jobs.embed
        gpus = cfg.gpus_per_replica
        if gpus < 0:
            gpus = float(ray.cluster_resources().get("GPU", 0) > 0)
        skip = {s.stem: inputs.to_ranges(resumed[s.stem]) for s in todo}
        ds = read_stage(todo, cfg.group_rows, 0.5, skip).map_batches(
            PredictReplica,
            batch_size=cfg.group_rows,
            batch_format="numpy",
            fn_constructor_kwargs={"run": cfg.run, "batch_size": cfg.batch_size},
            compute=ray.data.ActorPoolStrategy(size=cfg.replicas),
            num_gpus=gpus,
            num_cpus=cfg.cpus_per_replica,
            runtime_env=runtime_env(cfg.replica_niceness),
        )
        ds = ds.map_batches(
            write_parts,
            fn_kwargs={"output": cfg.output},
            batch_size=cfg.write_rows,
            batch_format="numpy",
            num_cpus=0.25,
            runtime_env=runtime_env(),
        )
        seen = {s.stem: 0 for s in todo}
        for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for st, n in _account(stats, b, bar).items():
                seen[st] += n
                if seen[st] >= left[st] and st not in merges:
                    merges[st] = merge.remote(cfg.output, st, counts[st], path_of[st], cfg.run)
        lost = {st: (left[st], seen[st]) for st in seen if st not in merges}
        if lost:
            raise RuntimeError(f"shards not complete after the pipeline (rows left, seen): {lost}")
    return ray.get([merges[s.stem] for s in pending])
