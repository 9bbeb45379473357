"""Generate protein variants by sentinel infilling with temperature warping (Ankh One-N).

    python -m jobs.generate model=PATH|PRESET parents=FILE output=DIR [temperatures=[1.0,1.5]] ...
    python -m jobs.generate sequence=MKTAYIAKQR... output=DIR n=20 mask_fraction=0.4

Writes variants.parquet / variants.fasta (identity to the parent, model score per variant) and
summary.csv / summary.json / summary.png (identity histogram per temperature, uniqueness,
amino-acid composition drift). See docs/generation.md.
"""

from __future__ import annotations

import json
import logging


def main(argv: list[str] | None = None) -> dict:
    from ankh_platform.core.config import parse_cli
    from ankh_platform.generate.variants import GenerateJobConfig, run

    cfg, _ = parse_cli(GenerateJobConfig, argv, __doc__)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result = run(cfg)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    print(json.dumps({k: v for k, v in result.items() if k != "summary"}
                     | {"summary": [{k: v for k, v in s.items() if k != "composition_delta"}
                                    for s in result["summary"]]}, indent=1))
    return result


if __name__ == "__main__":
    main()
