"""FASTA -> Parquet shards: ``python -m jobs.prepare --input PATH --output DIR [key=value ...]``.

PATH is a FASTA or FASTA.gz file, local or ``gs://``; DIR is local or ``gs://``. Prints the
manifest summary as JSON. Example::

    python -m jobs.prepare --input uniref50.fasta.gz --output gs://bucket/uniref50 \\
        validation_fraction=0.01 policy=clean rows_per_shard=200000
"""

from __future__ import annotations

import json
import sys

from ankh_platform.core import cli as _cli

FLAGS = {
    "--input": _cli.flag(
        "input", "FASTA / FASTA.gz path or gs:// URL (or input=...)", required=True
    ),
    "--output": _cli.output_flag(
        "output", "Parquet shards, local or gs:// (or output=...)", required=True
    ),
    "--policy": _cli.flag("policy", "malformed records", choices=["skip", "clean", "fail"]),
}


def main(argv: list[str] | None = None) -> int:
    from ankh_platform.data.prepare import PrepareConfig, prepare

    cfg, _ = _cli.parse(PrepareConfig, argv, __doc__, "jobs.prepare", FLAGS)
    manifest = prepare(cfg)
    summary = {
        k: manifest[k] for k in ("records", "bad_records", "shards_written", "shards_reused")
    }
    summary["splits"] = {
        n: {"rows": s["rows"], "residues": s["residues"], "shards": len(s["shards"])}
        for n, s in manifest["splits"].items()
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(_cli.run(main))
