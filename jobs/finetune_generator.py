"""Fine-tune Ankh's decoder on a protein family (encoder frozen) for High-N variant generation.

    python -m jobs.finetune_generator model=PATH|PRESET data=FAMILY.parquet|.fasta output=DIR \
        [train.steps=200] [train.batch_size=16] [train.optim.peak_lr=5e-4] ...

Then generate with the tuned decoder: ``python -m jobs.generate model=DIR/model ...``.
The last stdout line is the tuned model directory. See docs/generation.md.
"""

from __future__ import annotations

import json
import logging


def main(argv: list[str] | None = None) -> dict:
    from ankh_platform.core.config import parse_cli
    from ankh_platform.generate.finetune import FinetuneJobConfig, run

    cfg, _ = parse_cli(FinetuneJobConfig, argv, __doc__)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        summary = run(cfg)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    print(json.dumps(summary))
    print(summary["model_dir"])
    return summary


if __name__ == "__main__":
    main()
