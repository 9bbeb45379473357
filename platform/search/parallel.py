"""Encoding index parts, serially in-process or as Ray tasks (``jobs.index workers=``).

Given ``trained.faiss``, every part is independent: its labels are assigned before any work
starts (from the embedding shards' known row counts), so parts may finish in any order. The
driver alone writes the manifest: ``encode`` yields finished parts in label order, and a part
is committed only after every part before it, so the manifest is always a prefix of the plan
-- contiguous labels, a valid resumable state (``build.verify``) after every commit. Finished
parts waiting for a slower one are not yet committed; a kill loses them (they are redone), so
at most ``2 * workers`` parts are submitted past the first uncommitted one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from ankh_platform.search import parts

log = logging.getLogger(__name__)


def worker_count(requested: int, pending: int) -> int:
    """Ray tasks to run at once; 0 = serial in this process.

    ``requested`` -1 (the default) uses Ray only where it adds machines: a cluster is
    addressed (``RAY_ADDRESS``) or Ray already runs in this process -- then one task per CPU of
    the cluster. On one machine the serial build already encodes with every core (FAISS is
    OpenMP/BLAS-parallel), and a local Ray start costs seconds and memory.
    """
    if requested < -1:
        raise ValueError(f"workers must be -1 (auto), 0 (serial) or a count, got {requested}")
    if pending <= 1 or requested == 0:
        return 0
    if requested > 0:
        return requested
    ray = sys.modules.get("ray")  # not imported: not running here
    if not (os.environ.get("RAY_ADDRESS") or (ray is not None and ray.is_initialized())):
        return 0
    import ray

    from ankh_platform.core.runtime import init_ray

    init_ray()
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def encode_part(
    output: str, trained: bytes, source: dict, job: dict, meta_rows: pa.Table | None
) -> dict:
    """Encode one embedding shard as part ``job["name"]`` with labels ``job["first_label"]..``
    and write its two files (each published whole); returns its manifest entry."""
    import faiss

    table = parts.read_table(job["source"])
    x = parts.normalize(parts.vectors(table), source["metric"])
    if x.shape[1] != source["dim"] or len(x) != job["rows"]:
        raise ValueError(
            f"{job['source']}: {len(x)} vectors of dimension {x.shape[1]}; expected "
            f"{job['rows']} of dimension {source['dim']} (did the shard change during the build?)"
        )
    index = faiss.deserialize_index(np.frombuffer(trained, np.uint8))
    first = job["first_label"]
    index.add_with_ids(x, np.arange(first, first + len(x), dtype=np.int64))
    cols = {"id": table["id"].cast(pa.string()), "length": table["length"]}
    if meta_rows is not None:
        cols.update({c: meta_rows[c] for c in meta_rows.column_names})
    cols["vector"] = parts.vector_array(x)
    faiss_path, table_path = parts.part_paths(output, job["name"])
    parts.write_table(table_path, pa.table(cols))
    parts.write_bytes(faiss_path, faiss.serialize_index(index).tobytes())
    return {k: job[k] for k in ("name", "source", "rows", "first_label")}


def encode(
    output: str, trained: bytes, source: dict, plan: list[dict], meta, workers: int
) -> Iterator[dict]:
    """Every planned part, encoded and written; their manifest entries in label order.
    ``meta(job)`` gives a job's metadata rows (or None), taken only when it is submitted."""
    if workers == 0:
        for job in plan:
            yield encode_part(output, trained, source, job, meta(job))
        return
    import ray

    from ankh_platform.core.runtime import init_ray

    init_ray()
    task = ray.remote(num_cpus=1)(encode_part)
    trained_ref = ray.put(trained)  # one copy for every task
    inflight: dict = {}  # ObjectRef -> position in plan
    finished: dict[int, dict] = {}
    submitted = committed = 0
    log.info("encoding %d parts as Ray tasks, %d at a time", len(plan), workers)
    try:
        while committed < len(plan):
            while (
                submitted < len(plan)
                and len(inflight) < workers
                and submitted < committed + 2 * workers
            ):
                job = plan[submitted]
                ref = task.remote(output, trained_ref, source, job, meta(job))
                inflight[ref] = submitted
                submitted += 1
            ready, _ = ray.wait(list(inflight), num_returns=1)
            for ref in ready:
                finished[inflight.pop(ref)] = ray.get(ref)  # a task's error stops the build
            while committed in finished:
                yield finished.pop(committed)
                committed += 1
    finally:  # stopped (an error, a failed commit): nothing more is written for this run
        for ref in inflight:
            with contextlib.suppress(Exception):
                ray.cancel(ref)  # not force: a running write cleans up its temp
