"""Embedding shards in the ``jobs.embed`` output layout, made with the offline API.

``ankh.load(model).embed`` runs the same encoder program as the batch job (equal to 1e-5,
``tests/embed``); writing its vectors in the job's layout (``<stem>.parquet`` with id, length,
embedding; ``_job.json``) keeps the default suite free of a Ray start per test.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq


def real_proteins(path, n: int, offset: int = 0, max_len: int = 400) -> pa.Table:
    """``n`` real proteins (id, sequence, length, go_*) of at most ``max_len`` residues."""
    t = pq.read_table(path)
    t = t.filter(pc.less_equal(t["length"], max_len))
    return t.slice(offset, n)


def write_embeddings(model, proteins: pa.Table, out: Path, shards: int = 2, model_ref="tiny"):
    """Embed ``proteins`` and write ``shards`` shard files + ``_job.json`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    x = model.embed(proteins["sequence"].to_pylist())
    ids = proteins["id"].to_pylist()
    bounds = np.linspace(0, len(ids), shards + 1).astype(int)
    for s, (a, b) in enumerate(itertools.pairwise(bounds)):
        order = sorted(range(a, b), key=lambda i: ids[i])  # the job sorts rows by id
        emb = pa.FixedSizeListArray.from_arrays(pa.array(x[order].reshape(-1)), x.shape[1])
        table = pa.table(
            {
                "id": pa.array([ids[i] for i in order]),
                "length": pa.array(
                    [len(proteins["sequence"][i].as_py()) for i in order], pa.int32()
                ),
                "embedding": emb,
            }
        )
        pq.write_table(table, out / f"part-{s:03d}.parquet")
    job = {"checkpoint": model_ref, "per_residue": False, "out_dtype": "float32", "layer": 0}
    job.update(compute_dtype="auto", max_length=0, long_policy="window", window_overlap=128)
    (out / "_job.json").write_text(json.dumps({**job, "strip_stop": True}))
    return ids, x


def build_index(root: Path, protein_parquet, n: int, max_len: int = 100):
    """An index (``jobs.index``) of ``n`` real proteins embedded by the tiny model, with the
    proteins table (``n + 8`` rows: the last 8 are not indexed)."""
    import ankh
    from jobs.index import main as index_main

    prot = real_proteins(protein_parquet, n + 8, max_len=max_len)
    write_embeddings(ankh.load("tiny"), prot.slice(0, n), root / "emb", shards=2)
    index_main(["-q", "--embeddings", str(root / "emb"), "--output", str(root / "index")])
    return root / "index", prot
