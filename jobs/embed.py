"""Embed a protein database with Ray Data: Parquet shards or FASTA[.gz], local or gs://.

    python -m jobs.embed --model MODEL --input PATH --output DIR [key=value ...]

Writes ``<output>/<shard>.parquet`` (id, length, embedding[, per_residue]) per input shard and
``<output>/_summary.json``; re-running the same command resumes (finished shards are skipped).
Connects to ``RAY_ADDRESS`` if set, else starts a local Ray on loopback. See docs/batch-embedding.md.
"""

from __future__ import annotations

import json
import sys

from ankh_platform.core import cli as _cli

FLAGS = {
    "--model": _cli.model_flag(
        "checkpoint",
        "a preset has random weights (tests)",
        required=True,
        aliases=("--checkpoint",),
    ),
    "--input": _cli.flag(
        "input", "Parquet/FASTA file, directory, glob or comma list (local or gs://)", required=True
    ),
    "--output": _cli.output_flag(
        "output", "local or gs://, one Parquet file per input shard", required=True
    ),
    "--per-residue": _cli.flag(
        "per_residue", "also write per-residue embeddings", action="store_true"
    ),
    "--replicas": _cli.flag("replicas", "model replicas (actor pool size)", type=int),
    "--batch-tokens": _cli.flag("batch_tokens", "token slots per model call", type=int),
    "--hdf5": _cli.flag(
        "hdf5",
        "also write one HDF5 file keyed by id, pooled vectors "
        "(bio_embeddings/ProtTrans layout; needs the optional h5py)",
    ),
}


def main(argv: list[str] | None = None) -> dict:
    from ankh_platform.embed.job import EmbedJobConfig, run

    cfg, _ = _cli.parse(EmbedJobConfig, argv, __doc__, "jobs.embed", FLAGS)
    summary = run(cfg)
    brief = {k: v for k, v in summary.items() if k not in ("invalid", "long_sequences")}
    brief["invalid_first"] = summary["invalid"][:20]
    brief["long_sequences_first"] = summary["long_sequences"][:20]
    print(json.dumps(brief, indent=1))
    print(f"summary with every invalid id: {cfg.output.rstrip('/')}/_summary.json")
    return summary


if __name__ == "__main__":
    sys.exit(_cli.run(main))
