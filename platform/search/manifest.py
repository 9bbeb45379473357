"""An index's manifest: what model made its vectors, how it is built, which parts it holds.

``<index>/manifest.json`` is the one record of an index (written atomically after each part,
so a killed build resumes from it). Its ``source`` block -- model reference (pinned: a hub id
carries its commit), revision, pooling, layer, dimension, metric -- is the identity of the vector
space; embeddings of another space are refused with both named, never mixed in.
"""

from __future__ import annotations

import json
from pathlib import Path

from ankh import storage
from ankh.storage import filesystem, join

MANIFEST = "manifest.json"
FORMAT = 1
# What makes two sets of vectors comparable; a mismatch on any of these refuses an add.
IDENTITY = ("model", "pooling", "layer", "dim", "metric", "per_residue_source")


def embed_source(embeddings: str, dim: int, metric: str) -> dict:
    """The vector space of a ``jobs.embed`` output directory, from its ``_job.json``."""
    fs, p = filesystem(join(embeddings, "_job.json"))
    if not fs.exists(p):
        raise FileNotFoundError(
            f"{embeddings} has no _job.json: not a jobs.embed output directory "
            "(embed with python -m jobs.embed, or pass --input FASTA --model REF)"
        )
    with fs.open(p) as fh:
        job = json.load(fh)
    model = job["checkpoint"]
    return {
        "model": model,
        # a hub id is pinned as org/name@<commit> by the embed job (ankh.resolve)
        "revision": model.rsplit("@", 1)[1] if "@" in model else "",
        "pooling": "mean",  # the embed job's pooled vector: mean over residues, </s> excluded
        "layer": int(job.get("layer", 0)),  # 0 = the final encoder output
        "dim": int(dim),
        "metric": metric,
        "per_residue_source": False,
        "max_length": int(job.get("max_length", 0)),
        "long_policy": job.get("long_policy", "window"),
        "window_overlap": int(job.get("window_overlap", 128)),
        "strip_stop": bool(job.get("strip_stop", True)),
        "compute_dtype": job.get("compute_dtype", "auto"),
    }


def check_same_space(have: dict, new: dict, where: str) -> None:
    """Refuse vectors of another model / pooling / layer / dimension / metric, naming both."""
    diff = {k: (have.get(k), new.get(k)) for k in IDENTITY if have.get(k) != new.get(k)}
    if diff:
        lines = "; ".join(f"{k}: index has {a!r}, {where} has {b!r}" for k, (a, b) in diff.items())
        raise ValueError(
            f"refusing to add vectors of another space to this index ({lines}); "
            "build a separate index for them"
        )


def read(index: str) -> dict | None:
    fs, p = filesystem(join(index, MANIFEST))
    if not fs.exists(p):
        return None
    with fs.open(p) as fh:
        return json.load(fh)


def require(index: str) -> dict:
    m = read(index)
    if m is None:
        raise FileNotFoundError(f"{index} is not an index: no {MANIFEST} (build it: jobs.index)")
    if m.get("format") != FORMAT:
        raise ValueError(f"{index}: index format {m.get('format')!r}, this code reads {FORMAT}")
    return m


def write(index: str, manifest: dict) -> None:
    text = json.dumps(manifest, indent=1)
    storage.atomic_write(join(index, MANIFEST), lambda tmp: Path(tmp).write_text(text))
