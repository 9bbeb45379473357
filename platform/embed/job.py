"""Batch embedding of protein databases with Ray Data (``python -m jobs.embed``).

Pipeline: read (Parquet shards or FASTA[.gz], local or ``gs://``) -> pack (tasks: validate,
tokenize, sort by length within a group, fill fixed-shape model batches to a token budget) ->
embed (``map_batches`` on an actor pool; each replica loads the checkpoint from its path and
compiles every batch shape once, before the first batch) -> write part files (tasks) -> the
driver counts rows per input shard and, when a shard is complete, merges its parts into
``<output>/<shard>.parquet`` atomically (see ``embed_io``). Summary: ``<output>/_summary.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Literal

from ankh import storage
from ankh.batching import DEFAULT_BATCH_TOKENS
from ankh.storage import filesystem, join
from ankh_platform.core import progress, runtime
from ankh_platform.embed import hdf5 as embed_hdf5
from ankh_platform.embed import io as embed_io
from ankh_platform.embed.pack import EmbedPackSpec
from ankh_platform.embed.replica import EmbedReplica, pack_udf

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EmbedJobConfig:
    checkpoint: str = ""  # preset name (random weights; tests), HF Ankh dir, or our run dir
    input: str = ""  # file, directory, glob or comma list; Parquet (id, sequence) or FASTA[.gz]
    output: str = ""  # directory (local or gs://) for <shard>.parquet + _summary.json
    input_format: Literal["auto", "parquet", "fasta"] = "auto"
    per_residue: bool = False  # also write per-residue embeddings [length, d_model]
    out_dtype: Literal["float32", "float16"] = "float32"
    compute_dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 on GPU/TPU
    layer: int = 0  # encoder layer to read (1-based); 0 = final output
    batch_tokens: int = DEFAULT_BATCH_TOKENS  # token slots per model call
    min_row_tokens: int = 128  # shortest row of the doubling ladder
    # Row lengths per doubling: 1 (128, 256, 512, ...: least padding) or 2 (128, 192, 256, 384,
    # ...: proteins share shorter rows, so less attention across proteins, for more padding and
    # 7 compiles not 4; `python -m jobs.benchmark fasta row_steps_per_octave=2` measures it)
    row_steps_per_octave: int = 1
    max_segments: int = 64  # sequences packed in one row at most
    group_rows: int = 4096  # sequences sorted and packed together (bigger: less padding)
    max_length: int = 0  # residues per model call; 0 = the checkpoint's max_length
    long_policy: Literal["window", "truncate", "skip"] = "window"
    window_overlap: int = 128  # residues shared by consecutive windows (long_policy=window)
    strip_stop: bool = True  # drop one trailing '*' before validation
    replicas: int = 1  # model replicas (actor pool size)
    gpus_per_replica: float = -1  # -1: 1 if the cluster has GPUs, else 0
    cpus_per_replica: float = 1
    replica_niceness: int = 0  # CPU priority of the model replicas (Ray's workers default: 15)
    write_rows: int = 2048  # rows per part file (at most; per shard)
    block_bytes: int = 1 << 20  # Ray Data block size target: small, so batches stream one by one
    hdf5: str = ""  # also write one HDF5 file (local or gs://): dataset <id> = pooled [d_model]
    hdf5_per_residue: str = ""  # ... and/or one with dataset <id> = [length, d_model]


def _describe(checkpoint: str):
    """``(checkpoint to load, config, vocab)`` without loading weights (``ankh.resolve``).

    A pretraining run dir is pinned to its newest good step here, once: every replica then
    loads that same step even if training writes a newer one meanwhile.
    """
    from ankh.resolve import resolve  # loads JAX: not at import (``jobs.embed --help``)

    ref = resolve(checkpoint)
    # A hub id is pinned to its commit ("org/name@<hash>"): replicas load that revision, and
    # the shards' metadata and _summary.json record it.
    return ref.pinned, ref.config, ref.tokenizer.vocab


def pack_spec(cfg: EmbedJobConfig, mcfg) -> EmbedPackSpec:
    """How the job cuts and packs pieces for the model ``mcfg`` (an ``AnkhConfig``)."""
    return EmbedPackSpec(
        max_length=cfg.max_length or mcfg.max_length,
        batch_tokens=cfg.batch_tokens,
        min_row_tokens=cfg.min_row_tokens,
        steps_per_octave=cfg.row_steps_per_octave,
        max_segments=cfg.max_segments,
        long_policy=cfg.long_policy,
        window_overlap=cfg.window_overlap,
        strip_stop=cfg.strip_stop,
        prefix=mcfg.task_prefix("[NLU]"),
    )  # ankh3: [NLU] first


# ---- the job ---------------------------------------------------------------------------------
_FINGERPRINT = (
    "checkpoint",
    "per_residue",
    "out_dtype",
    "compute_dtype",
    "layer",
    "max_length",
    "long_policy",
    "window_overlap",
    "strip_stop",
)


def _check_output(cfg: EmbedJobConfig) -> None:
    """Refuse to mix results of different settings in one output directory."""
    want = {k: getattr(cfg, k) for k in _FINGERPRINT}
    fs, p = filesystem(join(cfg.output, "_job.json"))
    if fs.exists(p):
        with fs.open(p) as fh:
            have = json.load(fh)
        diff = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
        if diff:
            raise ValueError(
                f"{cfg.output} holds results of other settings {diff} "
                "(old, new); use another output directory"
            )
    else:
        fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
        with fs.open(p, "w") as fh:
            json.dump(want, fh)


def _runtime_env(niceness: int | None = None) -> dict | None:
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


def _read(pending: list[embed_io.InputShard], group_rows: int, cpus: float, skip: dict):
    """One streaming read task per input file (Parquet row batches or FASTA records), in order,
    so shards finish one after another rather than all at the end; ``skip``: stem -> row
    ranges finished parts of a killed run already hold."""
    import ray

    items = ray.data.from_items(
        [{"path": s.path, "fmt": s.fmt, "skip": json.dumps(skip.get(s.stem, []))} for s in pending],
        override_num_blocks=len(pending),
    )
    return items.map_batches(
        embed_io.read_batches,
        fn_kwargs={"chunk": group_rows},
        batch_size=1,
        num_cpus=cpus,
        runtime_env=_runtime_env(),
    )


def build_dataset(
    pending: list[embed_io.InputShard],
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
    ds = _read(pending, cfg.group_rows, 0.5, skip or {})
    ds = ds.map_batches(
        pack_udf,
        fn_kwargs={"spec": spec, "vocab": vocab},
        batch_size=cfg.group_rows,
        batch_format="numpy",
        num_cpus=0.5,
        runtime_env=_runtime_env(),
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
        runtime_env=_runtime_env(cfg.replica_niceness),
    )
    return ds.map_batches(
        embed_io.write_parts,
        fn_kwargs={"output": cfg.output},
        batch_size=cfg.write_rows,
        batch_format="numpy",
        num_cpus=0.25,
        runtime_env=_runtime_env(),
    )


def run(cfg: EmbedJobConfig) -> dict:
    """Embed every pending shard; returns (and writes) the summary."""
    from ankh_platform.core.runtime import init_ray

    for name in ("checkpoint", "input", "output"):
        if not getattr(cfg, name):
            raise ValueError(f"{name} is required")
    if cfg.hdf5 or cfg.hdf5_per_residue:
        embed_hdf5.require_h5py()  # fail now, not after the whole database is embedded
        if cfg.hdf5_per_residue and not cfg.per_residue:
            raise ValueError("hdf5_per_residue needs per_residue=true")
    t0, t0_wall = time.perf_counter(), time.time()
    shards = embed_io.discover(cfg.input, cfg.input_format)
    init_ray()
    pinned, mcfg, vocab = _describe(cfg.checkpoint)
    cfg = dataclasses.replace(cfg, checkpoint=pinned)
    if cfg.layer and not 1 <= cfg.layer <= mcfg.num_layers:
        raise ValueError(f"layer must be in 1..{mcfg.num_layers} (0 = final), got {cfg.layer}")
    spec = pack_spec(cfg, mcfg)
    _check_output(cfg)
    storage.remove_stale_temps(cfg.output)  # unfinished merges of a killed run
    ofs, _ = filesystem(cfg.output)
    done = [s for s in shards if ofs.exists(filesystem(join(cfg.output, f"{s.stem}.parquet"))[1])]
    pending = [s for s in shards if s not in done]
    counts = embed_io.count_all(pending)
    # rows finished parts of a killed run hold: kept, only the rest is embedded again
    resumed = {s.stem: embed_io.resume_rows(cfg.output, s, counts[s.stem]) for s in pending}
    margs = {
        "dim": mcfg.d_model,
        "width": spec.max_length,
        "overlap": spec.window_overlap,
        "out_dtype": cfg.out_dtype,
        "extra_meta": {"ankh.checkpoint": cfg.checkpoint},
    }
    t1 = time.perf_counter()
    reports, stats = _embed(pending, counts, resumed, cfg, spec, vocab, margs)
    embed_io.clear_parts(cfg.output)
    t_end = time.perf_counter()
    stats["setup_s"] = t1 - t0
    if stats["ready_at"]:  # steady state: from the first replica ready to the end
        stats["startup_s"] = min(stats["ready_at"]) - t0_wall
        stats["steady"] = stats["tokens"] / max(1e-9, t_end - t0 - stats["startup_s"])
        stats["tail_s"] = t0_wall + (t_end - t0) - stats["done_at"]  # last batch -> summary
    previous = [embed_io.shard_report(cfg.output, s.stem) for s in done]
    summary = _summary(
        cfg, shards, done, reports, previous, stats, t_end - t1, time.perf_counter() - t0
    )
    _write_json(join(cfg.output, "_summary.json"), summary)
    stems = [s.stem for s in shards]
    for path, per_res in ((cfg.hdf5, False), (cfg.hdf5_per_residue, True)):
        if path:  # a post-step over the finished shards: identical on a first run or a resume
            summary[f"hdf5{'_per_residue' if per_res else ''}_file"] = embed_hdf5.export_hdf5(
                cfg.output, path, stems, per_residue=per_res
            )
    return summary


def _embed(
    pending: list[embed_io.InputShard],
    counts: dict,
    resumed: dict,
    cfg: EmbedJobConfig,
    spec: EmbedPackSpec,
    vocab: dict,
    margs: dict,
) -> tuple[list[dict], dict]:
    """Run the pipeline over the rows not done yet; merge each shard as soon as it is complete."""
    import ray

    merge = ray.remote(num_cpus=0, max_retries=2)(embed_io.merge_shard).options(
        runtime_env=_runtime_env()
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
        skip = {s.stem: embed_io.to_ranges(resumed[s.stem]) for s in todo}
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


def _summary(cfg, shards, done, reports, previous, stats, pipeline_s, wall_s) -> dict:
    seqs = sum(r["sequences"] for r in reports)
    invalid = [dict(shard=r["shard"], **x) for r in reports + previous for x in r["invalid"]]
    notes = [dict(shard=r["shard"], **x) for r in reports + previous for x in r["notes"]]
    return {
        "checkpoint": cfg.checkpoint,
        "input": cfg.input,
        "output": cfg.output,
        "shards": {"total": len(shards), "written": len(reports), "skipped_done": len(done)},
        "sequences": seqs,
        "residues": sum(r["residues"] for r in reports),
        "sequences_all_shards": seqs + sum(r["sequences"] for r in previous),
        # input rows whose outcome this run computed, and rows a killed run's parts held
        "rows_this_run": stats["rows_this_run"],
        "rows_resumed": stats["rows_resumed"],
        "tokens": stats["tokens"],
        "pipeline_s": round(pipeline_s, 3),
        "wall_s": round(wall_s, 3),
        "tokens_per_s": round(stats["tokens"] / pipeline_s, 1) if pipeline_s > 0 else 0.0,
        "wall_tokens_per_s": round(stats["tokens"] / wall_s, 1) if wall_s > 0 else 0.0,
        "steady_tokens_per_s": round(stats.get("steady", 0.0), 1),
        "padding_waste": round(1 - stats["tokens"] / stats["slots"], 4) if stats["slots"] else 0.0,
        # where the time went: driver set-up (list/count shards), until the first embedded batch
        # was back (replica start: load + compile), time inside the compiled model (all replicas)
        "timing": {
            "setup_s": round(stats["setup_s"], 3),
            "startup_s": round(stats.get("startup_s", 0.0), 3),
            "replica_init_s": stats["init_s"],
            "model_s": round(stats["model_s"], 3),
            "replica_call_s": round(stats["call_s"], 3),
            "tail_s": round(stats.get("tail_s", 0.0), 3),
            "merge_wait_s": round(stats["merge_wait_s"], 3),
            "model_busy": round(stats["model_s"] / (pipeline_s * cfg.replicas), 4)
            if pipeline_s > 0
            else 0.0,
            "shapes": stats["shapes"],
            "compiled_per_replica": stats["compiled"],
        },
        "invalid_count": len(invalid),
        "invalid": invalid,
        "long_policy": cfg.long_policy,
        "long_sequences": notes,
    }


def _write_json(path: str, obj: dict) -> None:
    storage.atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=1)))
