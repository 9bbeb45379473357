"""Open an index directory (local or ``gs://``, no server) and search it.

The parts' IVF lists are merged into one in-memory IVF-PQ index (they share one trained
quantizer), which proposes ``k * refine`` candidates per query from ``nprobe`` lists; the
candidates are then re-ranked by the exact score against the full vectors kept in the parts'
tables, so the reported scores are exact cosine similarities (or inner products) and PQ's
approximation only decides which candidates are looked at.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from ankh.storage import join
from ankh_platform.search import manifest as mf
from ankh_platform.search import parts

log = logging.getLogger(__name__)
TIE_SLACK = 32  # extra PQ candidates fetched so ties at the shortlist's cut break by label


class SearchIndex:
    """``SearchIndex(path).search(vectors, k)`` -> ``(scores [q, k], labels [q, k])``.

    ``part_range=(lo, hi)`` opens only parts ``lo..hi-1`` (in label order): one shard of a
    ``ShardedIndex``, holding labels ``first .. first + count - 1``."""

    def __init__(self, path: str, part_range: tuple[int, int] | None = None):
        import faiss

        self.path = path
        self.manifest = m = mf.require(path)
        self.source, self.params = m["source"], m["index"]
        self.dim, self.metric = self.source["dim"], self.source["metric"]
        ordered = sorted(m["parts"], key=lambda p: p["first_label"])
        held = ordered[slice(*part_range)] if part_range else ordered
        if part_range and not held:
            raise ValueError(f"{path}: parts {part_range} of {len(ordered)}: none to open")
        self.first = held[0]["first_label"] if held else 0
        self.count = sum(p["rows"] for p in held) if part_range else m["count"]
        trained = parts.read_bytes(join(path, parts.TRAINED))
        self.ivf = faiss.deserialize_index(np.frombuffer(trained, np.uint8))
        # vectors copied part by part into one array, each part's table then dropped: the
        # peak stays near the bytes held (concatenating, then copying, held them twice)
        self.vectors = np.empty((self.count, self.dim), np.float32)
        tables, at = [], 0
        for p in held:
            fpath, tpath = parts.part_paths(path, p["name"])
            part = faiss.deserialize_index(np.frombuffer(parts.read_bytes(fpath), np.uint8))
            self.ivf.merge_from(part, 0)  # labels are global already
            table = parts.read_table(tpath)
            rows = table.num_rows
            if at + rows > self.count:
                raise RuntimeError(f"{path}: parts hold more rows than the manifest's {self.count}")
            self.vectors[at : at + rows] = parts.vectors(table, "vector")
            tables.append(table.drop_columns(["vector"]))
            at += rows
            del table
            pa.default_memory_pool().release_unused()  # the part's Parquet pages, handed back
        if self.ivf.ntotal != self.count or at != self.count:
            raise RuntimeError(
                f"{path}: parts hold {self.ivf.ntotal} vectors, manifest {self.count}"
            )
        self.table = pa.concat_tables(tables) if tables else None
        self.columns = list(m["metadata_columns"])

    def candidates(self, q: np.ndarray, shortlist: int, nprobe: int = 0):
        """The ``min(shortlist, count)`` best by PQ score of normalized queries ``q``, from
        ``nprobe`` lists: ``(pq_scores, labels, exact_scores)``, each ``[n, shortlist]``
        (label ``-1``, scores ``-inf``: fewer candidates than asked, sparse lists)."""
        self.ivf.nprobe = min(nprobe or self.params["nprobe"], self.params["nlist"])
        # FAISS keeps one of equal PQ scores at the cut by scan order (identical sequences have
        # identical codes); fetch a few more and cut by (score, label) so the shortlist -- and
        # a sharded search's merge of shortlists -- never depends on list or shard order
        pq, cand = self.ivf.search(q, min(self.count, shortlist + TIE_SLACK))
        pq[cand < 0] = -np.inf
        keep = np.lexsort((cand, -pq), axis=1)[:, : min(self.count, shortlist)]
        pq, cand = np.take_along_axis(pq, keep, 1), np.take_along_axis(cand, keep, 1)
        exact = np.einsum("qcd,qd->qc", self.vectors[np.maximum(cand - self.first, 0)], q)
        exact[cand < 0] = pq[cand < 0] = -np.inf
        return pq, cand, exact

    def search(
        self, queries: np.ndarray, k: int, nprobe: int = 0, refine: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``min(k, count)`` best targets per query, best first: exact scores and labels
        (``nprobe`` lists visited, ``max(k, 10) * refine`` candidates re-ranked; 0 = the
        index's defaults)."""
        q, k, shortlist = prepare(self, queries, k, refine)
        if k == 0 or len(q) == 0:
            return np.zeros((len(q), k), np.float32), np.zeros((len(q), k), np.int64)
        _, cand, exact = self.candidates(q, shortlist, nprobe)
        return top_k(cand, exact, k)

    def rows(self, labels: np.ndarray) -> pa.Table:
        """id, length and the metadata columns of ``labels`` (``-1``: null row)."""
        flat = labels.reshape(-1)
        return self.table.take(pa.array(flat - self.first, pa.int64(), mask=flat < 0))

    def exact(
        self, queries: np.ndarray, k: int, chunk: int = 262_144
    ) -> tuple[np.ndarray, np.ndarray]:
        """Brute-force search over the same full vectors (what recall is measured against),
        scanned in chunks so the score matrix never holds more than ``len(queries) x chunk``
        floats; equal scores in label order."""
        q = parts.normalize(np.asarray(queries, np.float32), self.metric)
        k = min(k, self.count)
        best_s = np.full((len(q), 0), -np.inf, np.float32)
        best_l = np.zeros((len(q), 0), np.int64)
        for start in range(0, self.count, chunk):
            s = q @ self.vectors[start : start + chunk].T
            labels = np.arange(start, start + s.shape[1], dtype=np.int64) + self.first
            labels = np.broadcast_to(labels, s.shape)
            cand, scores = np.concatenate([best_l, labels], 1), np.concatenate([best_s, s], 1)
            best_s, best_l = top_k(cand, scores, k)
        return best_s, best_l


def top_k(cand: np.ndarray, exact: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best candidates by exact score, best first; equal scores in label order, so
    results never depend on list (or shard) order."""
    order = np.lexsort((cand, -exact), axis=1)[:, :k]
    labels = np.take_along_axis(cand, order, 1)
    return np.take_along_axis(exact, order, 1).astype(np.float32), labels


def prepare(ix, queries: np.ndarray, k: int, refine: int = 0) -> tuple[np.ndarray, int, int]:
    """Checked, normalized queries; ``min(k, count)``; the PQ shortlist length -- for a
    ``SearchIndex`` or a ``ShardedIndex`` (``ix``: its dim, metric, count, params)."""
    q = np.asarray(queries, np.float32)
    if q.ndim != 2 or q.shape[1] != ix.dim:
        raise ValueError(f"query vectors must be [n, {ix.dim}], got {list(q.shape)}")
    if not k >= 1:
        raise ValueError(f"k must be >= 1, got {k}")
    # at least 10 x refine candidates: a k=1 search must not rest on one PQ-ranked shortlist
    shortlist = max(k, 10) * (refine or ix.params["refine"])
    return parts.normalize(q, ix.metric), min(k, ix.count), shortlist
