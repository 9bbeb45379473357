"""Reading embedding shards and writing / reading index parts (numpy + pyarrow + faiss).

An index directory holds ``manifest.json``, ``trained.faiss`` (the trained, empty IVF-PQ
index: one coarse quantizer and one product quantizer for every part) and, per embedding
shard, ``parts/<name>.faiss`` (that shard's vectors encoded with the trained quantizers, with
labels ``first_label .. first_label + rows - 1``) and ``parts/<name>.parquet`` (id, length, the
metadata columns and the full vector used to re-rank candidates, one row per label, in order).
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ankh import storage
from ankh.storage import filesystem, join

TRAINED = "trained.faiss"


def list_shards(embeddings: str) -> list[str]:
    """The finished shard files of a jobs.embed output (``_``/``.``-prefixed names are not)."""
    fs, p = filesystem(embeddings)
    if not fs.isdir(p):
        raise FileNotFoundError(f"no embeddings directory {embeddings}")
    names = sorted(os.path.basename(f) for f in fs.glob(f"{p.rstrip('/')}/*.parquet"))
    return [join(embeddings, n) for n in names if not n.startswith(("_", "."))]


def shard_rows(path: str) -> int:
    fs, p = filesystem(path)
    with fs.open(p, "rb") as fh:
        return pq.ParquetFile(fh).metadata.num_rows


def read_table(path: str, columns: list[str] | None = None) -> pa.Table:
    return storage.read_parquet(path, columns)


def vectors(table: pa.Table, column: str = "embedding") -> np.ndarray:
    """``[rows, d]`` float32 from a ``fixed_size_list`` (or list) column."""
    col = table[column].combine_chunks()
    if len(col) == 0:
        size = getattr(col.type, "list_size", 0)
        return np.zeros((0, size), np.float32)
    flat = np.asarray(col.flatten().to_numpy(zero_copy_only=False), np.float32)
    return flat.reshape(len(col), -1)


def normalize(x: np.ndarray, metric: str) -> np.ndarray:
    x = np.ascontiguousarray(x, np.float32)
    if metric != "cosine":
        return x
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)  # a zero vector stays zero (scores 0 with everything)


def part_name(shard: str) -> str:
    """``<stem>-<8 hex of the shard's full path>``: two embedding directories' ``part-000``
    shards become two parts, and the same shard always the same part (a resumed build)."""
    stem = os.path.basename(shard).rsplit(".", 1)[0]
    return f"{stem}-{hashlib.sha1(storage.norm_path(shard).encode()).hexdigest()[:8]}"


def write_bytes(path: str, data: bytes) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    storage.atomic_write(path, write)


def read_bytes(path: str) -> bytes:
    fs, p = filesystem(path)
    with fs.open(p, "rb") as fh:
        return fh.read()


def write_table(path: str, table: pa.Table) -> None:
    storage.atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def vector_array(x: np.ndarray) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), pa.float32()), x.shape[1])


def part_paths(index: str, name: str) -> tuple[str, str]:
    return join(index, "parts", f"{name}.faiss"), join(index, "parts", f"{name}.parquet")
