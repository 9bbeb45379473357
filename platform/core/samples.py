"""Where real protein data is found: the one lookup every demo, benchmark, task and test uses.

``data_dir()`` is, in order: ``$ANKH_DATA_DIR``; the project's shared data next to the checkout
(``<repo>/../shared/data``, when it holds the expected files); else the small sample bundled
with this package: ``data/`` beside this module (``platform/core/data`` in a checkout,
``ankh_platform/core/data`` in an installed wheel, package data; its README.md gives source and
licence). Callers that need one particular file ask for it (``protein_parquet``,
``protein_shard``) and get the bundled sample when the data directory lacks it, so nothing skips
for want of the shared copy.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from ankh.tokenizer import AMINO_ACIDS

log = logging.getLogger(__name__)

DATA_ENV = "ANKH_DATA_DIR"
# Files of the shared data set (see its README); a directory with none of them is not it.
SHARED_FILES = ("uniprot_go_sample.parquet", "pdb_dssp8.parquet", "uniprot_go")
VALID = frozenset(AMINO_ACIDS)  # the tokenizer's residue letters
_REPO = Path(__file__).resolve().parents[2]
# Package data, so an installed wheel has it too; the relative defaults of the configs
# (``data/uniprot_sample/train``) are relative to its parent (``repo_path``).
_BUNDLED = Path(__file__).resolve().parent / "data"


def repo_root() -> Path:
    """The checkout (or the uploaded working dir of a Ray job) where ``jobs/`` is; for an
    installed wheel, the ``site-packages`` directory that holds ``jobs/``."""
    return _REPO


def bundled_dir() -> Path:
    """The sample shipped with the package: ``data/`` beside this module."""
    return _BUNDLED


def bundled_train() -> Path:
    """The bundled sample's training shards (Parquet: id, sequence, length, idx)."""
    return bundled_dir() / "uniprot_sample" / "train"


def bundled_validation() -> Path:
    return bundled_dir() / "uniprot_sample" / "validation"


def bundled_fasta() -> Path:
    """The bundled sample as one FASTA.gz (the input the bundled shards were prepared from)."""
    return bundled_dir() / "uniprot_sample.fasta.gz"


def data_dir() -> Path:
    """``$ANKH_DATA_DIR``, else ``<repo>/../shared/data`` if it holds the shared files, else the
    bundled sample (``bundled_dir``)."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    shared = _REPO.parent / "shared" / "data"
    if any((shared / name).exists() for name in SHARED_FILES):
        return shared
    return bundled_dir()


def protein_parquet() -> Path:
    """Real proteins with ``id`` and ``sequence`` columns: the data dir's 5,000-row
    ``uniprot_go_sample.parquet``, else the bundled training shards (a directory)."""
    cand = data_dir() / "uniprot_go_sample.parquet"
    return cand if cand.exists() else bundled_train()


def protein_shard() -> Path:
    """A large real shard for benchmarks: ``uniprot_go/part-000.parquet`` of the data dir, else
    the bundled training shards."""
    cand = data_dir() / "uniprot_go" / "part-000.parquet"
    return cand if cand.exists() else bundled_train()


def pdb_dir() -> Path:
    """A directory with ``pdb_dssp8.parquet`` (PDB chains + DSSP): the data dir's 21k chains,
    else the bundled ``pdb_sample`` (the in-training SS3 probe's fixed slice only)."""
    return (
        data_dir() if (data_dir() / "pdb_dssp8.parquet").exists() else bundled_dir() / "pdb_sample"
    )


def repo_path(path: str) -> str:
    """A relative local path as the caller meant it: from the working directory if it exists
    there, else from the bundled sample's parent (the defaults ``data/uniprot_sample/...``, from
    any working directory, in a checkout or an installed wheel), else unchanged. URLs and
    absolute paths are returned as they are."""
    if "://" in path or Path(path).is_absolute() or Path(path).exists():
        return path
    bundled = _BUNDLED.parent / path
    return str(bundled) if bundled.exists() else path


SHARED_PREFIX = "shared:"


def shared_path(path: str, fallback: Path) -> str:
    """``shared:REL`` (a file, directory or glob under the data directory) as a real path, or
    ``fallback`` (a bundled sample) when the data directory has nothing there: configs such as
    ``pretrain-learn-cpu.yaml`` use the real shards when present and still run anywhere. Any
    other path is returned unchanged."""
    if not path.startswith(SHARED_PREFIX):
        return path
    rel = path[len(SHARED_PREFIX) :].lstrip("/")
    root = data_dir()
    if any(root.glob(rel)) if any(c in rel for c in "*?[") else (root / rel).exists():
        return str(root / rel)
    log.warning(
        "%s: not in the data directory %s; using the bundled sample %s", path, root, fallback
    )
    return str(fallback)


def sample_sequences() -> list[str]:
    seqs = pq.read_table(protein_parquet(), columns=["sequence"]).column("sequence").to_pylist()
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
