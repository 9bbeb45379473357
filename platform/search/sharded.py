"""An index too large for one process: N shards (groups of parts), each a Ray actor.

``ShardedIndex(path, shards=N)`` splits the index's parts, in label order, into ``N``
contiguous groups of about equal rows; each group is opened by its own actor (a
``SearchIndex`` over those parts: their PQ codes, full vectors, ids and metadata), placed by
Ray where its memory fits (``memory=`` request, ``SPREAD`` over nodes). A query fans out to
every shard; each returns its PQ shortlist (``max(k, 10) * refine`` best by PQ score, with the
exact score of each); the driver keeps the global shortlist -- the best by PQ score across
shards, ties by label -- and ranks it by exact score, ties by label. That is the candidate set
and the order one ``SearchIndex`` over all parts computes (the parts share one quantizer, so a
vector's PQ score does not depend on which process holds it): the results are the same.
"""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pyarrow as pa

from ankh_platform.search import manifest as mf
from ankh_platform.search.index import SearchIndex, prepare, top_k

log = logging.getLogger(__name__)
# RSS of a process opening an index, per byte it holds (docs/search.md, "Scale": at 1M
# vectors ~1.5x once open, ~1.8x at the peak while opening, rounded up): what a shard asks for
OPEN_OVERHEAD = 2.0


def plan_shards(manifest: dict, shards: int) -> list[tuple[int, int]]:
    """``shards`` contiguous ranges of the parts (in label order) with about equal rows."""
    ordered = sorted(manifest["parts"], key=lambda p: p["first_label"])
    if not 1 <= shards <= len(ordered):
        raise ValueError(
            f"shards={shards}, but the index has {len(ordered)} parts (a shard holds whole "
            "parts: build from more, smaller embedding shards to split it further)"
        )
    ends = np.cumsum([p["rows"] for p in ordered])
    cuts = [0]
    for s in range(1, shards):
        # the first part boundary at or past s/shards of the rows, leaving a part per shard left
        at = int(np.searchsorted(ends, ends[-1] * s / shards)) + 1
        cuts.append(min(max(at, cuts[-1] + 1), len(ordered) - (shards - s)))
    cuts.append(len(ordered))
    return list(itertools.pairwise(cuts))


def held_bytes(manifest: dict, rows: int) -> int:
    """What a process holding ``rows`` vectors keeps: full vectors, PQ codes + labels, ids."""
    p = manifest["index"]
    return rows * (4 * manifest["source"]["dim"] + p["pq_m"] * p["pq_bits"] // 8 + 8 + 32)


class IndexShard:
    """The actor body: one group of parts, searched and read on the driver's behalf."""

    def __init__(self, path: str, lo: int, hi: int):
        self.ix = SearchIndex(path, (lo, hi))

    def info(self) -> tuple[int, int]:
        return self.ix.first, self.ix.count

    def candidates(self, q: np.ndarray, shortlist: int, nprobe: int):
        return self.ix.candidates(q, shortlist, nprobe)

    def rows(self, labels: np.ndarray) -> pa.Table:
        return self.ix.rows(labels)


class ShardedIndex:
    """``SearchIndex``'s interface (search, rows, source, dim, columns, count) over shards."""

    def __init__(self, path: str, shards: int, cpus: float = 1.0):
        import ray

        from ankh_platform.core.runtime import init_ray

        init_ray()
        self.path, self.manifest = path, (m := mf.require(path))
        self.source, self.params = m["source"], m["index"]
        self.dim, self.metric, self.count = self.source["dim"], self.source["metric"], m["count"]
        self.columns = list(m["metadata_columns"])
        ordered = sorted(m["parts"], key=lambda p: p["first_label"])
        actor = ray.remote(IndexShard)
        self.actors = []
        for lo, hi in plan_shards(m, shards):
            need = held_bytes(m, sum(p["rows"] for p in ordered[lo:hi])) * OPEN_OVERHEAD
            opts = {"num_cpus": cpus, "memory": int(need), "scheduling_strategy": "SPREAD"}
            self.actors.append(actor.options(**opts).remote(path, lo, hi))
        info = ray.get([a.info.remote() for a in self.actors])  # every shard opened, or raises
        self.firsts = np.array([f for f, _ in info], np.int64)
        log.info("%s opened as %d shards: %s", path, shards, info)

    def search(
        self, queries: np.ndarray, k: int, nprobe: int = 0, refine: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        import ray

        q, k, shortlist = prepare(self, queries, k, refine)
        if k == 0 or len(q) == 0:
            return np.zeros((len(q), k), np.float32), np.zeros((len(q), k), np.int64)
        q_ref = ray.put(q)  # one copy in the object store, read by every shard
        got = ray.get([a.candidates.remote(q_ref, shortlist, nprobe) for a in self.actors])
        pq, cand, exact = (np.concatenate([g[i] for g in got], axis=1) for i in range(3))
        # the global PQ shortlist: what one index over all parts would have proposed
        keep = np.lexsort((cand, -pq), axis=1)[:, : min(shortlist, self.count)]
        cand, exact = np.take_along_axis(cand, keep, 1), np.take_along_axis(exact, keep, 1)
        return top_k(cand, exact, k)

    def rows(self, labels: np.ndarray) -> pa.Table:
        """id, length and the metadata columns of ``labels`` (``-1``: null row), from the
        shards that hold them."""
        import ray

        flat = np.asarray(labels, np.int64).reshape(-1)
        owner = np.searchsorted(self.firsts, flat, side="right") - 1
        asks = {s: np.nonzero((owner == s) & (flat >= 0))[0] for s in range(len(self.actors))}
        asks = {s: at for s, at in asks.items() if len(at)}
        tables = ray.get([self.actors[s].rows.remote(flat[at]) for s, at in asks.items()])
        if not tables:  # nothing but -1: one null row each, of the index's schema
            return ray.get(self.actors[0].rows.remote(flat))
        got = pa.concat_tables(tables)
        where = np.full(len(flat), -1, np.int64)
        where[np.concatenate(list(asks.values()))] = np.arange(got.num_rows)
        return got.take(pa.array(where, pa.int64(), mask=where < 0))

    def close(self) -> None:
        """End the shard actors (their memory is freed at once, not when the driver exits)."""
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []

    def __enter__(self) -> ShardedIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
