"""``jobs.predict``'s workers: the predictor replica, the part writer and the per-shard merge.

The batch-embedding job's bookkeeping (``ankh_platform.embed.outputs``), for whole records: a
replica predicts a group of input rows (``id, sequence, row, path`` from
``embed.inputs.read_batches``), every row one prediction or one rejection; ``write_parts``
publishes them as part files under ``<output>/_parts/<shard>/`` (each whole, carrying its input
rows), and ``merge_shard`` -- once the parts cover every input row of the shard exactly once --
writes ``<output>/<shard>.parquet`` (rows in input order, the rejected in its footer) whole or
not at all, then removes the parts. A killed run's finished parts are kept: the next run reads
only the rows they lack.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ankh.storage import atomic_write, join
from ankh_platform.embed import inputs, outputs


class PredictReplica:
    """One predictor (a Ray actor, or the driver itself in process): loads the run once."""

    def __init__(self, run: str, batch_size: int):
        from ankh_platform.finetune.predict import Predictor

        t0 = time.perf_counter()
        self.pred = Predictor(run, batch_size)
        self.init_s = time.perf_counter() - t0  # reported once, with the first batch

    def __call__(self, batch: dict) -> dict:
        ids = [None if i is None else str(i) for i in batch["id"].tolist()]
        seqs = batch["sequence"].tolist()
        t0 = time.perf_counter()
        recs, why = self.pred.records(ids, seqs)
        n = len(ids)
        # a record travels as JSON: its shape depends on the task (letters, names, a value)
        out = {
            "shard": np.asarray(
                [
                    inputs.row_key(inputs.shard_stem(p), r)
                    for p, r in zip(batch["path"].tolist(), batch["row"].tolist())
                ],
                object,
            ),
            "id": np.asarray(ids, object),
            "sequence": np.asarray([s if isinstance(s, str) else None for s in seqs], object),
            "error": np.asarray(why, object),
            "record": np.asarray(["" if r is None else json.dumps(r) for r in recs], object),
            "model_s": np.zeros(n, np.float64),
            "init_s": np.zeros(n, np.float64),
        }
        if n:
            out["model_s"][0] = time.perf_counter() - t0
            out["init_s"][0], self.init_s = self.init_s, 0.0
        return out


_PART_TEXT = ("id", "sequence", "error", "record")  # beside ``row``: a part's columns


def write_parts(batch: dict, output: str) -> dict:
    """Ray Data UDF: this batch's rows as one part file per shard; returns counters per shard."""
    keys = [inputs.split_key(k) for k in batch["shard"].tolist()]
    shard = np.asarray([k[0] for k in keys], object)
    rows = np.asarray([k[1] for k in keys], np.int64)
    res: dict[str, list] = defaultdict(list)
    for s in sorted(set(shard.tolist())):
        idx = np.flatnonzero(shard == s)
        cols = {
            "row": pa.array(rows[idx], pa.int64()),
            **{k: pa.array(batch[k][idx].tolist(), pa.string()) for k in _PART_TEXT},
        }
        lo, hi = int(rows[idx].min()), int(rows[idx].max())
        part = join(
            output, outputs.PARTS, s, f"rows-{lo:010d}-{hi:010d}-{uuid.uuid4().hex[:12]}.parquet"
        )
        atomic_write(part, lambda tmp, t=pa.table(cols): pq.write_table(t, tmp, compression="zstd"))
        res["shard"].append(s)
        res["rows"].append(len(idx))
        res["rejected"].append(int((batch["error"][idx] != "").sum()))
        for k in ("model_s", "init_s"):
            res[k].append(float(batch[k][idx].sum()))
    return {k: np.asarray(v) for k, v in res.items()}


def merge_shard(output: str, stem: str, expected: int, source: str, run: str) -> dict:
    """The parts of one shard -> ``<output>/<stem>.parquet`` (``id, row, sequence``, then the
    record's ``prediction`` and ``probabilities``), rows in input order; the rejected rows
    (id, row, reason) in its footer and the returned report."""
    rows = outputs.read_parts(output, stem)
    by_row = outputs.complete_rows(rows, expected, stem)
    good, rejected = [], []
    for r in sorted(by_row):
        e = by_row[r]
        i = next(iter(e["win"].values()))  # a row written twice (a retried task) counts once
        if e["error"]:
            rejected.append({"id": e["id"], "row": r, "reason": e["error"]})
            continue
        rec = json.loads(rows["record"][i])
        good.append({"id": e["id"], "row": r, "sequence": rows["sequence"][i], **rec})
    base = {"id": pa.string(), "row": pa.int64(), "sequence": pa.string()}
    table = pa.Table.from_pylist(good) if good else pa.schema(base).empty_table()
    meta = {
        outputs.META_INVALID: json.dumps(rejected).encode(),
        b"ankh.source": source.encode(),
        b"ankh.run": run.encode(),
    }
    table = table.replace_schema_metadata(meta)
    atomic_write(join(output, f"{stem}.parquet"), lambda tmp: pq.write_table(table, tmp))
    outputs.clear_parts(output, stem)
    return {"shard": stem, "sequences": len(good), "invalid": rejected, "notes": []}
