"""Baselines for annotation transfer: composition vectors and the MMseqs2 best hit.

- **composition**: each protein as its amino-acid composition (20 frequencies) followed by its
  dipeptide composition (400 frequencies of adjacent pairs) -- mean-pooled one-hot residues
  and residue pairs, 420 numbers that know nothing learned. They go through the same index
  code path as model embeddings (a ``jobs.embed``-layout shard, ``jobs.index``'s builder,
  ``SearchIndex`` and its exact re-rank), so only the vectors differ.
- **mmseqs**: ``mmseqs easy-search`` (MMseqs2, default sensitivity) of the queries against the
  lookup sequences; each query takes the GO terms of its best hit (highest bit score), scored
  by that hit's sequence identity (``fident``, 0..1), the CAFA BLAST baseline's score.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from ankh.storage import join
from ankh_platform.search import parts

log = logging.getLogger(__name__)

AMINO = "ACDEFGHIKLMNPQRSTVWY"  # the 20 standard residues; X, U, Z, B and others are skipped
COMPOSITION_DIM = len(AMINO) + len(AMINO) ** 2
COMPOSITION_MODEL = "composition:aa+dipeptide"  # the manifest's "model" of such an index
M8_COLUMNS = "query target fident alnlen mismatch gapopen qstart qend tstart tend evalue bits"
_CODE = np.full(256, -1, np.int64)
_CODE[np.frombuffer(AMINO.encode(), np.uint8)] = np.arange(len(AMINO))


def composition(seqs: list[str]) -> np.ndarray:
    """``[n, 420]`` float32: residue frequencies, then frequencies of adjacent residue pairs
    (a pair with a non-standard letter is not counted). An empty row stays zero."""
    out = np.zeros((len(seqs), COMPOSITION_DIM), np.float32)
    n = len(AMINO)
    for i, s in enumerate(seqs):
        c = _CODE[np.frombuffer((s or "").upper().encode(), np.uint8)]
        ok = c[c >= 0]
        if len(ok):
            out[i, :n] = np.bincount(ok, minlength=n) / len(ok)
        pair_ok = (c[:-1] >= 0) & (c[1:] >= 0)
        pairs = c[:-1][pair_ok] * n + c[1:][pair_ok]
        if len(pairs):
            out[i, n:] = np.bincount(pairs, minlength=n * n) / len(pairs)
    return out


def write_composition_shard(out: str, ids: list[str], seqs: list[str]) -> str:
    """The composition vectors of ``seqs`` as one ``jobs.embed``-layout shard + ``_job.json``
    under ``out`` (what ``jobs.index --embeddings`` reads)."""
    table = pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "length": pa.array([len(s) for s in seqs], pa.int32()),
            "embedding": parts.vector_array(composition(seqs)),
        }
    )
    parts.write_table(join(out, "lookup.parquet"), table)
    job = {"checkpoint": COMPOSITION_MODEL, "layer": 0, "per_residue": False, "max_length": 0}
    parts.write_bytes(join(out, "_job.json"), json.dumps(job).encode())
    return out


def mmseqs_binary() -> str | None:
    return shutil.which("mmseqs")


def write_fasta(path: Path, ids: list[str], seqs: list[str]) -> None:
    path.write_text("".join(f">{i}\n{s}\n" for i, s in zip(ids, seqs)))


def easy_search(
    queries: tuple[list[str], list[str]],
    targets: tuple[list[str], list[str]],
    threads: int = 0,
    extra: tuple[str, ...] = (),
) -> tuple[str, float]:
    """``mmseqs easy-search`` (default sensitivity unless ``extra`` says otherwise) of
    ``(ids, sequences)`` queries against targets: ``(m8 text, wall seconds)``; the wall time
    covers the whole command (both databases created, prefilter, alignment, output)."""
    exe = mmseqs_binary()
    if exe is None:
        raise RuntimeError(
            "the mmseqs baseline needs MMseqs2 on PATH (Debian/Ubuntu: apt-get install mmseqs2)"
        )
    with tempfile.TemporaryDirectory(prefix="ankh-mmseqs-") as tmp:
        d = Path(tmp)
        write_fasta(d / "q.fasta", *queries)
        write_fasta(d / "db.fasta", *targets)
        cmd = [exe, "easy-search", str(d / "q.fasta"), str(d / "db.fasta"), str(d / "hits.m8")]
        cmd += [str(d / "work"), "-v", "1", *extra]
        if threads:
            cmd += ["--threads", str(threads)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
        if proc.returncode:
            raise RuntimeError(
                f"mmseqs easy-search failed ({proc.returncode}): {proc.stderr[-2000:]}"
            )
        return (d / "hits.m8").read_text(), wall


def best_hits(m8: str) -> dict[str, tuple[str, float, float]]:
    """``{query: (target, fident, bits)}`` of each query's best hit in MMseqs2/BLAST tabular
    output (``M8_COLUMNS``): the highest bit score, the first listed among equal ones. Queries
    without a hit are absent."""
    best: dict[str, tuple[str, float, float]] = {}
    for n, line in enumerate(m8.splitlines(), 1):
        if not line.strip():
            continue
        f = line.split("\t")
        if len(f) < 12:
            raise ValueError(
                f"line {n} of the mmseqs output has {len(f)} columns, not 12: {line!r}"
            )
        q, t, ident, bits = f[0], f[1], float(f[2]), float(f[11])
        if ident > 1.0:  # BLAST-style percent identity: as a fraction
            ident /= 100.0
        if q not in best or bits > best[q][2]:
            best[q] = (t, ident, bits)
    return best


def best_hit_table(best: dict[str, tuple[str, float, float]], lookup: pa.Table, cols: list[str]):
    """A hits table (``jobs.search`` layout: query_id, target_id, score, rank, the lookup's
    ``cols``) of the best hits, scored by identity: what ``transfer.transfer`` reads."""
    pos = {v: i for i, v in enumerate(lookup["id"].to_pylist())}
    qs = sorted(q for q in best if best[q][0] in pos)
    take = pa.array([pos[best[q][0]] for q in qs], pa.int64())
    table = {
        "query_id": pa.array(qs, pa.string()),
        "target_id": pa.array([best[q][0] for q in qs], pa.string()),
        "score": pa.array([best[q][1] for q in qs], pa.float32()),
        "rank": pa.array([1] * len(qs), pa.int32()),
    }
    table.update({c: lookup[c].take(take) for c in cols})
    return pa.table(table)
