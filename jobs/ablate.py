"""Ankh's ablation method as a Ray Tune sweep: ``python -m jobs.ablate --config smoke [k=v ...]``.

One variable at a time, every trial at the base's parameter count (architecture groups solve a
free dimension) and trained for the same budget with the same seed and data order; the winner
of each group by ``select_by`` is carried into every later group. Trials are Ray Tune trials
(each a pretraining run); re-running the same command restores the sweep and does not re-run
finished trials. Specs: ``--config smoke`` (a few minutes here), ``--config mask-cpu`` (the
masking-probability group at the learn-cpu scale, about an hour here), ``--config paper`` (the
paper's groups at base scale, TPU v4), or a YAML file (docs/ablation.md).
On a cluster: ``ray job submit --working-dir . -- python -m jobs.ablate --config paper ...``.
The last line printed is the sweep directory (results.csv, results.md, results.json, PNGs).
"""

from __future__ import annotations

import sys

from ankh_platform.core import cli as _cli

FLAGS = {
    "--output": _cli.output_flag("output", "the sweep dir is OUTPUT/NAME (default outputs/ablate)"),
    "--name": _cli.flag("name", "sweep name (same name + output = resume)"),
    "--max-concurrent-trials": _cli.flag(
        "max_concurrent_trials", "trials running at once", type=int
    ),
    "--address": _cli.flag(None, "Ray cluster address (default: RAY_ADDRESS or a local Ray)"),
}


def parse(argv: list[str] | None = None):
    from ankh_platform.ablate.spec import AblateConfig
    from ankh_platform.core.config import PRESETS_DIR

    return _cli.parse(AblateConfig, argv, __doc__, "jobs.ablate", FLAGS, presets_dir=PRESETS_DIR)


def main(argv: list[str] | None = None) -> str:
    from ankh_platform.ablate.sweep import run_sweep

    spec, args = parse(argv)
    out = run_sweep(spec, args.address)
    print(f"{out}/results.md")
    print(out)
    return out


if __name__ == "__main__":
    sys.exit(_cli.run(main))
