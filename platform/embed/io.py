"""Inputs and outputs of the batch-embedding job: shards, FASTA rows, part files, merge.

Exactly-once by construction: model output is written as *part* files under
``<output>/_parts/<shard>/``; when every row of an input shard is accounted for, one task
merges its parts into ``<output>/<shard>.parquet`` (``ankh.storage.atomic_write``: the file
either exists complete or not at all) and deletes the parts. A re-run skips shards whose output exists
and discards stale parts of the others, so a killed job resumes without duplicates or gaps.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ankh.storage import atomic_write, filesystem, join

log = logging.getLogger(__name__)
FASTA_EXT = (".fasta.gz", ".fa.gz", ".faa.gz", ".fas.gz", ".fasta", ".fa", ".faa", ".fas")
PARTS = "_parts"
META_INVALID, META_NOTES = b"ankh.invalid", b"ankh.notes"


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
    raise ValueError(f"{path}: cannot tell the format from the name (use input_format=parquet|fasta)")


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
            paths = sorted(x for x in fs.ls(p, detail=False)
                           if x.lower().endswith((".parquet", *FASTA_EXT)))
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
            raise ValueError(f"two inputs map to the same output shard {s.stem!r}: "
                             f"{seen[s.stem]} and {s.path}")
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
                raise ValueError(f"{shard.path}: missing column(s) {sorted(missing)} "
                                 f"(have {f.schema_arrow.names})")
            return f.metadata.num_rows
    return sum(1 for _ in fasta_records(shard.path))


def count_all(shards: list[InputShard], threads: int = 16) -> dict[str, int]:
    with ThreadPoolExecutor(max(1, min(threads, len(shards)))) as ex:
        return dict(zip([s.stem for s in shards], ex.map(count_rows, shards)))


def read_batches(batch: dict, chunk: int = 4096) -> Iterator[dict]:
    """Ray Data UDF: rows ``id, sequence, path`` of each input file in the batch, streamed."""
    for path, fmt in zip(batch["path"], batch["fmt"]):
        path = str(path)
        if fmt == "parquet":
            fs, p = filesystem(path)
            with fs.open(p, "rb") as fh:
                for rb in pq.ParquetFile(fh).iter_batches(chunk, columns=["id", "sequence"]):
                    yield _rows(rb.column(0).cast(pa.string()).to_pylist(),
                                rb.column(1).to_pylist(), path)
            continue
        ids, seqs = [], []
        for ident, seq in fasta_records(path):
            ids.append(ident)
            seqs.append(seq)
            if len(ids) >= chunk:
                yield _rows(ids, seqs, path)
                ids, seqs = [], []
        if ids:
            yield _rows(ids, seqs, path)


def _rows(ids: list, seqs: list, path: str) -> dict:
    return {"id": np.array(ids, object), "sequence": np.array(seqs, object),
            "path": np.array([path] * len(ids), object)}


# ---- parts ---------------------------------------------------------------------------------
def _vectors(x: np.ndarray) -> pa.Array:
    x = np.ascontiguousarray(x)  # [n, e]
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])


def _residue_lists(arrs, dim: int, dtype=np.float32) -> pa.Array:
    arrs = [np.asarray(a, dtype).reshape(-1, dim) for a in arrs]
    offsets = np.concatenate([[0], np.cumsum([len(a) for a in arrs])]).astype(np.int32)
    flat = np.concatenate(arrs) if arrs else np.zeros((0, dim), dtype)
    return pa.ListArray.from_arrays(pa.array(offsets), _vectors(flat))


def _write_parquet(table: pa.Table, path: str) -> None:
    """Publish ``table`` at ``path`` whole or not at all (``ankh.storage.atomic_write``)."""
    atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def write_parts(batch: dict, output: str, run_id: str) -> dict:
    """Ray Data UDF: write this batch's rows as one part file per shard; return counters."""
    shard = np.asarray(batch["shard"], object)
    dim = batch["pooled"].shape[1]
    res: dict[str, list] = defaultdict(list)
    for s in sorted(set(shard.tolist())):
        idx = np.flatnonzero(shard == s)
        cols = {"id": pa.array(batch["id"][idx].tolist(), pa.string()),
                "length": pa.array(batch["length"][idx], pa.int32()),
                "win_start": pa.array(batch["win_start"][idx], pa.int32()),
                "n_win": pa.array(batch["n_win"][idx], pa.int32()),
                "pooled": _vectors(batch["pooled"][idx]),
                "error": pa.array(batch["error"][idx].tolist(), pa.string()),
                "note": pa.array(batch["note"][idx].tolist(), pa.string())}
        if "residues" in batch:
            cols["residues"] = _residue_lists(batch["residues"][idx], dim)
        part = join(output, PARTS, s, run_id, f"{uuid.uuid4().hex}.parquet")
        _write_parquet(pa.table(cols), part)
        first = batch["win_start"][idx] == 0
        ok = batch["error"][idx] == ""
        res["shard"].append(s)
        res["n_first"].append(int(first.sum()))
        res["n_expected"].append(int(batch["n_win"][idx][first].sum()))
        res["n_pieces"].append(len(idx))
        res["tokens"].append(int(batch["tokens"][idx].sum()))
        res["slots"].append(int(batch["slots"][idx].sum()))
        res["residues"].append(int(batch["length"][idx][first & ok].sum()))
        for k in ("model_s", "init_s", "call_s"):  # where the time went (job summary)
            res[k].append(float(batch[k][idx].sum()) if k in batch else 0.0)
        for k in ("ready_at", "done_at"):
            res[k].append(float(batch[k][idx].max()) if k in batch else 0.0)
        res["compiled"].append(int(batch["compiled"][idx].max()) if "compiled" in batch else 0)
    return {k: np.asarray(v) for k, v in res.items()}


# ---- merge ---------------------------------------------------------------------------------
def clear_parts(output: str, stem: str | None = None) -> None:
    """Remove a shard's part files (all runs), or the empty ``_parts`` folder (stem None)."""
    fs, p = filesystem(join(output, PARTS, stem) if stem else join(output, PARTS))
    if not fs.exists(p):
        return
    if stem:
        fs.rm(p, recursive=True)
    elif not fs.find(p):
        fs.rm(p, recursive=True)


def merge_shard(output: str, stem: str, run_id: str, expected: int, source: str, dim: int,
                width: int, overlap: int, out_dtype: str = "float32",
                extra_meta: dict | None = None) -> dict:
    """This run's parts of one shard -> ``<output>/<stem>.parquet``; windows combined.

    ``expected`` input rows must each end up as one embedding or one invalid entry; rows that
    repeat an id already kept are reported as invalid (duplicate ids), never dropped silently.
    """
    from ankh_platform.embed.pack import combine_windows

    fs, pdir = filesystem(join(output, PARTS, stem, run_id))
    files = sorted(fs.glob(f"{pdir}/*.parquet")) if fs.exists(pdir) else []
    tables = []
    for f in files:
        with fs.open(f, "rb") as fh:
            tables.append(pq.read_table(fh))
    t = pa.concat_tables(tables) if tables else None
    rows = t.to_pydict() if t is not None else {}
    per_res = "residues" in rows
    invalid, notes, seen, dups = [], [], set(), []
    keep: dict[str, dict] = {}
    for i, ident in enumerate(rows.get("id", [])):
        if rows["error"][i]:
            invalid.append({"id": ident, "reason": rows["error"][i]})
            continue
        key = (ident, rows["win_start"][i])
        if key in seen:  # a duplicate id in the input, or a piece written twice by a retried task
            if rows["win_start"][i] == 0:
                dups.append(ident)
            continue
        seen.add(key)
        if rows["note"][i]:
            notes.append({"id": ident, "note": rows["note"][i]})
        k = keep.setdefault(ident, {"length": rows["length"][i], "n_win": rows["n_win"][i],
                                    "pooled": [], "starts": [], "res": []})
        k["pooled"].append(np.asarray(rows["pooled"][i], np.float64))
        k["starts"].append(rows["win_start"][i])
        if per_res:
            k["res"].append(np.asarray(rows["residues"][i], np.float32))
    incomplete = [i for i, k in keep.items() if len(k["starts"]) != k["n_win"]]
    if incomplete:
        raise RuntimeError(f"shard {stem}: windows missing for {incomplete[:5]}")
    ids = sorted(keep)
    missing = expected - len(ids) - len(invalid)
    if missing < 0 or missing > len(dups):
        raise RuntimeError(f"shard {stem}: {expected} input rows but {len(ids)} embedded and "
                           f"{len(invalid)} invalid")
    invalid += [{"id": d, "reason": "duplicate id in this shard (one row kept)"}
                for d in dups[:missing]]
    np_dtype = np.float16 if out_dtype == "float16" else np.float32
    pooled = np.stack([np.sum(keep[i]["pooled"], 0) for i in ids]).astype(np_dtype) if ids \
        else np.zeros((0, dim), np_dtype)
    cols = {"id": pa.array(ids, pa.string()),
            "length": pa.array([keep[i]["length"] for i in ids], pa.int32()),
            "embedding": _vectors(pooled)}
    if per_res:
        res = [_one_residue(keep[i], width, overlap, combine_windows) for i in ids]
        cols["per_residue"] = _residue_lists(res, dim, np_dtype)
    meta = {META_INVALID: json.dumps(invalid).encode(), META_NOTES: json.dumps(notes).encode(),
            b"ankh.source": source.encode()}
    meta.update({k.encode(): str(v).encode() for k, v in (extra_meta or {}).items()})
    table = pa.table(cols).replace_schema_metadata(meta)
    _write_parquet(table, join(output, f"{stem}.parquet"))
    if fs.exists(pdir):
        fs.rm(pdir, recursive=True)  # only this run's parts (a stale run's task cannot hurt ours)
    return {"shard": stem, "sequences": len(ids), "invalid": invalid, "notes": notes,
            "residues": int(sum(keep[i]["length"] for i in ids))}


def _one_residue(k: dict, width: int, overlap: int, combine) -> np.ndarray:
    if k["n_win"] == 1:
        return k["res"][0]
    order = np.argsort(k["starts"])
    return combine(k["length"], width, overlap, [k["starts"][j] for j in order],
                   [k["res"][j] for j in order])


def shard_report(output: str, stem: str) -> dict:
    """Invalid ids and notes stored in a finished shard's footer (for a resumed run's summary)."""
    fs, p = filesystem(join(output, f"{stem}.parquet"))
    with fs.open(p, "rb") as fh:
        f = pq.ParquetFile(fh)
        meta = f.schema_arrow.metadata or {}
        n = f.metadata.num_rows
    return {"shard": stem, "sequences": n, "invalid": json.loads(meta.get(META_INVALID, b"[]")),
            "notes": json.loads(meta.get(META_NOTES, b"[]"))}
