"""Predict with a fine-tuned run (``jobs.finetune``) on FASTA or Parquet proteins.

    python -m jobs.predict --run RUN --input FASTA|PARQUET|DIR|GLOB --output DIR [batch_size=8]

Inputs are read as jobs.embed reads them (FASTA[.gz] records, or Parquet with id + sequence
columns; a directory, a glob or a comma list of files). Writes OUTPUT/<input stem>.parquet per
input -- id, row, sequence, prediction (per-residue class letters, a class name, the GO terms
over 0.5, or a value) and probabilities -- and OUTPUT/_summary.json, whose ``rejected`` list
names every record that could not be predicted (id, row, reason). The same command again
skips the inputs already written.
"""

from __future__ import annotations

import dataclasses
import json
import sys

from ankh_platform.core import cli as _cli


@dataclasses.dataclass(frozen=True)
class PredictJobConfig:
    run: str = ""  # a jobs.finetune output directory
    input: str = ""
    output: str = "outputs/predict"
    batch_size: int = 8


FLAGS = {
    "--run": _cli.flag("run", "the jobs.finetune run directory (required)", required=True),
    "--input": _cli.flag(
        "input", "FASTA / Parquet file, directory, glob or comma list", required=True
    ),
    "--output": _cli.output_flag("output", "where the predictions go (default outputs/predict)"),
}


def main(argv: list[str] | None = None) -> dict:
    from ankh_platform.finetune.predict import predict_files

    cfg, _ = _cli.parse(PredictJobConfig, argv, __doc__, "jobs.predict", FLAGS)
    summary = predict_files(cfg.run, cfg.input, cfg.output, cfg.batch_size)
    print(json.dumps({k: v for k, v in summary.items() if k != "rejected"}))
    print(cfg.output)
    return summary


if __name__ == "__main__":
    sys.exit(_cli.run(main))
