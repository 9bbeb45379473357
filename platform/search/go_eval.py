"""``jobs.evaluate --task go-transfer``: Fmax of goPredSim transfer on the uniprot_go splits.

Lookup set: the first ``lookup`` train-split proteins with a GO term (and at most
``max_length`` residues); queries: the first ``queries`` test-split ones. The lookup set is
embedded with the model (``ankh.load(...).embed``, written in the ``jobs.embed`` layout),
indexed by ``jobs.index``'s builder with its GO columns, and the queries searched by
``jobs.search``'s path; each ontology's CAFA Fmax is reported beside the baselines
(``cfg.baselines``): naive (every term at its frequency in the lookup set), composition
vectors through the same index, and the MMseqs2 best hit (``ankh_platform.search.baselines``).
"""

from __future__ import annotations

import json
import time

import pyarrow as pa
import pyarrow.compute as pc

from ankh.storage import join
from ankh_platform.search import baselines, parts, transfer
from ankh_platform.search.config import GoTransferConfig, IndexConfig


def _load(cfg: GoTransferConfig, onts: list[str]) -> tuple[pa.Table, pa.Table]:
    from ankh_platform.core.samples import data_dir
    from ankh_platform.embed.inputs import discover

    spec = cfg.data or str(data_dir() / "uniprot_go")
    lookup, queries = [], []
    need = {"train": cfg.lookup, "test": cfg.queries}
    for shard in discover(spec, "parquet"):
        t = parts.read_table(shard.path, ["id", "sequence", "length", "split", *onts])
        t = t.filter(pc.less_equal(t["length"], cfg.max_length))
        labelled = pc.greater(pc.list_value_length(t[onts[0]]).fill_null(0), 0)
        for o in onts[1:]:
            labelled = pc.or_(labelled, pc.greater(pc.list_value_length(t[o]).fill_null(0), 0))
        t = t.filter(labelled)
        for split, out in (("train", lookup), ("test", queries)):
            rows = t.filter(pc.equal(t["split"], split))
            have = sum(x.num_rows for x in out)
            out.append(rows.slice(0, max(0, need[split] - have)))
        if (
            sum(x.num_rows for x in lookup) >= cfg.lookup
            and sum(x.num_rows for x in queries) >= cfg.queries
        ):
            break
    return pa.concat_tables(lookup), pa.concat_tables(queries)


def _embed_lookup(cfg: GoTransferConfig, model_ref: str, lookup: pa.Table) -> str:
    """The lookup set's vectors as one ``jobs.embed`` shard (+ ``_job.json``)."""
    from ankh_platform.search.query import QueryEmbedder

    out = join(cfg.output, "lookup_embeddings")
    source = {"model": model_ref, "layer": 0}
    x, invalid = QueryEmbedder(source).embed(lookup["sequence"].to_pylist())
    keep = [i for i in range(lookup.num_rows) if i not in invalid]
    table = pa.table(
        {
            "id": lookup["id"].take(keep),
            "length": lookup["length"].take(keep),
            "embedding": parts.vector_array(x[keep]),
        }
    )
    parts.write_table(join(out, "lookup.parquet"), table)
    job = {"checkpoint": model_ref, "layer": 0, "per_residue": False, "max_length": 0}
    parts.write_bytes(join(out, "_job.json"), json.dumps(job).encode())
    return out


def _index(emb: str, out: str, meta: str, onts: list[str]):
    from ankh_platform.search import build
    from ankh_platform.search.index import SearchIndex

    build.run(IndexConfig(embeddings=emb, output=out, metadata=meta, columns=",".join(onts)))
    return SearchIndex(out)


def _ours(cfg, index, queries: pa.Table, vectors=None) -> tuple[pa.Table, dict]:
    """The model's transfer: queries embedded (unless ``vectors``), searched, k nearest."""
    from ankh_platform.search.query import QueryEmbedder, search_queries

    qids, seqs = queries["id"].to_pylist(), queries["sequence"].to_pylist()
    t0 = time.perf_counter()
    invalid: dict = {}
    if vectors is None:
        embedder = QueryEmbedder(index.source)
        t1 = time.perf_counter()
        vectors, invalid = embedder.embed(seqs)
    else:
        t1 = t0
    t2 = time.perf_counter()
    ok = [i for i in range(len(qids)) if i not in invalid]
    hits, _ = search_queries(index, [qids[i] for i in ok], None, vectors[ok], cfg.k)
    t3 = time.perf_counter()
    secs = {"load_model_s": t1 - t0, "embed_s": t2 - t1, "search_s": t3 - t2}
    return hits, {k: round(v, 3) for k, v in secs.items()}


def _composition(cfg, lookup: pa.Table, queries: pa.Table, meta: str, onts) -> tuple:
    from ankh_platform.search.query import search_queries

    seqs = lookup["sequence"].to_pylist()
    emb = baselines.write_composition_shard(
        join(cfg.output, "composition_embeddings"), lookup["id"].to_pylist(), seqs
    )
    index = _index(emb, join(cfg.output, "composition_index"), meta, onts)
    t0 = time.perf_counter()
    qx = baselines.composition(queries["sequence"].to_pylist())
    hits, _ = search_queries(index, queries["id"].to_pylist(), None, qx, cfg.k)
    return hits, {"vectors_and_search_s": round(time.perf_counter() - t0, 3)}


def _mmseqs(cfg, lookup: pa.Table, queries: pa.Table, onts) -> tuple:
    m8, wall = baselines.easy_search(
        (queries["id"].to_pylist(), queries["sequence"].to_pylist()),
        (lookup["id"].to_pylist(), lookup["sequence"].to_pylist()),
        threads=cfg.threads,
    )
    parts.write_bytes(join(cfg.output, "mmseqs_hits.m8"), m8.encode())
    best = baselines.best_hits(m8)
    hits = baselines.best_hit_table(best, lookup, onts)
    return hits, {"easy_search_s": round(wall, 3), "queries_with_hit": len(best)}


def evaluate(cfg, model_ref: str, lookup, queries, emb: str, onts, vectors=None) -> dict:
    """Fmax per ontology of the model's transfer and of each of ``cfg.baselines``, with what
    each took (``report["timing"]``)."""
    wanted = [b.strip() for b in cfg.baselines.split(",") if b.strip()]
    unknown = set(wanted) - {"naive", "composition", "mmseqs"}
    if unknown:
        raise ValueError(f"unknown baselines {sorted(unknown)}: naive, composition, mmseqs")
    if "mmseqs" in wanted and baselines.mmseqs_binary() is None:
        raise RuntimeError("baseline mmseqs: no mmseqs on PATH (apt-get install mmseqs2)")
    meta = join(cfg.output, "lookup_terms.parquet")
    parts.write_table(meta, lookup.select(["id", *onts]))
    index = _index(emb, join(cfg.output, "index"), meta, onts)
    hits, timing = {}, {}
    hits["goPredSim"], timing["goPredSim"] = _ours(cfg, index, queries, vectors)
    if "composition" in wanted:
        hits["composition"], timing["composition"] = _composition(cfg, lookup, queries, meta, onts)
    if "mmseqs" in wanted:
        hits["mmseqs"], timing["mmseqs"] = _mmseqs(cfg, lookup, queries, onts)
    qids = queries["id"].to_pylist()
    preds = {m: transfer.transfer(h, onts) for m, h in hits.items()}
    results = {}
    for o in onts:
        truth = {q: set(ts or ()) for q, ts in zip(qids, queries[o].to_pylist())}
        r = {}
        for m, p in preds.items():
            f, t = transfer.fmax(truth, transfer.predictions(p, o))
            r[f"{m}_fmax"], r[f"{m}_threshold"] = round(f, 4), t
        if "naive" in wanted:
            f, t = transfer.fmax(truth, transfer.naive(lookup[o].to_pylist(), qids))
            r["naive_fmax"], r["naive_threshold"] = round(f, 4), t
        r["queries_benchmarked"] = sum(1 for ts in truth.values() if ts)
        results[o] = r
    return {
        "task": "go-transfer",
        "model": model_ref,
        "lookup": lookup.num_rows,
        "queries": queries.num_rows,
        "k": cfg.k,
        "methods": [*hits, *(["naive"] if "naive" in wanted else [])],
        "results": results,
        "timing": timing,
    }


def run(cfg: GoTransferConfig) -> dict:
    from ankh.resolve import resolve

    if not cfg.checkpoint or not cfg.output:
        raise ValueError("go-transfer needs --model and --output")
    t0 = time.perf_counter()
    onts = [o.strip() for o in cfg.ontologies.split(",") if o.strip()]
    lookup, queries = _load(cfg, onts)
    model_ref = resolve(cfg.checkpoint).pinned
    emb = _embed_lookup(cfg, model_ref, lookup)
    report = evaluate(cfg, model_ref, lookup, queries, emb, onts)
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    parts.write_bytes(join(cfg.output, "results.json"), json.dumps(report, indent=1).encode())
    parts.write_bytes(join(cfg.output, "results.md"), markdown(report).encode())
    return report


def markdown(report: dict) -> str:
    methods = report.get("methods", ["goPredSim", "naive"])
    lines = [
        f"GO transfer (goPredSim, k={report['k']}), model {report['model']}: "
        f"{report['queries']} test queries vs {report['lookup']} train proteins",
        "",
        "| ontology | " + " | ".join(f"{m} Fmax" for m in methods) + " | queries |",
        "|---|" + "---|" * (len(methods) + 1),
    ]
    for o, r in report["results"].items():
        cells = " | ".join(f"{r[f'{m}_fmax']:.3f}" for m in methods)
        lines.append(f"| {o} | {cells} | {r['queries_benchmarked']} |")
    return "\n".join(lines) + "\n"
