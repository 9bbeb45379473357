"""Inputs of the batch-embedding job: shards, FASTA and Parquet rows, the row keys.

Every input row is named by its input file's stem and its position in that file (``row_key``),
deterministic from the input rather than from a run, so the part files of
``ankh_platform.embed.outputs`` can say which rows are done whatever run wrote them, and a
resumed run reads only the rows they lack (``read_batches``' skip ranges).
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ankh.storage import filesystem

FASTA_EXT = (".fasta.gz", ".fa.gz", ".faa.gz", ".fas.gz", ".fasta", ".fa", ".faa", ".fas")


@dataclasses.dataclass(frozen=True)
class InputShard:
    path: str  # as the user named it (local path or gs:// URL)
    stem: str  # output name: <output>/<stem>.parquet
    fmt: str  # parquet | fasta


def shard_stem(path: str) -> str:
    name = os.path.basename(str(path).rstrip("/"))
    for ext in (".parquet", *FASTA_EXT):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def _format_of(path: str, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    low = path.lower()
    if low.endswith(".parquet"):
        return "parquet"
    if low.endswith(FASTA_EXT):
        return "fasta"
    raise ValueError(
        f"{path}: cannot tell the format from the name (use input_format=parquet|fasta)"
    )


def discover(spec: str, fmt: str = "auto") -> list[InputShard]:
    """Shards from a file, a directory (its *.parquet / FASTA files), a glob, or a comma list."""
    out: list[InputShard] = []
    for item in [s for s in str(spec).split(",") if s.strip()]:
        item = item.strip()
        fs, p = filesystem(item)
        prefix = item.split("://", 1)[0] + "://" if "://" in item else ""
        if any(c in p for c in "*?["):
            paths = sorted(fs.glob(p))
        elif fs.isdir(p):
            paths = sorted(
                x for x in fs.ls(p, detail=False) if x.lower().endswith((".parquet", *FASTA_EXT))
            )
        elif fs.exists(p):
            paths = [p]
        else:
            raise FileNotFoundError(f"input {item!r} does not exist")
        for x in paths:
            full = prefix + x if prefix and not x.startswith(prefix) else x
            out.append(InputShard(full, shard_stem(full), _format_of(full, fmt)))
    if not out:
        raise FileNotFoundError(f"no Parquet or FASTA files found in {spec!r}")
    seen: dict[str, str] = {}
    for s in out:
        if s.stem in seen:
            raise ValueError(
                f"two inputs map to the same output shard {s.stem!r}: {seen[s.stem]} and {s.path}"
            )
        seen[s.stem] = s.path
    return out


# ---- FASTA ---------------------------------------------------------------------------------
def fasta_records(path: str) -> Iterator[tuple[str, str]]:
    """``(id, raw sequence)`` per record, read by ``data.fasta.records`` (comments and blank lines
    skipped); data before the first '>' is one record with id ''; undecodable header bytes are
    kept as ``\\xNN`` escapes (lossless, so ids never collide)."""
    from ankh_platform.data.fasta import escape_undecodable, parse_id, read_records

    for title, seq in read_records(path):
        yield escape_undecodable(parse_id(title or "")), seq


def count_rows(shard: InputShard) -> int:
    """Input rows of a shard: Parquet footer, or FASTA records (same rules as ``fasta_records``)."""
    fs, p = filesystem(shard.path)
    if shard.fmt == "parquet":
        with fs.open(p, "rb") as fh:
            f = pq.ParquetFile(fh)
            missing = {"id", "sequence"} - set(f.schema_arrow.names)
            if missing:
                raise ValueError(
                    f"{shard.path}: missing column(s) {sorted(missing)} "
                    f"(have {f.schema_arrow.names})"
                )
            return f.metadata.num_rows
    return sum(1 for _ in fasta_records(shard.path))


def count_all(shards: list[InputShard], threads: int = 16) -> dict[str, int]:
    with ThreadPoolExecutor(max(1, min(threads, len(shards)))) as ex:
        return dict(zip([s.stem for s in shards], ex.map(count_rows, shards)))


def input_chunks(path: str, fmt: str, chunk: int) -> Iterator[tuple[int, list, list]]:
    """``(first row, ids, sequences)`` of one input file in order (row = position in the file)."""
    if fmt == "parquet":
        fs, p = filesystem(path)
        row = 0
        with fs.open(p, "rb") as fh:
            for rb in pq.ParquetFile(fh).iter_batches(chunk, columns=["id", "sequence"]):
                yield row, rb.column(0).cast(pa.string()).to_pylist(), rb.column(1).to_pylist()
                row += rb.num_rows
        return
    # gzip cannot seek: resuming "from row k" re-parses the file from its start (cheap next
    # to embedding; docs/batch-embedding.md has the measurement)
    row, ids, seqs = 0, [], []
    for ident, seq in fasta_records(path):
        ids.append(ident)
        seqs.append(seq)
        if len(ids) >= chunk:
            yield row, ids, seqs
            row, ids, seqs = row + len(ids), [], []
    if ids:
        yield row, ids, seqs


def read_batches(batch: dict, chunk: int = 4096) -> Iterator[dict]:
    """Ray Data UDF: rows ``id, sequence, path, row`` of each input file in the batch, streamed;
    rows in the file's ``skip`` ranges (JSON ``[[start, end), ...]``, done by a killed run)
    left out."""
    skips = batch["skip"] if "skip" in batch else [""] * len(batch["path"])
    for path, fmt, skip in zip(batch["path"], batch["fmt"], skips):
        path, ranges = str(path), json.loads(str(skip) or "[]")
        done = _in_ranges(ranges)
        for first, ids, seqs in input_chunks(path, str(fmt), chunk):
            rows = np.arange(first, first + len(ids), dtype=np.int64)
            if ranges:
                keep = [k for k, r in enumerate(rows.tolist()) if not done(r)]
                if not keep:
                    continue
                rows, ids, seqs = rows[keep], [ids[k] for k in keep], [seqs[k] for k in keep]
            yield {
                "id": np.array(ids, object),
                "sequence": np.array(seqs, object),
                "row": rows,
                "path": np.array([path] * len(ids), object),
            }


def _in_ranges(ranges: list) -> Callable[[int], bool]:
    starts = [a for a, _ in ranges]

    def inside(row: int) -> bool:
        i = bisect.bisect_right(starts, row) - 1
        return i >= 0 and row < ranges[i][1]

    return inside


def to_ranges(rows) -> list[list[int]]:
    """Sorted row numbers -> ``[[start, end), ...]`` (compact: a killed run leaves few gaps)."""
    out: list[list[int]] = []
    for r in sorted(rows):
        if out and out[-1][1] == r:
            out[-1][1] = r + 1
        else:
            out.append([r, r + 1])
    return out


def row_key(stem: str, row: int) -> str:
    """The key a record travels under through pack and replica: its shard and input row
    (a stem is a file name, so it holds no ``/``)."""
    return f"{stem}/{int(row)}"


def split_key(key: str) -> tuple[str, int]:
    stem, row = str(key).rsplit("/", 1)
    return stem, int(row)
