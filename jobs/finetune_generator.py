"""Fine-tune Ankh's decoder on a protein family (encoder frozen) for High-N variant generation.

    python -m jobs.finetune_generator --model MODEL --output DIR data=FAMILY.parquet|.fasta \
        [train.steps=200] [train.batch_size=16] [train.optim.peak_lr=5e-4] ...

``--model`` / ``--output`` are the ``model=`` / ``output=`` fields (either spelling works).
Then generate with the tuned decoder: ``python -m jobs.generate --model DIR/model ...``.
The last stdout line is the tuned model directory. See docs/generation.md.
"""

from __future__ import annotations

import json
import sys

from ankh_platform.core import cli as _cli

FLAGS = {
    "--model": _cli.model_flag("model", "its decoder is tuned (default tiny); or model="),
    "--output": _cli.output_flag(
        "output", "the tuned model goes to OUTPUT/model; or output=", required=True
    ),
}


def main(argv: list[str] | None = None) -> dict:
    from ankh_platform.generate.finetune import FinetuneJobConfig, run

    cfg, _ = _cli.parse(FinetuneJobConfig, argv, __doc__, "jobs.finetune_generator", FLAGS)
    summary = run(cfg)
    print(json.dumps(summary))
    print(summary["model_dir"])
    return summary


if __name__ == "__main__":
    sys.exit(_cli.run(main))
