"""FASTA -> Parquet shards (local or ``gs://``), atomic per shard, resumable, with a manifest.

Layout of ``output``::

    _job.json                       input + settings of the run (a re-run must match them)
    train/shard-00000.parquet ...   columns id, sequence, length, idx (dense index in the split)
    validation/shard-00000.parquet  only when validation_fraction > 0
    manifest.json                   written last: counts, residues, length histogram, bad records

Each shard is published whole by ``ankh.storage.atomic_write``, so readers never see a
half-written shard. Re-running the same job re-reads the input (cheap, streamed) and rewrites
only shards that are missing, so an interrupted run finishes where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ankh.storage import atomic_write, filesystem, join, remove_stale_temps
from ankh_platform.core import progress
from ankh_platform.data.fasta import FastaError, FastaStats, read_fasta

log = logging.getLogger(__name__)
SCHEMA = pa.schema(
    [("id", pa.string()), ("sequence", pa.string()), ("length", pa.int32()), ("idx", pa.int64())]
)
HIST_EDGES = [0] + [2**k for k in range(3, 17)] + [2**62]  # 0, 8, 16, ..., 65536, inf


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    input: str = ""  # FASTA or FASTA.gz, local path or gs://
    output: str = ""  # directory (local or gs://) for shards + manifest
    rows_per_shard: int = 100_000  # a shard closes at this many rows ...
    bytes_per_shard: int = 128 * 2**20  # ... or this many residues, whichever comes first
    policy: Literal["skip", "clean", "fail"] = "skip"  # for malformed records
    min_length: int = 1  # residues; shorter records are filtered (counted)
    max_length: int = 0  # residues; 0 = no limit
    validation_fraction: float = 0.0  # > 0: hash(id) split into train/ and validation/
    compression: str = "zstd"

    def __post_init__(self) -> None:
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(
                f"validation_fraction must be in [0, 1), got {self.validation_fraction}"
            )
        if self.rows_per_shard < 1 or self.bytes_per_shard < 1:
            raise ValueError("rows_per_shard and bytes_per_shard must be >= 1")


def split_of(ident: str, validation_fraction: float) -> str:
    """Deterministic split from a hash of the id (stable across runs, machines, versions)."""
    if validation_fraction <= 0:
        return "train"
    h = int.from_bytes(hashlib.blake2b(ident.encode(), digest_size=8).digest(), "big")
    return "validation" if h / 2**64 < validation_fraction else "train"


class _SplitWriter:
    """Buffers one split's records and writes numbered shards atomically."""

    def __init__(self, fs, root: str, name: str, cfg: PrepareConfig) -> None:
        self.fs, self.dir, self.name, self.cfg = fs, join(root, name), name, cfg
        self.ids: list[str] = []
        self.seqs: list[str] = []
        self.nbytes = 0
        self.rows = 0  # rows in finished shards
        self.residues = 0
        self.hist = np.zeros(len(HIST_EDGES) - 1, np.int64)
        self.shards: list[dict[str, Any]] = []
        self.written = self.reused = 0
        fs.makedirs(self.dir, exist_ok=True)

    def add(self, ident: str, seq: str) -> None:
        self.ids.append(ident)
        self.seqs.append(seq)
        self.nbytes += len(seq)
        if len(self.ids) >= self.cfg.rows_per_shard or self.nbytes >= self.cfg.bytes_per_shard:
            self.flush()

    def flush(self) -> None:
        if not self.ids:
            return
        lengths = np.fromiter((len(s) for s in self.seqs), np.int32, len(self.seqs))
        path = join(self.dir, f"shard-{len(self.shards):05d}.parquet")
        n = len(self.ids)
        if self._complete(path, n):
            self.reused += 1  # finished by an earlier, interrupted run
        else:
            table = pa.table(
                {
                    "id": self.ids,
                    "sequence": self.seqs,
                    "length": lengths,
                    "idx": np.arange(self.rows, self.rows + n, dtype=np.int64),
                },
                schema=SCHEMA,
            )
            atomic_write(
                path,
                lambda tmp: pq.write_table(table, tmp, compression=self.cfg.compression),
                fs=self.fs,
            )
            self.written += 1
        self.hist += np.histogram(lengths, bins=HIST_EDGES)[0]
        self.shards.append(
            {"path": path.rsplit("/", 1)[1], "rows": n, "residues": int(lengths.sum())}
        )
        self.rows += n
        self.residues += int(lengths.sum())
        self.ids, self.seqs, self.nbytes = [], [], 0

    def _complete(self, path: str, n: int) -> bool:
        if not self.fs.exists(path):
            return False
        with self.fs.open(path, "rb") as f:
            return pq.ParquetFile(f).metadata.num_rows == n

    def summary(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "residues": self.residues,
            "shards": self.shards,
            "length_histogram": {"edges": HIST_EDGES[:-1] + ["inf"], "counts": self.hist.tolist()},
        }


def _job_identity(fs, cfg: PrepareConfig) -> dict[str, Any]:
    src_fs, src = filesystem(cfg.input)
    info = src_fs.info(src)
    keep = {
        k: cfg.__dict__[k]
        for k in (
            "rows_per_shard",
            "bytes_per_shard",
            "policy",
            "min_length",
            "max_length",
            "validation_fraction",
        )
    }
    return {"input": cfg.input, "input_size": info.get("size"), **keep}


def _split_records(
    cfg: PrepareConfig,
    fs,
    root: str,
    stats: FastaStats,
    writers: dict[str, _SplitWriter],
    filtered: dict[str, int],
) -> None:
    """Every record read: written to its split, filtered (counted) or dropped (in ``stats``)."""
    try:
        for rid, seq in progress.track(
            read_fasta(cfg.input, cfg.policy, stats), "prepare", unit="records"
        ):
            if len(seq) < cfg.min_length:
                filtered["too_short"] += 1
                continue
            if cfg.max_length and len(seq) > cfg.max_length:
                filtered["too_long"] += 1
                continue
            name = split_of(rid, cfg.validation_fraction)
            if name not in writers:
                writers[name] = _SplitWriter(fs, root, name, cfg)
            writers[name].add(rid, seq)
    except FastaError as e:
        # A truncated gzip (or a bad record under policy=fail) stops the job before the manifest:
        # shards already closed stay published, but without manifest.json the output is not a
        # finished dataset. The accounting of what was read goes with the error.
        done = sum(w.rows for w in writers.values())
        raise FastaError(
            f"{e}; stopped after {stats.records} record(s): {stats.kept} kept "
            f"({done} in finished shards), {stats.dropped} dropped "
            f"{stats.dropped_by_reason}, filtered {filtered}; no manifest.json "
            "written"
        ) from None


def prepare(cfg: PrepareConfig) -> dict[str, Any]:
    """Run the job; returns the manifest (also written to ``output/manifest.json``)."""
    if not cfg.input or not cfg.output:
        raise ValueError("both input and output are required")
    fs, root = filesystem(cfg.output)
    fs.makedirs(root, exist_ok=True)
    ident = _job_identity(fs, cfg)
    job_path = join(root, "_job.json")
    if fs.exists(job_path):
        old = json.loads(fs.cat_file(job_path))
        if old != ident:
            raise ValueError(
                f"{cfg.output} holds shards of a different job ({old}); "
                f"use an empty output directory"
            )
    else:
        fs.pipe_file(job_path, json.dumps(ident, indent=1).encode())
    for name in ("train", "validation"):  # temporaries left by an interrupted run
        remove_stale_temps(join(root, name), fs)
    t0 = time.time()
    stats = FastaStats()
    writers: dict[str, _SplitWriter] = {}
    filtered = {"too_short": 0, "too_long": 0}
    _split_records(cfg, fs, root, stats, writers, filtered)
    for w in writers.values():
        w.flush()
    manifest = {
        "source": cfg.input,
        "format": "ankh-parquet-shards/1",
        "created_unix": int(time.time()),
        "config": dataclasses.asdict(cfg),
        # one outcome per record read: read == written + dropped_bad + filtered_* (kept ==
        # written + filtered_*); dropped_bad == sum(dropped_by_reason); bad_records counts
        # problems (a record with two problems counts in two categories)
        "records": {
            "read": stats.records,
            "kept": stats.kept,
            "cleaned": stats.cleaned,
            "written": sum(w.rows for w in writers.values()),
            "dropped_bad": stats.dropped,
            **{f"filtered_{k}": v for k, v in filtered.items()},
        },
        "dropped_by_reason": stats.dropped_by_reason,
        "bad_records": stats.bad,
        "bad_examples": stats.examples,
        "splits": {name: w.summary() for name, w in sorted(writers.items())},
        "shards_written": sum(w.written for w in writers.values()),
        "shards_reused": sum(w.reused for w in writers.values()),
        "seconds": round(time.time() - t0, 3),
    }
    fs.pipe_file(join(root, "manifest.json"), json.dumps(manifest, indent=1).encode())
    log.info("prepared %s: %s", cfg.output, manifest["records"])
    if any(stats.bad.values()):
        log.warning("bad records (%s policy): %s", cfg.policy, stats.bad)
    return manifest
