"""FASTA -> Parquet shards: ``python -m jobs.prepare --input PATH --output DIR [key=value ...]``.

PATH is a FASTA or FASTA.gz file, local or ``gs://``; DIR is local or ``gs://``. Prints the
manifest summary as JSON. Example::

    python -m jobs.prepare --input uniref50.fasta.gz --output gs://bucket/uniref50 \\
        validation_fraction=0.01 policy=clean rows_per_shard=200000
"""

from __future__ import annotations

import json
import logging
import sys

from ankh_platform.core.config import parse_cli
from ankh_platform.data.fasta import FastaError
from ankh_platform.data.prepare import PrepareConfig, prepare


def _flags(ap) -> None:
    ap.add_argument("--input", help="FASTA / FASTA.gz path or gs:// URL (or input=...)")
    ap.add_argument("--output", help="output directory, local or gs:// (or output=...)")
    ap.add_argument("--policy", choices=["skip", "clean", "fail"], help="malformed records")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg, args = parse_cli(PrepareConfig, argv, __doc__, extra=_flags)
    over = {k: v for k, v in (("input", args.input), ("output", args.output),
                              ("policy", args.policy)) if v}
    cfg = PrepareConfig(**{**cfg.__dict__, **over})
    if not cfg.input or not cfg.output:
        print("error: --input and --output are required (see --help)", file=sys.stderr)
        return 2
    try:
        manifest = prepare(cfg)
    except (FastaError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    summary = {k: manifest[k] for k in ("records", "bad_records", "shards_written", "shards_reused")}
    summary["splits"] = {n: {"rows": s["rows"], "residues": s["residues"], "shards": len(s["shards"])}
                         for n, s in manifest["splits"].items()}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
