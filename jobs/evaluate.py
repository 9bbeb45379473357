"""Probe models on real labelled proteins: ``python -m jobs.evaluate --model MODEL --task ss3``.

Embeds every task's sequences with each model (cached as Parquet per model), trains
heads on the train split (the linear probe fit to convergence, as the in-training probe is; MLP
and ConvBERT with early stopping on validation), and reports test figures beside a one-hot baseline and a random-init model of the same shape.

Tasks: ss3, ss8, contacts, go (from ../shared/data), or a user file:
  --task go-transfer                  (alone: GO terms transferred from the nearest train-split
                                       protein in embedding space, goPredSim, CAFA Fmax per
                                       ontology beside baselines: --baseline
                                       naive,composition,mmseqs; docs/search.md; settings
                                       lookup=2000 queries=300 k=1 max_length=1000)
  --task my.csv                       (columns sequence + label; split column or hash split)
  --task name=gb1,kind=protein_reg,label=score,train=a.csv,valid=b.csv,test=c.csv
  --task cb513.fasta                  (>id [split=test] / sequence line / per-residue label line)
kinds: residue_class, protein_class, protein_reg (inferred when omitted).

Writes OUTPUT/results.{md,csv,json} and PNG plots; prints the Markdown table.
Example: python -m jobs.evaluate --model outputs/pretrain/run --task ss3 --head linear \\
             limits.train=1000 limits.test=300
"""

from __future__ import annotations

import sys

from ankh_platform.core import cli as _cli

FLAGS = {
    "--model": _cli.model_flag(
        "checkpoints",
        "repeatable: several compared side by side",
        action="append",
        aliases=("--checkpoint",),
    ),
    "--task": _cli.flag("tasks", "task name or spec (repeatable)", action="append"),
    "--head": _cli.flag(
        "heads",
        "probe head (repeatable; default linear)",
        action="append",
        choices=["linear", "mlp", "convbert"],
    ),
    "--output": _cli.output_flag("output", "the report (default outputs/evaluate)"),
    "--no-baselines": _cli.flag(
        "baselines",
        "skip one-hot and random-init baselines",
        action="store_true",
        value=lambda _: (),
    ),
}


GO_TRANSFER_FLAGS = {
    "--model": _cli.model_flag("checkpoint", "the model that embeds lookup set and queries"),
    "--task": _cli.flag(None, "go-transfer", choices=["go-transfer"]),
    "--output": _cli.output_flag("output", "embeddings, index, hits, results.{json,md}"),
    "--baseline": _cli.flag(
        "baselines",
        "comma list beside the model: naive, composition, mmseqs (default naive,composition)",
    ),
}


def _go_transfer(argv: list[str]) -> dict:
    from ankh_platform.search.config import GoTransferConfig
    from ankh_platform.search.go_eval import markdown, run

    cfg = _cli.parse(GoTransferConfig, argv, __doc__, "jobs.evaluate", GO_TRANSFER_FLAGS)[0]
    if not cfg.output:
        import dataclasses

        cfg = dataclasses.replace(cfg, output="outputs/evaluate-go-transfer")
    report = run(cfg)
    print(markdown(report))
    return report


def parse(argv: list[str] | None = None):
    from ankh_platform.evaluate.heads import EvaluateJobConfig

    return _cli.parse(EvaluateJobConfig, argv, __doc__, "jobs.evaluate", FLAGS)[0]


def main(argv: list[str] | None = None) -> dict:
    args = sys.argv[1:] if argv is None else list(argv)
    if "go-transfer" in args or "--task=go-transfer" in args:
        return _go_transfer(args)
    from ankh_platform.evaluate.heads import run_evaluation
    from ankh_platform.evaluate.report import markdown, write_reports

    cfg = parse(argv)
    report = run_evaluation(cfg)
    paths = write_reports(report, cfg.output, plots=cfg.plots, contact_protein=cfg.contact_protein)
    print(markdown(report))
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return report


if __name__ == "__main__":
    sys.exit(_cli.run(main))
