"""Embed a protein database with Ray Data: Parquet shards or FASTA[.gz], local or gs://.

    python -m jobs.embed --checkpoint PATH --input PATH --output DIR [key=value ...]

Writes ``<output>/<shard>.parquet`` (id, length, embedding[, per_residue]) per input shard and
``<output>/_summary.json``; re-running the same command resumes (finished shards are skipped).
Connects to ``RAY_ADDRESS`` if set, else starts a local Ray on loopback. See docs/batch-embedding.md.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys


def _flags(ap) -> None:
    ap.add_argument("--checkpoint", help="preset name, HF Ankh directory, or our Orbax run dir")
    ap.add_argument("--input", help="Parquet/FASTA file, directory, glob or comma list (local or gs://)")
    ap.add_argument("--output", help="output directory (local or gs://)")
    ap.add_argument("--per-residue", action="store_true", help="also write per-residue embeddings")
    ap.add_argument("--replicas", type=int, help="model replicas (actor pool size)")
    ap.add_argument("--batch-tokens", type=int, help="token slots per model call")
    ap.add_argument("--hdf5", help="also write one HDF5 file keyed by id, pooled vectors "
                    "(bio_embeddings/ProtTrans layout; needs the optional h5py)")


def main(argv: list[str] | None = None) -> dict:
    from ankh_platform.core.config import parse_cli
    from ankh_platform.embed.job import EmbedJobConfig, run

    cfg, args = parse_cli(EmbedJobConfig, argv, __doc__, extra=_flags)
    flags = {"checkpoint": args.checkpoint, "input": args.input, "output": args.output,
             "replicas": args.replicas, "batch_tokens": args.batch_tokens, "hdf5": args.hdf5,
             "per_residue": True if args.per_residue else None}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in flags.items() if v is not None})
    missing = [f"--{k}" for k in ("checkpoint", "input", "output") if not getattr(cfg, k)]
    if missing:
        sys.exit(f"error: {', '.join(missing)} required (see --help)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    summary = run(cfg)
    brief = {k: v for k, v in summary.items() if k not in ("invalid", "long_sequences")}
    brief["invalid_first"] = summary["invalid"][:20]
    brief["long_sequences_first"] = summary["long_sequences"][:20]
    print(json.dumps(brief, indent=1))
    print(f"summary with every invalid id: {cfg.output.rstrip('/')}/_summary.json")
    return summary


if __name__ == "__main__":
    main()
