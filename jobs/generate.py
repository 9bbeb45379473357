"""Generate protein variants by sentinel infilling with temperature warping (Ankh One-N).

    python -m jobs.generate --model MODEL --output DIR parents=FILE [temperatures=[1.0,1.5]] ...
    python -m jobs.generate --output DIR sequence=MKTAYIAKQR... n=20 mask_fraction=0.4

``--model`` / ``--output`` are the ``model=`` / ``output=`` fields (either spelling works).

Writes variants.parquet / variants.fasta (identity to the parent, model score per variant) and
summary.csv / summary.json / summary.png (identity histogram per temperature, uniqueness,
amino-acid composition drift). See docs/generation.md.
"""

from __future__ import annotations

import json
import sys

from ankh_platform.core import cli as _cli

FLAGS = {
    "--model": _cli.model_flag("model", "default tiny (random weights); or model="),
    "--output": _cli.output_flag("output", "variants and summaries; or output=", required=True),
}


def main(argv: list[str] | None = None) -> dict:
    from ankh_platform.generate.variants import GenerateJobConfig, run

    cfg, _ = _cli.parse(GenerateJobConfig, argv, __doc__, "jobs.generate", FLAGS)
    result = run(cfg)
    print(
        json.dumps(
            {k: v for k, v in result.items() if k != "summary"}
            | {
                "summary": [
                    {k: v for k, v in s.items() if k != "composition_delta"}
                    for s in result["summary"]
                ]
            },
            indent=1,
        )
    )
    return result


if __name__ == "__main__":
    sys.exit(_cli.run(main))
