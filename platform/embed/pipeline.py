"""The batch-embedding job's Ray Data pipeline and its driver loop.

read (one streaming task per input file) -> pack (tasks) -> embed (an actor pool of model
replicas) -> write parts (tasks); the driver counts the rows the part counters report per input
shard and starts that shard's merge (``ankh_platform.embed.outputs.merge_shard``) as soon as it
is complete.
"""

from __future__ import annotations

import json
import time

from ankh import storage
from ankh_platform.core import progress, runtime
from ankh_platform.embed import inputs, outputs
from ankh_platform.embed.config import EmbedJobConfig
from ankh_platform.embed.pack import EmbedPackSpec
from ankh_platform.embed.replica import EmbedReplica, pack_udf


def runtime_env(niceness: int | None = None) -> dict | None:
    """The driver's storage endpoint settings follow the job into every worker it starts.

    ``niceness``: the model replicas' CPU priority. Ray starts every worker process at niceness
    15 (below the driver and Ray's own daemons); a replica asks for ``replica_niceness``
    (default 0, normal) through Ray's ``RAY_worker_niceness``, so on shared cores the model
    wins over the light read/pack/write tasks instead of the other way round.
    """
    env = storage.storage_env()
    if niceness is not None:
        env["RAY_worker_niceness"] = str(niceness)
    return {"env_vars": env} if env else None


def read_stage(pending: list[inputs.InputShard], group_rows: int, cpus: float, skip: dict):
    """One streaming read task per input file (Parquet row batches or FASTA records), in order,
    so shards finish one after another rather than all at the end; ``skip``: stem -> row
    ranges finished parts of a killed run already hold."""
    import ray

    items = ray.data.from_items(
        [{"path": s.path, "fmt": s.fmt, "skip": json.dumps(skip.get(s.stem, []))} for s in pending],
        override_num_blocks=len(pending),
    )
    return items.map_batches(
        inputs.read_batches,
        fn_kwargs={"chunk": group_rows},
        batch_size=1,
        num_cpus=cpus,
        runtime_env=runtime_env(),
    )


def build_dataset(
    pending: list[inputs.InputShard],
    cfg: EmbedJobConfig,
    spec: EmbedPackSpec,
    vocab: dict,
    gpus: float,
    skip: dict | None = None,
):
    """read -> pack (tasks) -> embed (actor pool) -> write parts (tasks); rows = part counters."""
    import ray

    # Light tasks (fractional CPUs, so not fused into the replicas: packing never sits on the
    # accelerator's critical path; Ray's default worker priority, below the replicas').
    ds = read_stage(pending, cfg.group_rows, 0.5, skip or {})
    ds = ds.map_batches(
        pack_udf,
        fn_kwargs={"spec": spec, "vocab": vocab},
        batch_size=cfg.group_rows,
        batch_format="numpy",
        num_cpus=0.5,
        runtime_env=runtime_env(),
    )
    ds = ds.map_batches(
        EmbedReplica,
        batch_size=1,
        batch_format="numpy",
        fn_constructor_kwargs={
            "checkpoint": cfg.checkpoint,
            "spec": spec,
            "per_residue": cfg.per_residue,
            "layer": cfg.layer,
            "compute_dtype": cfg.compute_dtype,
        },
        compute=ray.data.ActorPoolStrategy(size=cfg.replicas),
        num_gpus=gpus,
        num_cpus=cfg.cpus_per_replica,
        runtime_env=runtime_env(cfg.replica_niceness),
    )
    return ds.map_batches(
        outputs.write_parts,
        fn_kwargs={"output": cfg.output},
        batch_size=cfg.write_rows,
        batch_format="numpy",
        num_cpus=0.25,
        runtime_env=runtime_env(),
    )


def embed_pending(
    pending: list[inputs.InputShard],
    counts: dict,
    resumed: dict,
    cfg: EmbedJobConfig,
    spec: EmbedPackSpec,
    vocab: dict,
    margs: dict,
) -> tuple[list[dict], dict]:
    """Run the pipeline over the rows not done yet; merge each shard as soon as it is complete."""
    import ray

    merge = ray.remote(num_cpus=0, max_retries=2)(outputs.merge_shard).options(
        runtime_env=runtime_env()
    )
    left = {s.stem: counts[s.stem] - len(resumed[s.stem]) for s in pending}
    merges = {
        s.stem: merge.remote(cfg.output, s.stem, counts[s.stem], s.path, **margs)
        for s in pending
        if left[s.stem] == 0
    }
    stats = {
        "tokens": 0,
        "slots": 0,
        "model_s": 0.0,
        "call_s": 0.0,
        "init_s": [],
        "ready_at": [],
        "done_at": 0.0,
        "compiled": 0,
        "rows_resumed": sum(len(r) for r in resumed.values()),
        "rows_this_run": 0,
    }
    todo = [s for s in pending if left[s.stem] > 0]
    if todo:
        gpus = (
            cfg.gpus_per_replica
            if cfg.gpus_per_replica >= 0
            else float(ray.cluster_resources().get("GPU", 0) > 0)
        )
        track = {s.stem: [0, 0, 0] for s in todo}  # first pieces, expected pieces, pieces
        path_of = {s.stem: s.path for s in todo}
        ctx = ray.data.DataContext.get_current()
        ctx.target_max_block_size = cfg.block_bytes  # default 128 MiB holds a whole shard back
        # One bar of rows embedded out of all pending (rate, ETA) instead of Ray Data's
        # per-operator bars, which -v brings back.
        ctx.enable_progress_bars = runtime.verbose()
        bar = progress.Progress("embed", total=sum(left[s.stem] for s in todo), unit="rows")
        skip = {s.stem: inputs.to_ranges(resumed[s.stem]) for s in todo}
        for b in build_dataset(todo, cfg, spec, vocab, gpus, skip).iter_batches(
            batch_size=None, batch_format="numpy"
        ):
            for i, stem in enumerate(b["shard"].tolist()):
                t = track[stem]
                t[0] += int(b["n_first"][i])
                t[1] += int(b["n_expected"][i])
                t[2] += int(b["n_pieces"][i])
                _account(stats, b, i)
                if t[0] >= left[stem] and t[1] == t[2] and stem not in merges:
                    merges[stem] = merge.remote(
                        cfg.output, stem, counts[stem], path_of[stem], **margs
                    )
            bar.update(int(b["n_first"].sum()))
        bar.close()
        stats["rows_this_run"] = sum(t[0] for t in track.values())
        lost = {s: (left[s], *track[s]) for s in track if s not in merges}
        if lost:
            raise RuntimeError(
                "shards not complete after the pipeline (rows left; rows, pieces "
                f"expected, pieces seen): {lost}"
            )
    stats["shapes"] = len(spec.shapes())
    t = time.perf_counter()
    reports = ray.get(list(merges.values()))
    stats["merge_wait_s"] = time.perf_counter() - t  # merges still running after the last batch
    return reports, stats


def _account(stats: dict, b: dict, i: int) -> None:
    """Add one counter row of ``write_parts`` to the run's statistics (where the time went)."""
    for k in ("tokens", "slots"):
        stats[k] += int(b[k][i])
    for k in ("model_s", "call_s"):
        stats[k] += float(b[k][i])
    stats["done_at"] = max(stats["done_at"], float(b["done_at"][i]))
    stats["compiled"] = max(stats["compiled"], int(b["compiled"][i]))
    if b["init_s"][i] > 0:  # a replica's first batch
        stats["init_s"].append(round(float(b["init_s"][i]), 2))
        stats["ready_at"].append(float(b["ready_at"][i]))
