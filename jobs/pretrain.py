"""Pretrain Ankh with Ray Train + sharded JAX: ``python -m jobs.pretrain [--config PRESET] [k=v ...]``.

With no arguments: a local Ray instance, the ``tiny`` model, the bundled real sample
(``platform/core/data/``), a few minutes on 2 CPU cores; the checkpoint lands under
``outputs/pretrain/`` (``--output DIR`` overrides). Re-running with the same ``name`` and output
resumes the run.
On a cluster: ``ray job submit --working-dir . -- python -m jobs.pretrain --config base ...``.
Continued pretraining / domain adaptation: ``--model`` an HF Ankh directory, one of our runs or
checkpoints, a ``gs://`` path or a hub id (``ElnaggarLab/ankh-base``) trains that network from its
weights (its tokenizer, fresh optimizer, step 0; peak LR 1e-4 unless ``optim.peak_lr`` is set);
``train.freeze=[encoder]`` adapts only the decoder.
Preemptible TPUs: SIGTERM (a preemption notice) to the run, any worker or the driver of
``ray job submit`` (``ray job stop``; give it time with ``RAY_JOB_STOP_WAIT_TIME_S=30`` in the
job's env) saves the step in progress and stops; the same command resumes
(docs/pretraining.md, "Preemptible TPUs").
The last line printed is the checkpoint directory (``ankh.load(that_dir)`` loads it).
"""

from __future__ import annotations

import json
import sys

from ankh_platform.core import cli as _cli

FLAGS = {
    "--model": _cli.model_flag(
        "model", "a preset trains from scratch, the rest continue from their weights (or model=)"
    ),
    "--output": _cli.output_flag(
        "output", "runs go to OUTPUT/NAME, local or gs:// (default outputs/pretrain; or output=)"
    ),
    "--name": _cli.flag("name", "run name (same name + output = resume)"),
    "--address": _cli.flag(None, "Ray cluster address (default: RAY_ADDRESS or a local Ray)"),
    "--in-process": _cli.flag(
        None,
        "run the loop in this process without Ray (one JAX process; debugging)",
        action="store_true",
    ),
}


def parse(argv: list[str] | None = None):
    from ankh_platform.core.config import PRESETS_DIR
    from ankh_platform.train.config import PretrainConfig

    return _cli.parse(
        PretrainConfig, argv, __doc__, "jobs.pretrain", FLAGS, presets_dir=PRESETS_DIR
    )


def main(argv: list[str] | None = None) -> dict:
    from ankh_platform.train import job as train

    cfg, args = parse(argv)
    summary = train.run_local_process(cfg) if args.in_process else train.run(cfg, args.address)
    ckpt = summary["checkpoint_dir"]
    extra = [
        k
        for k in (
            "unigram_entropy",
            "ss3_q3",
            "ss3_q3_onehot",
            "ss3_q3_random_init",
            "ss8_q8",
            "ss8_q8_onehot",
            "ss8_q8_random_init",
        )
        if k in summary
    ]
    print(
        json.dumps(
            {k: summary.get(k) for k in ("step", "val_loss", "val_residue_loss", *extra, "run_dir")}
        )
    )
    if summary.get("curves"):
        print(f"curves: {summary['curves']}")
    print(
        f"embed:  python -c \"import ankh; print(ankh.load('{ckpt}').embed(['MKTAYIAKQR']).shape)\""
    )
    print(f"serve:  python -m jobs.serve --model {ckpt}")
    print(f"export: python -m jobs.convert export --model {ckpt} --output OUT_HF_DIR")
    print(ckpt)
    return summary


if __name__ == "__main__":
    sys.exit(_cli.run(main))
