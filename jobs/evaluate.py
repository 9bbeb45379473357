"""Probe checkpoints on real labelled proteins: ``python -m jobs.evaluate --checkpoint PATH --task ss3``.

Embeds every task's sequences with each checkpoint (cached as Parquet per checkpoint), trains
heads (linear probe, MLP, ConvBERT) on the train split with early stopping on validation, and
reports test figures beside a one-hot baseline and a random-init model of the same shape.

Tasks: ss3, ss8, contacts, go (from ../shared/data), or a user file:
  --task my.csv                       (columns sequence + label; split column or hash split)
  --task name=gb1,kind=protein_reg,label=score,train=a.csv,valid=b.csv,test=c.csv
  --task cb513.fasta                  (>id [split=test] / sequence line / per-residue label line)
kinds: residue_class, protein_class, protein_reg (inferred when omitted).

Writes OUTPUT/results.{md,csv,json} and PNG plots; prints the Markdown table.
Example: python -m jobs.evaluate --checkpoint outputs/pretrain/run --task ss3 --head linear \\
             limits.train=1000 limits.test=300
"""

from __future__ import annotations

import dataclasses
import logging
import sys


def _flags(ap) -> None:
    ap.add_argument("--checkpoint", action="append", default=[],
                    help="checkpoint dir, HF dir or preset name (repeatable)")
    ap.add_argument("--task", action="append", default=[], help="task name or spec (repeatable)")
    ap.add_argument("--head", action="append", default=[], choices=["linear", "mlp", "convbert"],
                    help="probe head (repeatable; default linear)")
    ap.add_argument("--output", help="report directory (default outputs/evaluate)")
    ap.add_argument("--no-baselines", action="store_true", help="skip one-hot and random-init baselines")


def parse(argv: list[str] | None = None):
    from ankh_platform.core.config import parse_cli
    from ankh_platform.evaluate.heads import EvalConfig

    cfg, args = parse_cli(EvalConfig, argv, __doc__, extra=_flags)
    over = {}
    if args.checkpoint:
        over["checkpoints"] = tuple(args.checkpoint)
    if args.task:
        over["tasks"] = tuple(args.task)
    if args.head:
        over["heads"] = tuple(args.head)
    if args.output:
        over["output"] = args.output
    if args.no_baselines:
        over["baselines"] = ()
    return dataclasses.replace(cfg, **over)


def main(argv: list[str] | None = None) -> dict:
    cfg = parse(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from ankh_platform.evaluate.report import markdown, write_reports
    from ankh_platform.evaluate.heads import run_evaluation

    report = run_evaluation(cfg)
    paths = write_reports(report, cfg.output, plots=cfg.plots, contact_protein=cfg.contact_protein)
    print(markdown(report))
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return report


if __name__ == "__main__":
    main()
