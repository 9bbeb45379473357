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


class SearchIndex:
    """``SearchIndex(path).search(vectors, k)`` -> ``(scores [q, k], labels [q, k])``."""

    def __init__(self, path: str):
        import faiss

        self.path = path
        self.manifest = m = mf.require(path)
        self.source, self.params = m["source"], m["index"]
        self.dim, self.metric, self.count = self.source["dim"], self.source["metric"], m["count"]
        trained = parts.read_bytes(join(path, parts.TRAINED))
        self.ivf = faiss.deserialize_index(np.frombuffer(trained, np.uint8))
        tables = []
        for p in sorted(m["parts"], key=lambda p: p["first_label"]):
            fpath, tpath = parts.part_paths(path, p["name"])
            part = faiss.deserialize_index(np.frombuffer(parts.read_bytes(fpath), np.uint8))
            self.ivf.merge_from(part, 0)  # labels are global already
            tables.append(parts.read_table(tpath))
        if self.ivf.ntotal != self.count:
            raise RuntimeError(
                f"{path}: parts hold {self.ivf.ntotal} vectors, manifest {m['count']}"
            )
        table = pa.concat_tables(tables) if tables else None
        self.vectors = (
            parts.vectors(table, "vector") if table else np.zeros((0, self.dim), np.float32)
        )
        self.table = table.drop_columns(["vector"]) if table else None
        self.columns = list(m["metadata_columns"])

    def search(
        self, queries: np.ndarray, k: int, nprobe: int = 0, refine: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ``min(k, count)`` best targets per query, best first: exact scores and labels
        (``nprobe`` lists visited, ``max(k, 10) * refine`` candidates re-ranked; 0 = the
        index's defaults)."""
        q = np.asarray(queries, np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"query vectors must be [n, {self.dim}], got {list(q.shape)}")
        if not k >= 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = parts.normalize(q, self.metric)
        k = min(k, self.count)
        if k == 0 or len(q) == 0:
            return np.zeros((len(q), k), np.float32), np.zeros((len(q), k), np.int64)
        self.ivf.nprobe = min(nprobe or self.params["nprobe"], self.params["nlist"])
        # at least 10 x refine candidates: a k=1 search must not rest on one PQ-ranked shortlist
        shortlist = max(k, 10) * (refine or self.params["refine"])
        _, cand = self.ivf.search(q, min(self.count, shortlist))
        exact = np.einsum("qcd,qd->qc", self.vectors[np.maximum(cand, 0)], q)
        exact[cand < 0] = -np.inf  # fewer candidates than asked (sparse lists)
        # best first; equal scores in label order, so results never depend on list order
        order = np.lexsort((cand, -exact), axis=1)[:, :k]
        labels = np.take_along_axis(cand, order, 1)
        scores = np.take_along_axis(exact, order, 1).astype(np.float32)
        return scores, labels

    def rows(self, labels: np.ndarray) -> pa.Table:
        """id, length and the metadata columns of ``labels`` (``-1``: null row)."""
        take = pa.array(labels.reshape(-1), pa.int64(), mask=labels.reshape(-1) < 0)
        return self.table.take(take)

    def exact(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Brute-force search over the same full vectors (what recall is measured against)."""
        q = parts.normalize(np.asarray(queries, np.float32), self.metric)
        s = q @ self.vectors.T
        k = min(k, self.count)
        order = np.argsort(-s, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(s, order, 1), order.astype(np.int64)
