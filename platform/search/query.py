"""``python -m jobs.search``: embed queries with the index's own model, search, write the hits.

Queries are embedded by ``ankh.load(<the index's model>).embed`` at the index's layer -- the
encoder program every embedding entry runs -- after the batch job's rules: one trailing ``*``
dropped, a sequence over ``max_length`` residues windowed (``window_overlap``) and each residue
averaged over its windows (``ankh_platform.embed.pack``), truncated, or skipped, as the
embedding job that filled the index did. Invalid queries are reported, never fatal.
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pyarrow as pa

from ankh.batching import DEFAULT_BATCH_TOKENS
from ankh.storage import join
from ankh_platform.core.progress import console
from ankh_platform.search import parts, transfer
from ankh_platform.search.config import SearchConfig
from ankh_platform.search.index import SearchIndex

log = logging.getLogger(__name__)
MAX_K = 10_000
TSV_HEADER = "qseqid sseqid pident length mismatch gapopen qstart qend sstart send evalue bitscore"


def read_queries(path: str) -> tuple[list[str], list[str] | None, np.ndarray | None]:
    """``(ids, sequences, None)`` from FASTA or Parquet (id, sequence), or ``(ids, None,
    vectors)`` from Parquet with an ``embedding`` column (a jobs.embed shard or directory)."""
    from ankh_platform.embed.inputs import discover, fasta_records

    shards = discover(path)
    if all(s.fmt == "parquet" for s in shards):
        table = pa.concat_tables([parts.read_table(s.path) for s in shards])
        if "embedding" in table.column_names:
            return table["id"].to_pylist(), None, parts.vectors(table)
        if "sequence" not in table.column_names:
            raise ValueError(f"{path}: Parquet queries need id + sequence or id + embedding")
        return table["id"].to_pylist(), table["sequence"].to_pylist(), None
    recs = [r for s in shards for r in fasta_records(s.path)]
    return [r[0] for r in recs], [r[1] for r in recs], None


class QueryEmbedder:
    """The index's model at the index's layer, with the embedding job's long-sequence rules."""

    def __init__(self, source: dict, batch_tokens: int = DEFAULT_BATCH_TOKENS):
        import ankh

        self.model = ankh.load(source["model"])
        self.layer = source["layer"] or None
        self.max_length = source.get("max_length") or self.model.config.max_length
        self.policy = source.get("long_policy", "window")
        self.overlap = source.get("window_overlap", 128)
        self.strip_stop = source.get("strip_stop", True)
        self.kw = {"batch_tokens": batch_tokens}

    def clean(self, seq) -> str:
        return self.clean_static(seq, self.strip_stop)

    @staticmethod
    def clean_static(seq, strip_stop: bool = True) -> str:
        s = "".join((seq or "").split()).upper()
        return s[:-1] if strip_stop and s.endswith("*") else s

    def embed(self, seqs: list[str]) -> tuple[np.ndarray, dict[int, str]]:
        """``[n, d]`` (zero rows for invalid queries) and ``{position: reason}`` of those."""
        from ankh.tokenizer import TokenizerError

        d = self.model.config.d_model
        out, invalid, short = np.zeros((len(seqs), d), np.float32), {}, []
        for i, raw in enumerate(seqs):
            s = self.clean(raw)
            try:
                if not s:
                    raise TokenizerError("empty sequence")
                if len(s) > self.max_length and self.policy == "skip":
                    raise TokenizerError(f"{len(s)} residues > max_length {self.max_length}")
                self.model.tokenize([s[: self.max_length]])  # the alphabet check, nothing else
            except TokenizerError as e:
                invalid[i] = str(e)
                continue
            if len(s) <= self.max_length or self.policy == "truncate":
                short.append((i, s[: self.max_length]))
            else:
                out[i] = self._windowed(s)
        if short:
            x = self.model.embed([s for _, s in short], layer=self.layer, **self.kw)
            out[[i for i, _ in short]] = x
        return out, invalid

    def _windowed(self, s: str) -> np.ndarray:
        from ankh_platform.embed.pack import combine_windows, windows

        starts = windows(len(s), self.max_length, self.overlap)
        hidden = self.model.embed(
            [s[a : a + self.max_length] for a in starts], per_residue=True, layer=self.layer
        )
        return combine_windows(len(s), self.max_length, self.overlap, starts, hidden).mean(0)


def hits_table(index: SearchIndex, qids: list[str], scores, labels, qlens=None) -> pa.Table:
    """One row per (query, neighbour): query_id, target_id, score, rank (1 = best), then
    target_length and the index's metadata columns."""
    keep = labels >= 0
    qi, rank = np.nonzero(keep)
    rows = index.rows(labels[keep])
    cols = {
        "query_id": pa.array([qids[i] for i in qi], pa.string()),
        "target_id": rows["id"],
        "score": pa.array(scores[keep], pa.float32()),
        "rank": pa.array(rank + 1, pa.int32()),
        "query_length": pa.array([qlens[i] if qlens else None for i in qi], pa.int32()),
        "target_length": rows["length"],
    }
    cols.update({c: rows[c] for c in index.columns})
    return pa.table(cols)


def write_tsv(path: str, hits: pa.Table) -> None:
    """BLAST / MMseqs2 tabular layout (``-outfmt 6``, 12 columns, no header). An embedding
    search aligns nothing: pident, mismatch, gapopen are 0, the "alignment" spans both whole
    sequences, evalue holds 1 - score and bitscore the score (docs/search.md)."""
    q, t = hits["query_id"].to_pylist(), hits["target_id"].to_pylist()
    s = hits["score"].to_numpy()
    ql, tl = hits["query_length"].to_pylist(), hits["target_length"].to_pylist()
    lines = [
        f"{q[i]}\t{t[i]}\t0\t{tl[i]}\t0\t0\t1\t{ql[i] or 0}\t1\t{tl[i]}\t{max(0.0, 1 - s[i]):.4g}\t{s[i]:.4f}\n"
        for i in range(len(q))
    ]

    def write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            fh.writelines(lines)

    from ankh import storage

    storage.atomic_write(path, write)


def search_queries(
    index: SearchIndex,
    qids,
    seqs,
    vectors,
    k: int,
    nprobe: int = 0,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
):
    """``(hits table, invalid list)``: embed (unless vectors are given), search, tabulate."""
    invalid: dict[int, str] = {}
    if vectors is None:
        vectors, invalid = QueryEmbedder(index.source, batch_tokens).embed(seqs)
    elif vectors.shape[1] != index.dim:
        raise ValueError(f"query vectors have dimension {vectors.shape[1]}, index {index.dim}")
    ok = [i for i in range(len(qids)) if i not in invalid]
    scores, labels = index.search(vectors[ok], k, nprobe)
    qlens = [len(QueryEmbedder.clean_static(seqs[i])) for i in ok] if seqs is not None else None
    hits = hits_table(index, [qids[i] for i in ok], scores, labels, qlens)
    return hits, [{"id": qids[i], "row": i, "reason": r} for i, r in sorted(invalid.items())]


def open_index(path: str, shards: int = 0):
    """``SearchIndex`` (``shards`` 0) or a ``ShardedIndex`` of ``shards`` Ray actors: the same
    results (``sharded.py``), the vectors spread over the actors' processes (and nodes)."""
    if shards:
        from ankh_platform.search.sharded import ShardedIndex

        return ShardedIndex(path, shards)
    return SearchIndex(path)


def run(cfg: SearchConfig) -> dict:
    """Search every query; write hits.parquet, hits.tsv (and transfer.parquet), summary.json."""
    for name in ("index", "query", "output"):
        if not getattr(cfg, name):
            raise ValueError(f"--{name} is required")
    if not 1 <= cfg.k <= MAX_K:
        raise ValueError(f"k must be in 1..{MAX_K}, got {cfg.k}")
    if cfg.shards < 0:
        raise ValueError(f"shards must be >= 0 (0 = one in-process index), got {cfg.shards}")
    t0 = time.perf_counter()
    index = open_index(cfg.index, cfg.shards)
    try:
        qids, seqs, vectors = read_queries(cfg.query)
        t1 = time.perf_counter()
        hits, invalid = search_queries(
            index, qids, seqs, vectors, cfg.k, cfg.nprobe, cfg.batch_tokens
        )
        t2 = time.perf_counter()
    finally:
        if cfg.shards:
            index.close()
    parts.write_table(join(cfg.output, "hits.parquet"), hits)
    write_tsv(join(cfg.output, "hits.tsv"), hits)
    summary = {
        "index": cfg.index,
        "query": cfg.query,
        "output": cfg.output,
        "queries": len(qids),
        "searched": len(qids) - len(invalid),
        "hits": hits.num_rows,
        "k": cfg.k,
        "model": index.source["model"],
        "shards": cfg.shards,
        "open_s": round(t1 - t0, 3),
        "embed_and_search_s": round(t2 - t1, 3),
        "invalid": invalid,
    }
    if cfg.transfer:
        cols = [c.strip() for c in cfg.transfer.split(",") if c.strip()]
        preds = transfer.transfer(hits, cols)
        parts.write_table(join(cfg.output, "transfer.parquet"), preds)
        summary["transfer"] = {"columns": cols, "predictions": preds.num_rows}
    parts.write_bytes(join(cfg.output, "summary.json"), json.dumps(summary, indent=1).encode())
    console(f"{summary['searched']}/{len(qids)} queries searched; hits in {cfg.output}")
    return summary
