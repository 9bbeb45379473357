"""Batch embedding of protein databases with Ray Data (``python -m jobs.embed``).

Pipeline: read (Parquet shards or FASTA[.gz], local or ``gs://``) -> pack (tasks: validate,
tokenize, sort by length within a group, fill fixed-shape model batches to a token budget) ->
embed (``map_batches`` on an actor pool; each replica loads the checkpoint from its path and
compiles every batch shape once, before the first batch) -> write part files (tasks) -> the
driver counts rows per input shard and, when a shard is complete, merges its parts into
``<output>/<shard>.parquet`` atomically. Summary: ``<output>/_summary.json``.

Modules: ``config`` (the settings), ``inputs`` (shards, rows), ``pack`` + ``replica`` (model
batches), ``pipeline`` (the Ray Data pipeline), ``outputs`` (parts, the exactly-once merge),
``hdf5`` (the optional HDF5 export); this one sets up, runs and summarizes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

from ankh import storage
from ankh.storage import join
from ankh_platform.embed import hdf5 as embed_hdf5
from ankh_platform.embed import inputs, outputs
from ankh_platform.embed.config import EmbedJobConfig
from ankh_platform.embed.pack import EmbedPackSpec
from ankh_platform.embed.pipeline import embed_pending

log = logging.getLogger(__name__)


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
    outputs.check_settings(cfg.output, {k: getattr(cfg, k) for k in _FINGERPRINT})


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
    shards = inputs.discover(cfg.input, cfg.input_format)
    init_ray()
    pinned, mcfg, vocab = _describe(cfg.checkpoint)
    cfg = dataclasses.replace(cfg, checkpoint=pinned)
    if cfg.layer and not 1 <= cfg.layer <= mcfg.num_layers:
        raise ValueError(f"layer must be in 1..{mcfg.num_layers} (0 = final), got {cfg.layer}")
    spec = pack_spec(cfg, mcfg)
    _check_output(cfg)
    pending, counts, resumed = outputs.pending_shards(cfg.output, shards)
    done = [s for s in shards if s not in pending]  # merged by an earlier run
    margs = {
        "dim": mcfg.d_model,
        "width": spec.max_length,
        "overlap": spec.window_overlap,
        "out_dtype": cfg.out_dtype,
        "extra_meta": {"ankh.checkpoint": cfg.checkpoint},
    }
    t1 = time.perf_counter()
    reports, stats = embed_pending(pending, counts, resumed, cfg, spec, vocab, margs)
    outputs.clear_parts(cfg.output)
    t_end = time.perf_counter()
    stats["setup_s"] = t1 - t0
    if stats["ready_at"]:  # steady state: from the first replica ready to the end
        stats["startup_s"] = min(stats["ready_at"]) - t0_wall
        stats["steady"] = stats["tokens"] / max(1e-9, t_end - t0 - stats["startup_s"])
        stats["tail_s"] = t0_wall + (t_end - t0) - stats["done_at"]  # last batch -> summary
    previous = [outputs.shard_report(cfg.output, s.stem) for s in done]
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
