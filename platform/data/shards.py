"""The Parquet shards a data path names: which files, their row counts and each file's first
``example_id`` (the sorted-file numbering every worker shares), an epoch's file order and a
rank's contiguous range of it (``ankh_platform.data.pipeline``'s streaming reads these)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from ankh.seeds import derive_seed
from ankh.storage import filesystem
from ankh_platform.core.samples import repo_path


@dataclasses.dataclass(frozen=True)
class ParquetShard:
    path: str  # as the filesystem names it
    rows: int
    offset: int  # first example_id of this file (sorted order)


def list_shards(paths: Iterable[str]) -> tuple[Any, list[ParquetShard]]:
    """Sorted Parquet files under ``paths`` with row counts (from the Parquet footers)."""
    fs = None
    files: list[str] = []
    for p in paths:
        p = repo_path(p)  # a relative default (the bundled sample) works from any directory
        pfs, pp = filesystem(p)
        if fs is not None and type(pfs) is not type(fs):
            raise ValueError(
                "all data paths must be on the same filesystem (all local or all gs://)"
            )
        fs = pfs
        if any(c in pp for c in "*?["):
            found = pfs.glob(pp)
        elif pfs.isdir(pp):
            found = pfs.find(pp)
        elif pfs.exists(pp):
            found = [pp]
        else:
            raise FileNotFoundError(f"data path {p} does not exist")
        files += [
            f
            for f in found
            if f.endswith(".parquet") and not f.rsplit("/", 1)[-1].startswith(("_", "."))
        ]
    files = sorted(set(files))
    if not files:
        raise FileNotFoundError(f"no .parquet files under {list(paths)}")
    from concurrent.futures import ThreadPoolExecutor

    def rows(f: str) -> int:
        with fs.open(f, "rb") as fh:
            return pq.ParquetFile(fh).metadata.num_rows

    with ThreadPoolExecutor(8) as ex:
        counts = list(ex.map(rows, files))
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int)
    return fs, [ParquetShard(f, int(n), int(o)) for f, n, o in zip(files, counts, offsets)]


def epoch_order(
    shards: list[ParquetShard], seed: int, epoch: int, shuffle: bool
) -> list[ParquetShard]:
    if not shuffle:
        return list(shards)
    perm = np.random.default_rng(derive_seed(seed, "file-order", epoch)).permutation(len(shards))
    return [shards[i] for i in perm]


def rank_range(total: int, rank: int, world: int) -> tuple[int, int]:
    """Contiguous, balanced slice ``[start, end)`` of an epoch's rows for ``rank``."""
    return total * rank // world, total * (rank + 1) // world
