"""Predict with a fine-tuned run (``jobs.finetune``) on FASTA or Parquet proteins.

    python -m jobs.predict --run RUN --input FASTA|PARQUET|DIR|GLOB --output DIR [k=v ...]

A Ray Data job like jobs.embed (``ankh_platform.finetune.predict_job``): inputs are read as
jobs.embed reads them (FASTA[.gz] records, or Parquet with id + sequence columns; a directory,
a glob or a comma list of files) and predicted by ``replicas`` predictor actors, each loading
the run once (``runner=auto``: in this process when no cluster is named and one replica will
do). Writes OUTPUT/<input stem>.parquet per input, whole or not at all -- id, row, sequence,
prediction (per-residue class letters, a class name, the GO terms over 0.5, or a value) and
probabilities -- and OUTPUT/_summary.json, whose ``rejected`` list names every record that
could not be predicted (id, row, reason). The same command again skips the inputs already
written, and the rows a killed run had finished.
"""

from __future__ import annotations

import json
import sys

from ankh_platform.core import cli as _cli
from ankh_platform.finetune.predict_job import PredictJobConfig

FLAGS = {
    "--run": _cli.flag("run", "the jobs.finetune run directory (required)", required=True),
    "--input": _cli.flag(
        "input", "FASTA / Parquet file, directory, glob or comma list", required=True
    ),
    "--output": _cli.output_flag("output", "where the predictions go (default outputs/predict)"),
}


def main(argv: list[str] | None = None) -> dict:
    from ankh_platform.finetune.predict_job import run

    cfg, _ = _cli.parse(PredictJobConfig, argv, __doc__, "jobs.predict", FLAGS)
    summary = run(cfg)
    print(json.dumps({k: v for k, v in summary.items() if k != "rejected"}))
    print(cfg.output)
    return summary


if __name__ == "__main__":
    sys.exit(_cli.run(main))
