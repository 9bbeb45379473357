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
import os
import time
import uuid
from functools import partial
from typing import Literal

import numpy as np

from ankh_platform import embed_io
from ankh_platform.embed_pack import P_SEQ, PackSpec, layout, pack, prepare
from ankh_platform.storage import filesystem, join

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EmbedJobConfig:
    checkpoint: str = ""  # preset name (random weights; tests), HF Ankh dir, or our run dir
    input: str = ""  # file, directory, glob or comma list; Parquet (id, sequence) or FASTA[.gz]
    output: str = ""  # directory (local or gs://) for <shard>.parquet + _summary.json
    input_format: Literal["auto", "parquet", "fasta"] = "auto"
    per_residue: bool = False  # also write per-residue embeddings [length, d_model]
    out_dtype: Literal["float32", "float16"] = "float32"
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    layer: int = 0  # encoder layer to read (1-based); 0 = final output
    batch_tokens: int = 8192  # token slots per model call
    min_row_tokens: int = 128  # shortest row of the doubling ladder
    max_segments: int = 64  # sequences packed in one row at most
    group_rows: int = 4096  # sequences sorted and packed together (bigger: less padding)
    max_length: int = 0  # residues per model call; 0 = the checkpoint's max_length
    long_policy: Literal["window", "truncate", "skip"] = "window"
    window_overlap: int = 128  # residues shared by consecutive windows (long_policy=window)
    strip_stop: bool = True  # drop one trailing '*' before validation
    replicas: int = 1  # model replicas (actor pool size)
    gpus_per_replica: float = -1  # -1: 1 if the cluster has GPUs, else 0
    cpus_per_replica: float = 1
    write_rows: int = 2048  # rows per part file (at most; per shard)
    block_bytes: int = 1 << 20  # Ray Data block size target: small, so batches stream one by one


def _describe(checkpoint: str):
    """``(checkpoint to load, config, vocab)`` without loading weights.

    A pretraining run dir is pinned to its newest good step here, once: every replica then
    loads that same step even if training writes a newer one meanwhile.
    """
    from ankh import checkpoint as ckpt
    from ankh.config import PRESETS, AnkhConfig
    from ankh.tokenizer import AnkhTokenizer

    if checkpoint in PRESETS:
        cfg = PRESETS[checkpoint]
        return checkpoint, cfg, AnkhTokenizer(vocab_size=cfg.vocab_size).vocab
    fs, p = filesystem(checkpoint)
    if fs.exists(f"{p}/config.json"):
        with fs.open(f"{p}/config.json") as fh:
            cfg = AnkhConfig.from_hf_dict(json.load(fh))
        vocab = AnkhTokenizer(vocab_size=cfg.vocab_size).vocab
        if fs.exists(f"{p}/tokenizer.json") and fs.protocol in ("file", ("file", "local")):
            vocab = AnkhTokenizer.from_file(f"{p}/tokenizer.json").vocab
        return checkpoint, cfg, vocab
    if ckpt.is_checkpoint(checkpoint):
        step_dir, skipped = ckpt.newest_good(checkpoint)
        for why in skipped:
            log.warning("skipping bad checkpoint: %s", why)
        cfg = AnkhConfig.from_hf_dict(ckpt.read_meta(step_dir)["model"])
        if checkpoint.startswith(("gs://", "gcs://")) and "://" not in step_dir:
            step_dir = checkpoint.split("://", 1)[0] + "://" + step_dir
        return step_dir, cfg, AnkhTokenizer(vocab_size=cfg.vocab_size).vocab
    raise FileNotFoundError(f"{checkpoint}: not a preset, an HF Ankh directory (config.json) "
                            "or an Ankh checkpoint")


def pack_udf(batch: dict, spec: PackSpec, vocab: dict) -> dict:
    """Ray Data UDF: a group of input rows -> model batches (one row each) of fixed shapes."""
    from ankh.tokenizer import AnkhTokenizer

    tok = AnkhTokenizer(vocab)
    shards = [embed_io.shard_stem(p) for p in batch["path"]]
    prep = prepare(batch["id"].tolist(), batch["sequence"].tolist(), shards, tok, spec)
    out = {"ids": [], "pieces": [], "meta": []}
    notes = {(sh, i): why for sh, i, why in prep.notes}
    seqs = [[k[0], k[1], n, w, notes.get(k, "")]
            for k, n, w in zip(prep.seq_key, prep.seq_len, prep.seq_nwin)]
    errors = prep.errors  # ride on the group's first model batch
    for b in pack(prep, spec):
        used = sorted(set(b["pieces"][:, P_SEQ].tolist()))
        remap = {s: i for i, s in enumerate(used)}
        b["pieces"][:, P_SEQ] = [remap[s] for s in b["pieces"][:, P_SEQ].tolist()]
        out["ids"].append(b["ids"])
        out["pieces"].append(b["pieces"])
        out["meta"].append(json.dumps({"seqs": [seqs[s] for s in used], "errors": errors}))
        errors = []
    if errors:  # nothing to embed in this group, but problems to report
        out["ids"].append(np.zeros((0, 0), np.int32))
        out["pieces"].append(np.zeros((0, 6), np.int32))
        out["meta"].append(json.dumps({"seqs": [], "errors": errors}))
    return {"ids": _objects(out["ids"]), "pieces": _objects(out["pieces"]),
            "meta": np.asarray(out["meta"], object)}


def _objects(arrs: list) -> np.ndarray:
    out = np.empty(len(arrs), object)
    out[:] = arrs
    return out


def encode_packed(graphdef, params, ids, seg, pos, wt, *, num_layers, max_segments, per_residue):
    """Weighted per-segment sums ``[B, S, e]`` (and hidden ``[B, L, e]``) of a packed batch."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    model = nnx.merge(graphdef, params)
    hidden = model.encode(ids, seg, pos, num_layers=num_layers).astype(jnp.float32)  # [b, l, e]
    onehot = seg[:, :, None] == jnp.arange(1, max_segments + 1, dtype=seg.dtype)  # [b, l, s]
    w = onehot.astype(jnp.float32) * wt[:, :, None]  # [b, l, s]
    pooled = jnp.einsum("bls,ble->bse", w, hidden, precision=jax.lax.Precision.HIGHEST)
    return (pooled, hidden) if per_residue else (pooled, None)


class Embedder:
    """One model replica (a Ray actor): loads the checkpoint by path, compiles every shape once."""

    def __init__(self, checkpoint: str, spec: PackSpec, per_residue: bool, layer: int,
                 compute_dtype: str):
        import jax

        import ankh

        t0 = time.perf_counter()
        self.model = ankh.load(checkpoint, dtype=compute_dtype)  # from the path: nothing pickled
        self.spec, self.per_residue = spec, per_residue
        num_layers = None if layer in (0, self.model.config.num_layers) else layer
        self.fn = jax.jit(partial(encode_packed, self.model.graphdef, num_layers=num_layers,
                                  max_segments=spec.max_segments, per_residue=per_residue))
        for rows, length in spec.shapes():
            z = np.zeros((rows, length), np.int32)
            jax.block_until_ready(self.fn(self.model.params, z, z, z, z.astype(np.float32)))
        log.info("replica ready in %.1fs (shapes %s)", time.perf_counter() - t0, spec.shapes())

    def __call__(self, batch: dict) -> dict:
        rows = [self._one(batch["ids"][i], batch["pieces"][i], json.loads(batch["meta"][i]))
                for i in range(len(batch["meta"]))]
        return {k: np.concatenate([r[k] for r in rows]) if k != "residues" else
                _objects([x for r in rows for x in r[k]]) for k in rows[0]}

    def _one(self, ids: np.ndarray, pieces: np.ndarray, meta: dict) -> dict:
        ids, pieces = np.asarray(ids, np.int32), np.asarray(pieces, np.int32).reshape(-1, 6)
        seqs, d = meta["seqs"], self.model.config.d_model
        n = len(pieces)
        out = {"shard": [], "id": [], "length": [], "win_start": [], "n_win": [], "error": [],
               "note": [], "tokens": [], "slots": []}
        pooled = np.zeros((n, d), np.float32)
        residues: list[np.ndarray] = []
        if n:
            lens = np.asarray([s[2] for s in seqs])
            nwin = np.asarray([s[3] for s in seqs])
            seg, pos, wt = layout(ids, pieces, lens, nwin, self.spec.max_length,
                                  self.spec.window_overlap)
            p, h = self.fn(self.model.params, ids, seg, pos, wt)
            p = np.asarray(p)  # [B, S, e]
            h = np.asarray(h) if self.per_residue else None  # [B, L, e]
            for k, (row, start, ntok, s, win, sid) in enumerate(pieces.tolist()):
                pooled[k] = p[row, sid - 1]
                shard, ident, length, nw, note = seqs[s]
                out["shard"].append(shard), out["id"].append(ident), out["length"].append(length)
                out["win_start"].append(win), out["n_win"].append(nw), out["error"].append("")
                out["note"].append(note if win == 0 else "")
                out["tokens"].append(ntok), out["slots"].append(ids.size if k == 0 else 0)
                if h is not None:
                    residues.append(h[row, start: start + ntok - 1])
        for shard, ident, why in meta["errors"]:
            out["shard"].append(shard), out["id"].append(ident), out["length"].append(0)
            out["win_start"].append(0), out["n_win"].append(1), out["error"].append(why)
            out["note"].append(""), out["tokens"].append(0), out["slots"].append(0)
            residues.append(np.zeros((0, d), np.float32))
        pooled = np.concatenate([pooled, np.zeros((len(meta["errors"]), d), np.float32)])
        res = {k: np.asarray(v, object if k in ("shard", "id", "error", "note") else np.int64)
               for k, v in out.items()}
        res["pooled"] = pooled
        if self.per_residue:
            res["residues"] = residues
        return res


# ---- the job ---------------------------------------------------------------------------------
_FINGERPRINT = ("checkpoint", "per_residue", "out_dtype", "compute_dtype", "layer", "max_length",
                "long_policy", "window_overlap", "strip_stop")


def _check_output(cfg: EmbedJobConfig) -> None:
    """Refuse to mix results of different settings in one output directory."""
    want = {k: getattr(cfg, k) for k in _FINGERPRINT}
    fs, p = filesystem(join(cfg.output, "_job.json"))
    if fs.exists(p):
        with fs.open(p) as fh:
            have = json.load(fh)
        diff = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
        if diff:
            raise ValueError(f"{cfg.output} holds results of other settings {diff} "
                             "(old, new); use another output directory")
    else:
        fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
        with fs.open(p, "w") as fh:
            json.dump(want, fh)


_STORAGE_ENV = ("STORAGE_EMULATOR_HOST", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT")


def _runtime_env() -> dict | None:
    """The driver's storage endpoint settings follow the job into every worker it starts."""
    env = {k: os.environ[k] for k in _STORAGE_ENV if k in os.environ}
    return {"env_vars": env} if env else None


def _read(pending: list[embed_io.Shard], group_rows: int, cpus: float):
    """One streaming read task per input file (Parquet row batches or FASTA records), in order,
    so shards finish one after another rather than all at the end."""
    import ray

    items = ray.data.from_items([{"path": s.path, "fmt": s.fmt} for s in pending],
                                override_num_blocks=len(pending))
    return items.map_batches(embed_io.read_batches, fn_kwargs={"chunk": group_rows},
                             batch_size=1, num_cpus=cpus, runtime_env=_runtime_env())


def build_dataset(pending: list[embed_io.Shard], cfg: EmbedJobConfig, spec: PackSpec,
                  vocab: dict, gpus: float, run_id: str):
    """read -> pack (tasks) -> embed (actor pool) -> write parts (tasks); rows = part counters."""
    import ray

    # Light tasks (fractional CPUs, so not fused into the replicas: packing never sits on the
    # accelerator's critical path).
    ds = _read(pending, cfg.group_rows, 0.5)
    ds = ds.map_batches(pack_udf, fn_kwargs={"spec": spec, "vocab": vocab},
                        batch_size=cfg.group_rows, batch_format="numpy", num_cpus=0.5,
                        runtime_env=_runtime_env())
    ds = ds.map_batches(
        Embedder, batch_size=1, batch_format="numpy",
        fn_constructor_kwargs={"checkpoint": cfg.checkpoint, "spec": spec,
                               "per_residue": cfg.per_residue, "layer": cfg.layer,
                               "compute_dtype": cfg.compute_dtype},
        compute=ray.data.ActorPoolStrategy(size=cfg.replicas),
        num_gpus=gpus, num_cpus=cfg.cpus_per_replica, runtime_env=_runtime_env())
    return ds.map_batches(embed_io.write_parts, fn_kwargs={"output": cfg.output, "run_id": run_id},
                          batch_size=cfg.write_rows, batch_format="numpy", num_cpus=0.25,
                          runtime_env=_runtime_env())


def run(cfg: EmbedJobConfig) -> dict:
    """Embed every pending shard; returns (and writes) the summary."""
    import ray

    from ankh_platform.runtime import init_ray

    for name in ("checkpoint", "input", "output"):
        if not getattr(cfg, name):
            raise ValueError(f"{name} is required")
    t0 = time.perf_counter()
    shards = embed_io.discover(cfg.input, cfg.input_format)
    init_ray()
    pinned, mcfg, vocab = _describe(cfg.checkpoint)
    cfg = dataclasses.replace(cfg, checkpoint=pinned)
    if cfg.layer and not 1 <= cfg.layer <= mcfg.num_layers:
        raise ValueError(f"layer must be in 1..{mcfg.num_layers} (0 = final), got {cfg.layer}")
    spec = PackSpec(max_length=cfg.max_length or mcfg.max_length, batch_tokens=cfg.batch_tokens,
                    min_row_tokens=cfg.min_row_tokens, max_segments=cfg.max_segments,
                    long_policy=cfg.long_policy, window_overlap=cfg.window_overlap,
                    strip_stop=cfg.strip_stop)
    _check_output(cfg)
    ofs, _ = filesystem(cfg.output)
    done = [s for s in shards if ofs.exists(filesystem(join(cfg.output, f"{s.stem}.parquet"))[1])]
    pending = [s for s in shards if s not in done]
    for s in pending:
        embed_io.clear_parts(cfg.output, s.stem)  # stale parts of a killed run
    counts = embed_io.count_all(pending)
    merge = ray.remote(num_cpus=0, max_retries=2)(embed_io.merge_shard).options(
        runtime_env=_runtime_env())
    margs = {"dim": mcfg.d_model, "width": spec.max_length, "overlap": spec.window_overlap,
             "out_dtype": cfg.out_dtype, "extra_meta": {"ankh.checkpoint": cfg.checkpoint}}
    run_id = uuid.uuid4().hex[:12]  # parts of this run only: a killed run's leftovers never mix in
    merges = {s.stem: merge.remote(cfg.output, s.stem, run_id, 0, s.path, **margs)
              for s in pending if counts[s.stem] == 0}
    stats = {"tokens": 0, "slots": 0, "first_t": None, "first_tokens": 0}
    t1 = time.perf_counter()
    todo = [s for s in pending if counts[s.stem] > 0]
    if todo:
        gpus = cfg.gpus_per_replica if cfg.gpus_per_replica >= 0 else \
            float(ray.cluster_resources().get("GPU", 0) > 0)
        track = {s.stem: [0, 0, 0] for s in todo}  # first pieces, expected pieces, pieces
        path_of = {s.stem: s.path for s in todo}
        ctx = ray.data.DataContext.get_current()
        ctx.target_max_block_size = cfg.block_bytes  # default 128 MiB holds a whole shard back
        for b in build_dataset(todo, cfg, spec, vocab, gpus, run_id).iter_batches(
                batch_size=None, batch_format="numpy"):
            for i, stem in enumerate(b["shard"].tolist()):
                t = track[stem]
                t[0] += int(b["n_first"][i])
                t[1] += int(b["n_expected"][i])
                t[2] += int(b["n_pieces"][i])
                stats["tokens"] += int(b["tokens"][i])
                stats["slots"] += int(b["slots"][i])
                if t[0] >= counts[stem] and t[1] == t[2] and stem not in merges:
                    merges[stem] = merge.remote(cfg.output, stem, run_id, counts[stem],
                                                path_of[stem], **margs)
            if stats["first_t"] is None:  # steady state starts once replicas deliver
                stats["first_t"], stats["first_tokens"] = time.perf_counter(), stats["tokens"]
        lost = {s: (counts[s], *track[s]) for s in track if s not in merges}
        if lost:
            raise RuntimeError("shards not complete after the pipeline (input rows; rows, pieces "
                               f"expected, pieces seen): {lost}")
    reports = ray.get(list(merges.values()))
    embed_io.clear_parts(cfg.output)
    t_end = time.perf_counter()
    pipeline_s = t_end - t1
    if stats["first_t"] is not None and t_end > stats["first_t"]:
        stats["steady"] = (stats["tokens"] - stats["first_tokens"]) / (t_end - stats["first_t"])
    previous = [embed_io.shard_report(cfg.output, s.stem) for s in done]
    summary = _summary(cfg, shards, done, reports, previous, stats, pipeline_s,
                       time.perf_counter() - t0)
    _write_json(join(cfg.output, "_summary.json"), summary)
    return summary


def _summary(cfg, shards, done, reports, previous, stats, pipeline_s, wall_s) -> dict:
    seqs = sum(r["sequences"] for r in reports)
    invalid = [dict(shard=r["shard"], **x) for r in reports + previous for x in r["invalid"]]
    notes = [dict(shard=r["shard"], **x) for r in reports + previous for x in r["notes"]]
    return {
        "checkpoint": cfg.checkpoint, "input": cfg.input, "output": cfg.output,
        "shards": {"total": len(shards), "written": len(reports), "skipped_done": len(done)},
        "sequences": seqs, "residues": sum(r["residues"] for r in reports),
        "sequences_all_shards": seqs + sum(r["sequences"] for r in previous),
        "tokens": stats["tokens"], "pipeline_s": round(pipeline_s, 3), "wall_s": round(wall_s, 3),
        "tokens_per_s": round(stats["tokens"] / pipeline_s, 1) if pipeline_s > 0 else 0.0,
        "steady_tokens_per_s": round(stats.get("steady", 0.0), 1),
        "padding_waste": round(1 - stats["tokens"] / stats["slots"], 4) if stats["slots"] else 0.0,
        "invalid_count": len(invalid), "invalid": invalid,
        "long_policy": cfg.long_policy, "long_sequences": notes,
    }


def _write_json(path: str, obj: dict) -> None:
    fs, p = filesystem(path)
    with fs.open(p, "w") as fh:
        json.dump(obj, fh, indent=1)
