"""Real protein sequences for demos, tests and benchmarks.

Prefers the shared UniProt data next to the checkout (``../shared/data``), else the small
sample bundled in ``data/`` (see data/README.md for source and licence).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[2]
VALID = frozenset("ALGVSREDTIPKFQNYMHWCXBOUZ")


def shared_data_dir() -> Path | None:
    d = REPO.parent / "shared" / "data"
    return d if d.is_dir() else None


def _sample_files() -> list[Path]:
    shared = shared_data_dir()
    if shared and (shared / "uniprot_go_sample.parquet").exists():
        return [shared / "uniprot_go_sample.parquet"]
    files = sorted((REPO / "data" / "uniprot_sample").rglob("*.parquet"))
    if not files:
        raise FileNotFoundError("no real sequences found: neither ../shared/data nor data/uniprot_sample")
    return files


def sample_sequences() -> list[str]:
    seqs: list[str] = []
    for f in _sample_files():
        seqs += pq.read_table(f, columns=["sequence"]).column("sequence").to_pylist()
    return [s for s in seqs if set(s) <= VALID]


def real_sequences(n: int, min_len: int = 1, max_len: int = 10**9, seed: int = 0) -> list[str]:
    """``n`` distinct real sequences with ``min_len <= length <= max_len``, seeded choice."""
    pool = [s for s in sample_sequences() if min_len <= len(s) <= max_len]
    if len(pool) < n:
        raise ValueError(f"only {len(pool)} sample sequences with length in [{min_len}, {max_len}]")
    rng = np.random.default_rng(seed)
    return [pool[i] for i in rng.choice(len(pool), n, replace=False)]


def long_sequences(n: int, min_len: int, seed: int = 0) -> list[str]:
    """Real sequences of at least ``min_len`` residues (for fixed-shape benchmarks)."""
    return real_sequences(n, min_len, seed=seed)
