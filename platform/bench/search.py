"""``python -m jobs.benchmark search``: the index against exact search, and GO transfer against
MMseqs2, both sides in one run (one JSON line per figure).

**Vector sets.** *real*: the first ``--real`` GO-labelled train-split proteins of the shared
``uniprot_go`` data (at most ``--max-length`` residues) embedded by ``--model`` (default
``tiny``), or the vectors of ``--embeddings DIR`` (a ``jobs.embed`` output, e.g. an earlier
run's ``<workdir>/real/lookup_embeddings``); queries: the first ``--queries`` test-split ones,
embedded by the same model. *synthetic*: ``--synthetic`` vectors (0: none) drawn from a
Gaussian with the real set's mean and covariance (of the normalized vectors), queries drawn
alike: a larger set of the same dimension and spread, without the real set's clusters (the
harder case for an IVF index).

Per set, through the ``jobs.index`` builder and ``SearchIndex``: ``build`` (vectors/s,
training included), ``memory`` (RSS growth when the index is opened, and its files on disk,
per million vectors), ``recall@k`` against exact search over the same normalized vectors
(FAISS ``IndexFlatIP``, brute-force inner product; a result counts when its exact score ties
or beats the exact k-th), ``latency_1`` (one query per call) and ``latency_64`` (64 per call):
p50 / p99 ms per call and queries/s, index beside exact, for each ``--nprobe`` and ``--refine``
(``max(k, 10) * refine`` PQ candidates re-ranked exactly).

**GO transfer** (``--queries`` real queries against the real set as lookup, k=1): wall time
of ours (model load; embedding; search) against ``mmseqs easy-search`` (default sensitivity,
both databases built in the timed command), and each method's Fmax per ontology (goPredSim
transfer, MMseqs2 best hit, composition vectors, naive): ``ankh_platform.search.go_eval``.
The ``tiny`` model has random weights: its Fmax measures the pipeline, not Ankh.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time

import numpy as np
import pyarrow as pa

from ankh.storage import join
from ankh_platform.core import cli as _cli
from ankh_platform.search import parts

log = logging.getLogger(__name__)
SHARD_ROWS = 100_000


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="jobs.benchmark search",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _cli.add(
        ap, "--model", _cli.model_flag(None, "embeds the real set (default tiny)"), default="tiny"
    )
    ap.add_argument("--real", type=int, default=20_000, help="real proteins embedded (20000)")
    ap.add_argument("--embeddings", default="", help="reuse this jobs.embed output as real set")
    ap.add_argument("--synthetic", type=int, default=1_000_000, help="synthetic vectors (0: none)")
    ap.add_argument("--queries", type=int, default=1000, help="real/synthetic queries (1000)")
    ap.add_argument("--latency-queries", type=int, default=200, help="single-query calls timed")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--batch", type=int, default=64, help="queries per batched call (64)")
    ap.add_argument("--nprobe", default="0", help="comma list of nprobe values (0: the default)")
    ap.add_argument("--refine", default="0", help="comma list of refine values (0: the default)")
    ap.add_argument("--data", default="", help="uniprot_go Parquet (default: the shared data's)")
    ap.add_argument("--max-length", type=int, default=1000, help="longest protein used")
    ap.add_argument("--baselines", default="naive,composition,mmseqs", help="GO-transfer ones")
    ap.add_argument("--no-go", action="store_true", help="skip the GO-transfer comparison")
    ap.add_argument("--threads", type=int, default=0, help="mmseqs --threads (0: all)")
    ap.add_argument("--workdir", default="", help="keep vectors and indexes here (default tmp)")
    return ap


def emit(figure: str, **fields) -> dict:
    line = {"bench": "search", "figure": figure, **fields}
    print(json.dumps(line), flush=True)
    return line


def rss_mb(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return 0.0


def open_rss_mb(path: str) -> dict:
    """RSS growth (and peak growth) of a fresh process opening the index at ``path``: what
    one search replica holds, without this process' leftovers."""
    import subprocess
    import sys

    code = (
        "import json, sys, faiss, numpy, pyarrow, pyarrow.parquet\n"
        "from ankh_platform.bench.search import rss_mb\n"
        "from ankh_platform.search.index import SearchIndex\n"
        "a, pa_ = rss_mb(), rss_mb('VmHWM')\n"
        "ix = SearchIndex(sys.argv[1])\n"
        "print(json.dumps([rss_mb() - a, rss_mb('VmHWM') - pa_]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, path], capture_output=True, text=True, check=True
    )
    rss, peak = json.loads(out.stdout.strip().splitlines()[-1])
    return {"rss": rss, "peak": peak}


def dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def write_shards(out: str, ids: list[str], x: np.ndarray, model: str) -> str:
    """``x`` in the ``jobs.embed`` layout (shards of ``SHARD_ROWS``) + ``_job.json``."""
    for s, a in enumerate(range(0, len(ids), SHARD_ROWS)):
        b = min(a + SHARD_ROWS, len(ids))
        t = pa.table(
            {
                "id": pa.array(ids[a:b], pa.string()),
                "length": pa.array(np.zeros(b - a, np.int32)),
                "embedding": parts.vector_array(x[a:b]),
            }
        )
        parts.write_table(join(out, f"part-{s:05d}.parquet"), t)
    job = {"checkpoint": model, "layer": 0, "per_residue": False, "max_length": 0}
    parts.write_bytes(join(out, "_job.json"), json.dumps(job).encode())
    return out


def synthetic(real: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` draws from a Gaussian with the mean and covariance of ``real`` (normalized)."""
    x = parts.normalize(real, "cosine").astype(np.float64)
    mu, cov = x.mean(0), np.cov(x, rowvar=False)
    chol = np.linalg.cholesky(cov + 1e-6 * np.eye(len(mu)) * np.trace(cov) / len(mu))
    rng = np.random.default_rng(seed)
    out = np.empty((n, len(mu)), np.float32)
    for a in range(0, n, SHARD_ROWS):  # in blocks: a float64 draw of 1M x d would double RAM
        b = min(a + SHARD_ROWS, n)
        out[a:b] = mu + rng.standard_normal((b - a, len(mu))) @ chol.T
    return out


def percentiles(times: list[float], per_call: int) -> dict:
    t = np.asarray(times) * 1000
    return {
        "p50_ms": round(float(np.percentile(t, 50)), 3),
        "p99_ms": round(float(np.percentile(t, 99)), 3),
        "queries_per_s": round(per_call * len(t) / (t.sum() / 1000), 1),
    }


def timed_calls(fn, q: np.ndarray, per_call: int, calls: int) -> list[float]:
    fn(q[:per_call])  # warm-up (first-touch of the lists, BLAS threads)
    out = []
    for i in range(calls):
        a = (i * per_call) % max(1, len(q) - per_call + 1)
        t0 = time.perf_counter()
        fn(q[a : a + per_call])
        out.append(time.perf_counter() - t0)
    return out


def recall_at_k(scores: np.ndarray, exact_scores: np.ndarray, k: int) -> float:
    """Share of the exact top-k the index returned; a returned neighbour whose exact score ties
    the exact k-th counts (duplicated sequences give equal vectors)."""
    kth = exact_scores[:, k - 1 : k] - 1e-5
    return float(np.mean(np.minimum((scores[:, :k] >= kth).sum(1), k) / k))


def measure_set(name: str, emb: str, queries: np.ndarray, args, workdir: str, **build_kw) -> None:
    """Build, open and search one vector set; emit its figures."""
    import faiss

    from ankh_platform.search import build
    from ankh_platform.search.config import IndexConfig
    from ankh_platform.search.index import SearchIndex

    out = join(workdir, name, "index")
    summary = build.run(IndexConfig(embeddings=emb, output=out, **build_kw))
    n, dim = summary["count"], summary["source"]["dim"]
    emit(
        "build",
        set=name,
        n=n,
        dim=dim,
        vectors_per_s=summary["vectors_per_s"],
        build_s=summary["build_s"],
        train_s=summary["train_s"],
        added=summary["added"],
        params=summary["params"],
    )
    opened = open_rss_mb(out)
    ix = SearchIndex(out)
    per_m = 1e6 / n
    codes = ix.ivf.ntotal * (ix.ivf.code_size + 8)  # PQ code + label per vector
    emit(
        "memory",
        set=name,
        n=n,
        dim=dim,
        ram_mib=round(opened["rss"], 1),  # includes fixed costs: per million only at large n
        ram_mib_per_million=round(opened["rss"] * per_m, 1),
        peak_ram_mib_per_million=round(opened["peak"] * per_m, 1),
        ram_parts_mib_per_million={
            "pq_codes_and_labels": round(codes / 2**20 * per_m, 1),
            "rerank_vectors": round(ix.vectors.nbytes / 2**20 * per_m, 1),
            "ids_and_metadata": round(ix.table.nbytes / 2**20 * per_m, 1),
        },
        disk_mib_per_million=round(dir_bytes(out) / 2**20 * per_m, 1),
    )
    flat = faiss.IndexFlatIP(dim)
    flat.add(ix.vectors)
    q = parts.normalize(queries, ix.metric)
    exact_s, _ = flat.search(q, args.k)
    exact = lambda x: flat.search(x, args.k)  # noqa: E731
    one_exact = percentiles(timed_calls(exact, q, 1, args.latency_queries), 1)
    batch_calls = max(4, len(q) // args.batch)
    many_exact = percentiles(timed_calls(exact, q, args.batch, batch_calls), args.batch)
    sweep = [(int(p), int(r)) for p in args.nprobe.split(",") for r in args.refine.split(",")]
    for nprobe, refine in sweep:
        used = min(nprobe or ix.params["nprobe"], ix.params["nlist"])
        ref = refine or ix.params["refine"]
        approx = lambda x, p=used, r=ref: ix.search(x, args.k, p, r)  # noqa: E731
        scores, _ = approx(q)
        common = {"set": name, "n": n, "dim": dim, "nprobe": used, "nlist": ix.params["nlist"]}
        common["refine"] = ref
        emit(
            f"recall@{args.k}",
            **common,
            queries=len(q),
            index=round(recall_at_k(scores, exact_s, args.k), 4),
            exact=1.0,
        )
        emit(
            "latency_1",
            **common,
            index=percentiles(timed_calls(approx, q, 1, args.latency_queries), 1),
            exact=one_exact,
        )
        emit(
            f"latency_{args.batch}",
            **common,
            index=percentiles(timed_calls(approx, q, args.batch, batch_calls), args.batch),
            exact=many_exact,
        )


def proteins_by_id(ids: list[str], onts: list[str], data: str = "") -> pa.Table:
    """id, sequence, length and ``onts`` of the shared ``uniprot_go`` proteins among ``ids``."""
    import pyarrow.compute as pc

    from ankh_platform.core.samples import data_dir
    from ankh_platform.embed.inputs import discover

    want, found = pa.array(sorted(set(ids)), pa.string()), []
    for shard in discover(data or str(data_dir() / "uniprot_go"), "parquet"):
        t = parts.read_table(shard.path, ["id", "sequence", "length", *onts])
        found.append(t.filter(pc.is_in(t["id"], value_set=want)))
        if sum(x.num_rows for x in found) >= len(want):
            break
    return pa.concat_tables(found)


def real_set(args, workdir: str, onts: list[str]) -> tuple[str, str, pa.Table, pa.Table]:
    """``(embeddings dir, model, lookup proteins, query proteins)``: embedded here (timed) or
    taken from ``--embeddings``."""
    import pyarrow.compute as pc

    from ankh.resolve import resolve
    from ankh_platform.search import go_eval
    from ankh_platform.search.config import GoTransferConfig

    if args.embeddings:
        emb = args.embeddings
        model = json.loads(parts.read_bytes(join(emb, "_job.json")))["checkpoint"]
        ids = [
            i for s in parts.list_shards(emb) for i in parts.read_table(s, ["id"])["id"].to_pylist()
        ]
        lookup = proteins_by_id(ids, onts, args.data)
        cfg = GoTransferConfig(
            data=args.data, lookup=0, queries=args.queries, max_length=args.max_length
        )
        _, queries = go_eval._load(cfg, onts)
        queries = queries.filter(pc.invert(pc.is_in(queries["id"], value_set=lookup["id"])))
        return emb, model, lookup, queries
    model = resolve(args.model).pinned
    cfg = GoTransferConfig(
        checkpoint=model,
        output=join(workdir, "real"),
        data=args.data,
        lookup=args.real,
        queries=args.queries,
        max_length=args.max_length,
    )
    lookup, queries = go_eval._load(cfg, onts)
    t0 = time.perf_counter()
    emb = go_eval._embed_lookup(cfg, model, lookup)
    dt = time.perf_counter() - t0
    residues = int(pc.sum(lookup["length"]).as_py())
    emit(
        "embed",
        set="real",
        model=model,
        proteins=lookup.num_rows,
        residues=residues,
        seconds=round(dt, 1),
        proteins_per_s=round(lookup.num_rows / dt, 1),
        note="model load and compile included",
    )
    return emb, model, lookup, queries


def go_transfer(args, workdir, model, emb, lookup, queries, qx, onts, embed_s, load_s) -> None:
    from ankh_platform.search import go_eval
    from ankh_platform.search.config import GoTransferConfig

    cfg = GoTransferConfig(
        checkpoint=model,
        output=join(workdir, "real"),
        k=1,
        baselines=args.baselines,
        threads=args.threads,
    )
    rep = go_eval.evaluate(cfg, model, lookup, queries, emb, onts, vectors=qx)
    ours = rep["timing"]["goPredSim"]
    timing = {
        "ours": {
            "load_model_s": round(load_s, 3),
            "embed_s": round(embed_s, 3),
            "search_s": ours["search_s"],
            "with_embedding_s": round(embed_s + ours["search_s"], 3),
            "without_embedding_s": ours["search_s"],
        },
        **{m: t for m, t in rep["timing"].items() if m != "goPredSim"},
    }
    common = {"queries": rep["queries"], "lookup": rep["lookup"], "model": model, "k": 1}
    emit("go_transfer_time", **common, **timing)
    fmax = {
        o: {m: r[f"{m}_fmax"] for m in rep["methods"]} | {"queries": r["queries_benchmarked"]}
        for o, r in rep["results"].items()
    }
    emit("go_transfer_fmax", **common, fmax=fmax)


def main(argv: list[str] | None = None) -> None:

    from ankh_platform.search import manifest
    from ankh_platform.search.query import QueryEmbedder

    args = _parser().parse_args(argv)
    workdir = args.workdir or tempfile.mkdtemp(prefix="ankh-bench-search-")
    onts = ["go_mf", "go_bp", "go_cc"]
    t0 = time.perf_counter()
    emb, model, lookup, queries = real_set(args, workdir, onts)
    meta = join(workdir, "real", "lookup_terms.parquet")
    parts.write_table(meta, lookup.select(["id", *onts]))
    real = np.concatenate([parts.vectors(parts.read_table(s)) for s in parts.list_shards(emb)])
    source = manifest.embed_source(emb, real.shape[1], "cosine")
    t1 = time.perf_counter()
    embedder = QueryEmbedder(source)
    t2 = time.perf_counter()
    qx, invalid = embedder.embed(queries["sequence"].to_pylist())
    t3 = time.perf_counter()
    ok = [i for i in range(queries.num_rows) if i not in invalid]
    queries, qx = queries.take(ok), qx[ok]
    kw = {"metadata": meta, "columns": ",".join(onts)}
    measure_set("real", emb, qx, args, workdir, **kw)
    if args.synthetic:
        x = synthetic(real, args.synthetic, seed=0)
        ids = [f"syn{i:09d}" for i in range(args.synthetic)]
        semb = write_shards(join(workdir, "synthetic", "vectors"), ids, x, f"synthetic:{model}")
        del x
        sq = synthetic(real, len(qx), seed=1)
        measure_set("synthetic", semb, sq, args, workdir)
    if not args.no_go:
        go_transfer(args, workdir, model, emb, lookup, queries, qx, onts, t3 - t2, t2 - t1)
    emit(
        "done",
        workdir=workdir if args.workdir else "(temporary, removed)",
        wall_s=round(time.perf_counter() - t0, 1),
    )
    if not args.workdir:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
