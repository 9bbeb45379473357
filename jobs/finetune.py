"""Fine-tune Ankh's encoder on labelled proteins: a head on the frozen encoder, LoRA, or full.

    python -m jobs.finetune --model MODEL --task SPEC --output DIR [mode=head|lora|full] ...

Tasks are jobs.evaluate's specs: ss3, ss8 (per residue, from ../shared/data), go_mf (per protein,
multi-label: the most frequent GO molecular-function terms of uniprot_go), or a user file:
  --task my.csv                      (columns sequence + label; split column or hash split)
  --task name=gb1,kind=protein_reg,label=score,train=a.csv,valid=b.csv,test=c.csv
  --task cb513.fasta                 (>id [split=test] / sequence line / per-residue label line)
kinds: residue_class, protein_class, protein_reg (inferred when omitted).

Settings (key=value): mode (lora), head (linear|mlp|convbert), lora.rank (4), lora.alpha (1),
lora.targets ([q,k,v,o]), lora.dropout (0; PEFT's lora_dropout, in training steps only), steps,
batch_size, learning_rate (3e-4), eval_every, patience (validation passes without improvement
before stopping), class_weights (none|balanced), limits.train / limits.valid / limits.test /
limits.max_length, scale.num_workers (1: this process; more: Ray Train data parallel, each
global batch of batch_size rows split over the workers; scale.use_gpu / scale.use_tpu as
jobs.pretrain), mesh.fsdp / mesh.tensor (parameters, gradients and optimizer state sharded over
the workers' devices, as jobs.pretrain), max_failures.

Writes OUTPUT/summary.json (test metric, trainable and total parameters, step time, peak
memory), metrics.jsonl, tensorboard/, curves.png, run.json, head.safetensors, adapter/ (LoRA, PEFT format), model/ (an HF
directory with the tuning merged) and checkpoints/ -- the same command again resumes.
Example: python -m jobs.finetune --model tiny --task ss3 --output runs/ss3 mode=lora steps=200
"""

from __future__ import annotations

import json
import sys

from ankh_platform.core import cli as _cli

FLAGS = {
    "--model": _cli.model_flag("model", "its encoder is tuned (default tiny); or model="),
    "--task": _cli.flag("task", "task name or spec (default ss3); or task="),
    "--output": _cli.output_flag("output", "the run directory (default outputs/finetune)"),
    "--address": _cli.flag(
        None, "Ray cluster address for scale.num_workers > 1 (default: RAY_ADDRESS or a local Ray)"
    ),
}


def main(argv: list[str] | None = None) -> dict:
    from ankh_platform.finetune.config import FinetuneJobConfig
    from ankh_platform.finetune.job import run

    cfg, args = _cli.parse(FinetuneJobConfig, argv, __doc__, "jobs.finetune", FLAGS)
    summary = run(cfg, getattr(args, "address", None))
    print(json.dumps(summary))
    print(cfg.output)
    return summary


if __name__ == "__main__":
    sys.exit(_cli.run(main))
