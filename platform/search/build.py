"""Build or extend an index from a ``jobs.embed`` output (``python -m jobs.index``).

One pass samples vectors from every shard and trains the quantizers once (``trained.faiss``);
then each embedding shard becomes one part (its vectors encoded, its ids, metadata and full
vectors beside them), published whole -- serially, or as parallel Ray tasks (``workers``,
``parallel.py``) -- and the manifest is rewritten after every part, in label order. A
killed build resumes at the first part the manifest lacks; a later run over a directory with
new shards (or another embedding directory of the same model) adds only those. Every id is
checked to be new to the index before its part is written, and the finished index is checked
to hold every id of every part exactly once (``verify``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time

import numpy as np
import pyarrow as pa

from ankh import storage
from ankh.storage import join
from ankh_platform.core.progress import Progress
from ankh_platform.search import manifest as mf
from ankh_platform.search import parallel, parts
from ankh_platform.search.config import IndexConfig

log = logging.getLogger(__name__)


def choose_params(n: int, n_train: int, dim: int, cfg: IndexConfig) -> dict:
    """IVF-PQ parameters for ``n`` vectors (explicit settings win)."""
    # ~4 sqrt(n) lists, each trained on >= 39 sample points (faiss' own minimum per centroid)
    nlist = cfg.nlist or max(1, min(int(4 * math.sqrt(n)), n_train // 39))
    # 2 dimensions per 8-bit code: with 4 or 8 the codes mis-ordered the candidates of
    # near-isotropic vectors so much that no nprobe/refine reached recall@10 0.95
    # (docs/benchmarks.md#search); the codes stay small beside the full vectors held anyway
    m = cfg.pq_m or max(d for d in range(1, max(1, dim // 2) + 1) if dim % d == 0)
    if dim % m:
        raise ValueError(f"pq_m={m} must divide the dimension {dim}")
    # 8-bit codes need ~39 x 256 training points; a small sample gets fewer bits per code
    bits = cfg.pq_bits or int(min(8, max(4, math.floor(math.log2(max(2, n_train / 39))))))
    # a starting point only: calibrate() replaces both after the build
    nprobe = cfg.nprobe or min(nlist, max(16, nlist // 16))
    return {
        "kind": "IVF-PQ + exact re-rank",
        "nlist": nlist,
        "pq_m": m,
        "pq_bits": bits,
        "nprobe": nprobe,
        "refine": cfg.refine or 10,
        "train_size": n_train,
        "faiss": _faiss().__version__,
    }


def _faiss():
    import faiss  # a compiled library: imported when an index is built or opened

    return faiss


def _sample(shards: list[str], rows: dict[str, int], size: int, seed: int) -> np.ndarray:
    """Up to ``size`` vectors drawn uniformly from all shards (the same on every run)."""
    total = sum(rows.values())
    rng = np.random.default_rng(seed)
    picked = []
    for s in shards:
        take = rows[s] if total <= size else int(round(size * rows[s] / total))
        if take:
            x = parts.vectors(parts.read_table(s, ["embedding"]))
            picked.append(x[np.sort(rng.choice(len(x), min(take, len(x)), replace=False))])
    return np.concatenate(picked) if picked else np.zeros((0, 0), np.float32)


def train(
    cfg: IndexConfig, shards: list[str], rows: dict[str, int], source: dict, columns: list[str]
) -> dict:
    """Train the quantizers on a sample; write ``trained.faiss`` and a manifest with no parts."""
    faiss = _faiss()
    x = parts.normalize(_sample(shards, rows, cfg.train_size, cfg.seed), cfg.metric)
    params = choose_params(sum(rows.values()), len(x), source["dim"], cfg)
    quantizer = faiss.IndexFlatIP(source["dim"])
    index = faiss.IndexIVFPQ(
        quantizer,
        source["dim"],
        params["nlist"],
        params["pq_m"],
        params["pq_bits"],
        faiss.METRIC_INNER_PRODUCT,
    )
    index.cp.seed = index.pq.cp.seed = cfg.seed
    index.train(x)
    parts.write_bytes(join(cfg.output, parts.TRAINED), faiss.serialize_index(index).tobytes())
    m = {"format": mf.FORMAT, "source": source, "index": params, "count": 0, "parts": []}
    m["metadata_columns"] = columns
    mf.write(cfg.output, m)
    return m


def _check_params(cfg: IndexConfig, m: dict) -> None:
    """An existing index keeps its parameters: an explicit different one is refused."""
    for key in ("nlist", "pq_m", "pq_bits"):
        want = getattr(cfg, key)
        if want and want != m["index"][key]:
            raise ValueError(f"{key}={want}, but this index was built with {m['index'][key]}")


def load_metadata(cfg: IndexConfig) -> pa.Table | None:
    """The ``--metadata`` table (id + chosen columns), or None."""
    if not cfg.metadata:
        return None
    from ankh_platform.embed.inputs import discover

    tables = [parts.read_table(s.path) for s in discover(cfg.metadata, "parquet")]
    table = pa.concat_tables(tables, promote_options="default")
    if "id" not in table.column_names:
        raise ValueError(f"metadata {cfg.metadata} has no id column")
    wanted = [c.strip() for c in cfg.columns.split(",") if c.strip()]
    skip = {"id", "sequence", "embedding", "length", "per_residue"}
    cols = wanted or [c for c in table.column_names if c not in skip]
    missing = [c for c in cols if c not in table.column_names]
    if missing:
        raise ValueError(f"metadata columns {missing} are not in {cfg.metadata}")
    return table.select(["id", *cols])


def plan_parts(shards: list[str], m: dict, seen: dict, pos: dict | None) -> list[dict]:
    """Each pending shard's part: name and labels (in shard order, after the index's
    ``count``), and the rows of ``--metadata`` its ids take. Every id is checked first -- new to
    the index, once across the shards -- so a repeated id stops the build before anything is
    written, naming the id and both shards."""
    plan, first = [], m["count"]
    for shard in shards:
        ids = parts.read_table(shard, ["id"])["id"].to_pylist()
        for i in ids:
            if i in seen:
                raise ValueError(
                    f"id {i!r} of {shard} is already in the index (from {seen[i]}): every id "
                    "must be in the index once; remove the duplicate from one embedding shard"
                )
            seen[i] = shard
        job = {"name": parts.part_name(shard), "source": shard, "rows": len(ids)}
        job["first_label"] = first
        # -1: an id without metadata (null columns)
        if pos is not None:
            job["meta_take"] = np.array([pos.get(i, -1) for i in ids], np.int64)
        plan.append(job)
        first += len(ids)
    return plan


def _meta_rows(meta: pa.Table | None, columns: list[str]):
    """``job -> its metadata rows`` (or None): taken when the job is submitted."""

    def rows(job: dict) -> pa.Table | None:
        if meta is None or not columns:
            return None
        take = job["meta_take"]
        return meta.select(columns).take(pa.array(take, pa.int64(), mask=take < 0))

    return rows


def _embed_first(cfg: IndexConfig) -> str:
    """``--input FASTA --model REF``: run the batch-embedding job (resumable) and return its
    output directory (``--embeddings``, or ``<output>/_embeddings``)."""
    from ankh_platform.embed.config import EmbedJobConfig
    from ankh_platform.embed.job import run as embed_run

    if not cfg.checkpoint:
        raise ValueError("--input needs --model (the model that embeds it)")
    out = cfg.embeddings or join(cfg.output, "_embeddings")
    embed_run(EmbedJobConfig(checkpoint=cfg.checkpoint, input=cfg.input, output=out))
    return out


def run(cfg: IndexConfig) -> dict:
    """Build (or extend) the index; returns (and writes) the summary."""
    if not cfg.output or not (cfg.embeddings or cfg.input):
        raise ValueError("--output and one of --embeddings / --input are required")
    t0 = time.perf_counter()
    embeddings = _embed_first(cfg) if cfg.input else cfg.embeddings
    shards = parts.list_shards(embeddings)
    if not shards:
        raise FileNotFoundError(f"no embedding shards (*.parquet) in {embeddings}")
    rows = {s: parts.shard_rows(s) for s in shards}
    dim = parts.vectors(parts.read_table(shards[0], ["embedding"]).slice(0, 1)).shape[1]
    source = mf.embed_source(embeddings, dim, cfg.metric)
    m = mf.read(cfg.output)
    if m is not None:  # refuse another space before reading any metadata
        mf.check_same_space(m["source"], source, embeddings)
        _check_params(cfg, m)
    meta = load_metadata(cfg)
    t_train = time.perf_counter()
    if m is None:
        m = train(cfg, shards, rows, source, [] if meta is None else meta.column_names[1:])
    t_train = time.perf_counter() - t_train
    done = {p["source"]: p for p in m["parts"]}
    for s in shards:
        if s in done and done[s]["rows"] != rows[s]:
            raise ValueError(f"{s} has {rows[s]} rows, {done[s]['rows']} when it was indexed")
    pending = [s for s in shards if s not in done]
    _check_columns(m, meta, pending)
    pos = None if meta is None else {v: i for i, v in enumerate(meta["id"].to_pylist())}
    plan = plan_parts(pending, m, _indexed_ids(cfg.output, m), pos)
    workers = parallel.worker_count(cfg.workers, len(plan))
    added = _encode_and_commit(cfg, m, plan, _meta_rows(meta, m["metadata_columns"]), workers)
    build_s = time.perf_counter() - t0
    check = verify(cfg.output)
    if added or "calibration" not in m["index"]:
        _calibrate(cfg, m)
    summary = {
        "index": cfg.output,
        "embeddings": embeddings,
        "count": m["count"],
        "added": added,
        "parts": {"total": len(m["parts"]), "added": len(pending), "skipped_done": len(done)},
        "workers": workers,  # Ray tasks at once; 0 = serial in this process
        "source": m["source"],
        "params": m["index"],
        "metadata_columns": m["metadata_columns"],
        "build_s": round(build_s, 3),
        "train_s": round(t_train, 3),  # sampling + quantizer training (0 when resumed)
        "vectors_per_s": round(added / build_s, 1) if build_s > 0 else 0.0,
        "exactly_once": check,
    }
    parts.write_bytes(join(cfg.output, "_summary.json"), _json(summary))
    return summary


def _calibrate(cfg: IndexConfig, m: dict) -> None:
    """Measure recall@10 on a sample and store the cheapest defaults reaching the target."""
    from ankh_platform.search.calibrate import calibrate
    from ankh_platform.search.index import SearchIndex

    if not cfg.target_recall:
        return
    cal = calibrate(
        SearchIndex(cfg.output),
        cfg.target_recall,
        seed=cfg.seed,
        nprobe=cfg.nprobe,
        refine=cfg.refine,
    )
    m["index"].update(nprobe=cal["nprobe"], refine=cal["refine"], calibration=cal)
    mf.write(cfg.output, m)


def _encode_and_commit(cfg: IndexConfig, m: dict, plan: list[dict], meta, workers: int) -> int:
    """Encode the planned parts (``parallel.encode``) and commit each, in label order, by
    rewriting the manifest: a part the manifest lacks is redone on a re-run."""
    trained = parts.read_bytes(join(cfg.output, parts.TRAINED))
    storage.remove_stale_temps(join(cfg.output, "parts"))  # unfinished writes of a killed run
    added = 0
    with (
        Progress("index", total=sum(p["rows"] for p in plan), unit="vectors") as bar,
        contextlib.closing(
            parallel.encode(cfg.output, trained, m["source"], plan, meta, workers)
        ) as finished,
    ):
        for entry in finished:
            if entry["first_label"] != m["count"]:  # parallel.encode yields in label order
                raise RuntimeError(f"part {entry} does not follow label {m['count']}")
            m["parts"].append(entry)
            m["count"] += entry["rows"]
            mf.write(cfg.output, m)  # the commit
            added += entry["rows"]
            bar.update(entry["rows"])
    return added


def _check_columns(m: dict, meta, pending: list[str]) -> None:
    """New parts carry the index's metadata columns, no more, no fewer."""
    if meta is None and m["metadata_columns"] and pending:
        raise ValueError(
            f"this index keeps metadata columns {m['metadata_columns']}: give --metadata "
            f"with them to index {len(pending)} new shard(s)"
        )
    cols = [] if meta is None else meta.column_names[1:]
    if meta is not None and cols != m["metadata_columns"]:
        raise ValueError(
            f"metadata columns {cols}, but this index keeps {m['metadata_columns']}: "
            "extend it with the same columns"
        )


def _indexed_ids(index: str, m: dict) -> dict:
    seen: dict[str, str] = {}
    for p in m["parts"]:
        for i in parts.read_table(parts.part_paths(index, p["name"])[1], ["id"])["id"].to_pylist():
            seen[i] = p["source"]
    return seen


def verify(index: str) -> dict:
    """Every part's labels are ``first_label ..`` in manifest order, with no gap or overlap; each
    part's encoded vectors, table rows and manifest rows agree; no id appears twice."""
    faiss = _faiss()
    m = mf.require(index)
    ids: set[str] = set()
    label = 0
    for p in m["parts"]:
        fpath, tpath = parts.part_paths(index, p["name"])
        part = faiss.deserialize_index(np.frombuffer(parts.read_bytes(fpath), np.uint8))
        got = parts.read_table(tpath, ["id"])["id"].to_pylist()
        if p["first_label"] != label or part.ntotal != p["rows"] or len(got) != p["rows"]:
            raise RuntimeError(f"index part {p['name']} does not match the manifest")
        ids.update(got)
        label += p["rows"]
    if label != m["count"] or len(ids) != m["count"]:
        raise RuntimeError(f"{index}: {m['count']} vectors, {len(ids)} distinct ids")
    return {"vectors": m["count"], "distinct_ids": len(ids), "parts": len(m["parts"])}


def _json(obj: dict) -> bytes:
    import json

    return json.dumps(obj, indent=1).encode()
