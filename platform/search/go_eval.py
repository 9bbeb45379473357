"""``jobs.evaluate --task go-transfer``: Fmax of goPredSim transfer on the uniprot_go splits.

Lookup set: the first ``lookup`` train-split proteins with a GO term (and at most
``max_length`` residues); queries: the first ``queries`` test-split ones. The lookup set is
embedded with the model (``ankh.load(...).embed``, written in the ``jobs.embed`` layout),
indexed by ``jobs.index``'s builder with its GO columns, and the queries searched by
``jobs.search``'s path; each ontology's CAFA Fmax is reported beside the naive baseline
(every term at its frequency in the lookup set).
"""

from __future__ import annotations

import json
import time

import pyarrow as pa
import pyarrow.compute as pc

from ankh.storage import join
from ankh_platform.search import parts, transfer
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


def run(cfg: GoTransferConfig) -> dict:
    from ankh.resolve import resolve
    from ankh_platform.search import build
    from ankh_platform.search.index import SearchIndex
    from ankh_platform.search.query import search_queries

    if not cfg.checkpoint or not cfg.output:
        raise ValueError("go-transfer needs --model and --output")
    t0 = time.perf_counter()
    onts = [o.strip() for o in cfg.ontologies.split(",") if o.strip()]
    lookup, queries = _load(cfg, onts)
    model_ref = resolve(cfg.checkpoint).pinned
    emb = _embed_lookup(cfg, model_ref, lookup)
    meta = join(cfg.output, "lookup_terms.parquet")
    parts.write_table(meta, lookup.select(["id", *onts]))
    index_dir = join(cfg.output, "index")
    build.run(IndexConfig(embeddings=emb, output=index_dir, metadata=meta, columns=",".join(onts)))
    index = SearchIndex(index_dir)
    qids = queries["id"].to_pylist()
    hits, _ = search_queries(index, qids, queries["sequence"].to_pylist(), None, cfg.k)
    preds = transfer.transfer(hits, onts)
    results = {}
    for o in onts:
        truth = {q: set(ts or ()) for q, ts in zip(qids, queries[o].to_pylist())}
        f, t = transfer.fmax(truth, transfer.predictions(preds, o))
        nf, nt = transfer.fmax(truth, transfer.naive(lookup[o].to_pylist(), qids))
        results[o] = {
            "goPredSim_fmax": round(f, 4),
            "goPredSim_threshold": t,
            "naive_fmax": round(nf, 4),
            "naive_threshold": nt,
            "queries_benchmarked": sum(1 for ts in truth.values() if ts),
        }
    report = {
        "task": "go-transfer",
        "model": model_ref,
        "lookup": lookup.num_rows,
        "queries": queries.num_rows,
        "k": cfg.k,
        "results": results,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    parts.write_bytes(join(cfg.output, "results.json"), json.dumps(report, indent=1).encode())
    parts.write_bytes(join(cfg.output, "results.md"), markdown(report).encode())
    return report


def markdown(report: dict) -> str:
    lines = [
        f"GO transfer (goPredSim, k={report['k']}), model {report['model']}: "
        f"{report['queries']} test queries vs {report['lookup']} train proteins",
        "",
        "| ontology | goPredSim Fmax | naive Fmax | queries |",
        "|---|---|---|---|",
    ]
    for o, r in report["results"].items():
        lines.append(
            f"| {o} | {r['goPredSim_fmax']:.3f} | {r['naive_fmax']:.3f} | "
            f"{r['queries_benchmarked']} |"
        )
    return "\n".join(lines) + "\n"
