"""HDF5 export of the batch-embedding job's Parquet shards (optional; needs ``h5py``).

The layout bio_embeddings and the ProtTrans scripts write, which their users' code reads:
one dataset per protein at the file's root, holding the pooled vector ``[d_model]`` (their
``reduced_embeddings_file.h5`` / ``--per_protein``) or the per-residue matrix ``[length, d_model]``
(their ``embeddings_file.h5``), with the protein id as the dataset name *and* in the dataset's
``original_id`` attribute (HDF5 names cannot hold ``/``, which is replaced by ``_`` in the name
only). ``length`` is stored as an attribute too.

It is a post-step over finished shards, not a sink of the parallel pipeline: the Parquet shards
stay the resumable source of truth, and the ``.h5`` is rebuilt from them whole (published by
``ankh.storage.atomic_write``), so a killed job never leaves a partial ``.h5`` under the final name
and a resumed job produces the same file as an uninterrupted one.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Iterator

import numpy as np
import pyarrow.parquet as pq

from ankh.storage import atomic_write, filesystem, join, norm_path, remove_stale_temps

log = logging.getLogger(__name__)
INSTALL_HINT = "HDF5 output needs the optional package h5py: pip install h5py"


def require_h5py():
    """The ``h5py`` module, or an ImportError that says how to get it."""
    try:
        import h5py
    except ImportError as e:
        raise ImportError(
            f"{INSTALL_HINT} (or pip install 'ankh-platform[hdf5]'); import failed: {e}"
        ) from e
    return h5py


def dataset_name(ident: str) -> str:
    """HDF5 link name of a protein id: ``/`` separates paths there, ``.`` is the group itself."""
    name = ident.replace("/", "_")
    return "_" + name if name.strip(".") == "" else name


def _rows(
    output: str, stems: list[str], column: str, batch: int = 256
) -> Iterator[tuple[str, str, int, np.ndarray]]:
    """``(shard, id, length, vector)`` of every row of the finished shards, streamed."""
    for stem in stems:
        fs, p = filesystem(join(output, f"{stem}.parquet"))
        with fs.open(p, "rb") as fh:
            f = pq.ParquetFile(fh)
            if column not in f.schema_arrow.names:
                raise ValueError(
                    f"{output}/{stem}.parquet has no {column!r} column "
                    "(per-residue HDF5 needs a job run with per_residue=true)"
                )
            for rb in f.iter_batches(batch, columns=["id", "length", column]):
                ids, lens, col = rb.column(0).to_pylist(), rb.column(1).to_pylist(), rb.column(2)
                if not ids:
                    continue
                if column == "per_residue":  # list<fixed_size_list[d]> -> [length_i, d] each
                    flat = col.flatten()  # [sum(length), d] as fixed-size lists
                    mats = flat.flatten().to_numpy(zero_copy_only=False).reshape(len(flat), -1)
                    cuts = np.cumsum(col.value_lengths().to_numpy(zero_copy_only=False))[:-1]
                    vecs = np.split(mats, cuts)
                else:  # fixed_size_list[d] -> [n, d]
                    vecs = col.flatten().to_numpy(zero_copy_only=False).reshape(len(ids), -1)
                for k in range(len(ids)):
                    yield stem, ids[k], lens[k], vecs[k]


def _write(h5py, local_path: str, output: str, stems: list[str], per_residue: bool) -> int:
    column = "per_residue" if per_residue else "embedding"
    where: dict[str, tuple[str, str]] = {}  # dataset name -> (id, shard)
    with h5py.File(local_path, "w") as h5:
        h5.attrs["source"] = output
        h5.attrs["content"] = (
            "per_residue [length, d_model]"
            if per_residue
            else "pooled mean over residues [d_model]"
        )
        for stem, ident, length, vec in _rows(output, stems, column):
            name = dataset_name(ident)
            if name in where:
                first = where[name]
                raise ValueError(
                    f"id {ident!r} of shard {stem} and id {first[0]!r} of shard "
                    f"{first[1]} share the HDF5 dataset name {name!r}; an HDF5 "
                    "file keyed by id holds one per id (the Parquet output has both)"
                )
            where[name] = (ident, stem)
            ds = h5.create_dataset(name, data=vec)
            ds.attrs["original_id"] = ident
            ds.attrs["length"] = int(length)
    return len(where)


def export_hdf5(output: str, path: str, stems: list[str], per_residue: bool = False) -> str:
    """Write the shards ``<output>/<stem>.parquet`` as one HDF5 file keyed by id; returns ``path``.

    Atomic (``ankh.storage.atomic_write``): built in a local temporary file, then published whole.
    """
    h5py = require_h5py()
    remove_stale_temps(posixpath.dirname(norm_path(path)))  # left by a killed export
    counts = []
    atomic_write(path, lambda tmp: counts.append(_write(h5py, tmp, output, stems, per_residue)))
    log.info(
        "wrote %s: %d datasets (%s)", path, counts[0], "per residue" if per_residue else "pooled"
    )
    return path
