"""Outputs of the batch-embedding job: part files, the exactly-once merge, shard reports.

Exactly-once by construction: model output is written as *part* files under
``<output>/_parts/<shard>/`` (each published whole by ``ankh.storage.atomic_write``); every
part row carries its input row number (``row``: the record's position in the input file, so
deterministic from the input, not from a run; ``ankh_platform.embed.inputs``), and the file
name shows the range (``rows-<first>-<last>-<uid>.parquet``). When every row of an input shard
is accounted for, one task merges its parts into ``<output>/<shard>.parquet`` -- after checking
that the parts cover each input row exactly once -- and deletes the parts. A re-run skips shards
whose output exists and, within the others, the rows finished parts already hold
(``done_rows``), so a killed job redoes at most the batches that were in flight, without
duplicates or gaps.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ankh.storage import atomic_write, filesystem, join
from ankh_platform.embed.inputs import InputShard, split_key

PARTS = "_parts"
INPUT_FACTS = "_input.json"  # beside a shard's parts: the input they were made from
META_INVALID, META_NOTES = b"ankh.invalid", b"ankh.notes"


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


def write_parts(batch: dict, output: str) -> dict:
    """Ray Data UDF: write this batch's rows as one part file per shard; return counters.

    ``batch["shard"]`` holds ``row_key``s; a part keeps each piece's input row, and its name
    the row range, so a re-run can tell which rows are done whatever run wrote them.
    """
    keys = [split_key(k) for k in batch["shard"].tolist()]
    shard = np.asarray([k[0] for k in keys], object)
    rows = np.asarray([k[1] for k in keys], np.int64)
    dim = batch["pooled"].shape[1]
    res: dict[str, list] = defaultdict(list)
    for s in sorted(set(shard.tolist())):
        idx = np.flatnonzero(shard == s)
        cols = {
            "row": pa.array(rows[idx], pa.int64()),
            "id": pa.array(batch["id"][idx].tolist(), pa.string()),
            "length": pa.array(batch["length"][idx], pa.int32()),
            "win_start": pa.array(batch["win_start"][idx], pa.int32()),
            "n_win": pa.array(batch["n_win"][idx], pa.int32()),
            "pooled": _vectors(batch["pooled"][idx]),
            "error": pa.array(batch["error"][idx].tolist(), pa.string()),
            "note": pa.array(batch["note"][idx].tolist(), pa.string()),
        }
        if "residues" in batch:
            cols["residues"] = _residue_lists(batch["residues"][idx], dim)
        lo, hi = int(rows[idx].min()), int(rows[idx].max())
        part = join(output, PARTS, s, f"rows-{lo:010d}-{hi:010d}-{uuid.uuid4().hex[:12]}.parquet")
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


def check_settings(output: str, want: dict) -> None:
    """Refuse to mix results of different settings in one output directory: the first run
    records ``want`` in ``<output>/_job.json``, a later one must match it."""
    fs, p = filesystem(join(output, "_job.json"))
    if fs.exists(p):
        with fs.open(p) as fh:
            have = json.load(fh)
        diff = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
        if diff:
            raise ValueError(
                f"{output} holds results of other settings {diff} "
                "(old, new); use another output directory"
            )
    else:
        fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
        with fs.open(p, "w") as fh:
            json.dump(want, fh)


# ---- merge ---------------------------------------------------------------------------------
def clear_parts(output: str, stem: str | None = None) -> None:
    """Remove a shard's part files, or the empty ``_parts`` folder (stem None)."""
    fs, p = filesystem(join(output, PARTS, stem) if stem else join(output, PARTS))
    if not fs.exists(p):
        return
    if stem or not fs.find(p):
        fs.rm(p, recursive=True)


def read_parts(output: str, stem: str, columns: list[str] | None = None) -> dict:
    """Every finished part of a shard (whatever run wrote it) as one column dict."""
    fs, pdir = filesystem(join(output, PARTS, stem))
    files = sorted(fs.glob(f"{pdir}/*.parquet")) if fs.exists(pdir) else []  # not .tmp- files
    tables = []
    for f in files:
        with fs.open(f, "rb") as fh:
            pf = pq.ParquetFile(fh)
            # parts of whole records (the prediction job's) have no window columns
            cols = [c for c in columns if c in pf.schema_arrow.names] if columns else None
            tables.append(pf.read(columns=cols))
    return pa.concat_tables(tables).to_pydict() if tables else {}


def rows_by_input(rows: dict) -> dict[int, dict]:
    """Input row -> its id, error, window count and pieces ``{win_start: index}``; a piece
    written twice (a retried task, or a batch redone after a kill) counts once. Parts without
    window columns hold one piece per row (the prediction job's whole records)."""
    out: dict[int, dict] = {}
    n = len(rows.get("row", []))
    n_win, starts = rows.get("n_win", [1] * n), rows.get("win_start", [0] * n)
    for i, r in enumerate(rows.get("row", [])):
        e = out.setdefault(
            r, {"id": rows["id"][i], "error": rows["error"][i], "n_win": n_win[i], "win": {}}
        )
        e["win"].setdefault(starts[i], i)
    return out


def complete_rows(rows: dict, expected: int, stem: str) -> dict[int, dict]:
    """``rows_by_input`` of a shard's parts, checked to cover input rows ``0..expected-1``
    exactly once (each row all its pieces, or its error); else an error naming the gaps."""
    by_row = rows_by_input(rows)
    done = {r for r, e in by_row.items() if _complete(e)}
    if done != set(range(expected)):
        missing, extra = sorted(set(range(expected)) - done), sorted(done - set(range(expected)))
        raise RuntimeError(
            f"shard {stem}: parts do not cover input rows 0..{expected - 1} "
            f"exactly once: {len(missing)} missing {missing[:5]}, "
            f"{len(extra)} unexpected {extra[:5]}"
        )
    return by_row


def _complete(e: dict) -> bool:
    return bool(e["error"]) or len(e["win"]) == e["n_win"]


def done_rows(output: str, stem: str) -> list[int]:
    """Input rows whose outcome (all windows, or the error) finished parts already hold."""
    rows = read_parts(output, stem, ["row", "id", "win_start", "n_win", "error"])
    return sorted(r for r, e in rows_by_input(rows).items() if _complete(e))


def resume_rows(output: str, shard: InputShard, rows: int) -> list[int]:
    """Rows of ``shard`` done by an earlier run; parts made from another input are discarded."""
    fs, p = filesystem(join(output, PARTS, shard.stem, INPUT_FACTS))
    sfs, sp = filesystem(shard.path)
    facts = {"source": shard.path, "size": sfs.info(sp).get("size"), "rows": rows}
    if fs.exists(p) and json.loads(fs.cat_file(p)) == facts:
        return done_rows(output, shard.stem)
    clear_parts(output, shard.stem)
    fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(p, json.dumps(facts).encode())
    return []


def pending_shards(output: str, shards: list[InputShard]) -> tuple[list, dict, dict]:
    """What a (re-)run over ``output`` still has to do: ``(pending shards, their row counts,
    rows each already holds in parts)``. Shards merged by an earlier run are skipped (their
    leftover parts removed: killed between merge and clean-up), unfinished writes dropped."""
    from ankh import storage
    from ankh_platform.embed import inputs

    storage.remove_stale_temps(output)  # unfinished merges of a killed run
    ofs, _ = filesystem(output)
    done = [s for s in shards if ofs.exists(filesystem(join(output, f"{s.stem}.parquet"))[1])]
    pending = [s for s in shards if s not in done]
    for s in done:
        clear_parts(output, s.stem)
    counts = inputs.count_all(pending)
    # rows finished parts of a killed run hold: kept, only the rest is done again
    resumed = {s.stem: resume_rows(output, s, counts[s.stem]) for s in pending}
    return pending, counts, resumed


def merge_shard(
    output: str,
    stem: str,
    expected: int,
    source: str,
    dim: int,
    width: int,
    overlap: int,
    out_dtype: str = "float32",
    extra_meta: dict | None = None,
) -> dict:
    """The parts of one shard -> ``<output>/<stem>.parquet``; windows combined.

    The parts must cover input rows ``0..expected-1`` exactly once (each one embedding or one
    invalid entry), else nothing is written; a row repeating an id of an earlier row is
    reported as invalid (duplicate id, naming the row kept), never merged silently.
    """
    from ankh_platform.embed.pack import combine_windows

    rows = read_parts(output, stem)
    by_row = complete_rows(rows, expected, stem)
    per_res = "residues" in rows
    invalid, notes, keep, first = [], [], {}, {}
    for r in sorted(by_row):
        e, ident = by_row[r], by_row[r]["id"]
        if e["error"] or ident in first:
            why = e["error"] or f"duplicate id in this shard (row {first[ident]} kept)"
            invalid.append({"id": ident, "row": r, "reason": why})
            continue
        first[ident] = r
        starts = sorted(e["win"])
        idx = [e["win"][w] for w in starts]
        if rows["note"][idx[0]]:
            notes.append({"id": ident, "note": rows["note"][idx[0]]})
        keep[ident] = {
            "length": rows["length"][idx[0]],
            "n_win": e["n_win"],
            "starts": starts,
            "pooled": [np.asarray(rows["pooled"][i], np.float64) for i in idx],
            "res": [np.asarray(rows["residues"][i], np.float32) for i in idx] if per_res else [],
        }
    ids = sorted(keep)
    np_dtype = np.float16 if out_dtype == "float16" else np.float32
    pooled = (
        np.stack([np.sum(keep[i]["pooled"], 0) for i in ids]).astype(np_dtype)
        if ids
        else np.zeros((0, dim), np_dtype)
    )
    cols = {
        "id": pa.array(ids, pa.string()),
        "length": pa.array([keep[i]["length"] for i in ids], pa.int32()),
        "embedding": _vectors(pooled),
    }
    if per_res:
        res = [_one_residue(keep[i], width, overlap, combine_windows) for i in ids]
        cols["per_residue"] = _residue_lists(res, dim, np_dtype)
    meta = {
        META_INVALID: json.dumps(invalid).encode(),
        META_NOTES: json.dumps(notes).encode(),
        b"ankh.source": source.encode(),
    }
    meta.update({k.encode(): str(v).encode() for k, v in (extra_meta or {}).items()})
    table = pa.table(cols).replace_schema_metadata(meta)
    _write_parquet(table, join(output, f"{stem}.parquet"))
    clear_parts(output, stem)
    return {
        "shard": stem,
        "sequences": len(ids),
        "invalid": invalid,
        "notes": notes,
        "residues": int(sum(keep[i]["length"] for i in ids)),
    }


def _one_residue(k: dict, width: int, overlap: int, combine) -> np.ndarray:
    if k["n_win"] == 1:
        return k["res"][0]
    order = np.argsort(k["starts"])
    return combine(
        k["length"], width, overlap, [k["starts"][j] for j in order], [k["res"][j] for j in order]
    )


def shard_report(output: str, stem: str) -> dict:
    """Invalid ids and notes stored in a finished shard's footer (for a resumed run's summary)."""
    fs, p = filesystem(join(output, f"{stem}.parquet"))
    with fs.open(p, "rb") as fh:
        f = pq.ParquetFile(fh)
        meta = f.schema_arrow.metadata or {}
        n = f.metadata.num_rows
    return {
        "shard": stem,
        "sequences": n,
        "invalid": json.loads(meta.get(META_INVALID, b"[]")),
        "notes": json.loads(meta.get(META_NOTES, b"[]")),
    }
