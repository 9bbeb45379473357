"""``python -m jobs.benchmark learn``: what pretraining reaches in a wall-clock budget here.

    python -m jobs.benchmark learn [--config learn-cpu] [--budget-s 3000] [--calibrate-steps 20]
        [--max-steps N] [--output DIR] [key.path=value ...]

A pretraining config (a shipped preset such as ``learn-cpu`` / ``learn-gpu`` or a YAML file, then
``key.path=value`` overrides, as ``jobs.pretrain`` reads them) is run in this process twice:

1. a calibration run of ``--calibrate-steps`` steps (no probe, no baselines) times a step of
   exactly this config on this device, compile excluded;
2. the measured run, its ``steps`` set so that training fills what is left of ``--budget-s``
   after the calibration, the run's start-up (compile, data, checkpoints: as long as the
   calibration's) and a reserve for the evaluations (``--eval-reserve``), at most
   ``--max-steps`` (a smoke run: its length then does not follow the machine's load); warm-up is
   capped at a tenth of the steps, and the run evaluates four times (held-out residue loss
   beside the unigram entropy, the probes and their one-hot / random-init baselines).

Prints one JSON line: the device, the steps and tokens the budget bought, FLOPs and MFU, and
where the run ended: ``val_residue_loss`` against ``unigram_entropy`` (``below_unigram_nats``) and
each probe against its baselines (``*_vs_best_baseline``). This answers "what does a bigger
budget reach" (issue 14) on whatever accelerator runs it; on CPU, ``--budget-s 3000`` is the
``learn-cpu`` recipe's own budget. The run directory (checkpoints, metrics, curves.png) stays under
``--output``.

``--reference mlm`` (``learn_ref.py``) instead runs the config on the reference protocol of
issue 29 beside transformers' ``EsmForMaskedLM`` (``reference_mlm.py``): the same shards, crops,
masking rate and residues, both scored on one held-out definition; one JSON line with both
curves (held-out masked loss vs residues seen) and a plot. ``--reference none``: our run alone,
scored the same way (another arm beside an earlier reference line).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from typing import Any

from ankh_platform.bench import learn_ref
from ankh_platform.core import cli as _cli  # the --model / --output flags every job shares
from ankh_platform.core.config import ConfigError

PROBES = ("ss3_q3", "ss8_q8")


def _config(args: argparse.Namespace):
    from ankh_platform.core.config import PRESETS_DIR, load_config
    from ankh_platform.train.config import PretrainConfig

    return load_config(PretrainConfig, args.config, args.overrides, presets_dir=PRESETS_DIR)


def plan_steps(
    budget_s: float, calib_s: float, calib_steps: int, step_s: float, reserve: float
) -> int:
    """Steps that fit ``budget_s`` after the calibration (``calib_s`` wall for ``calib_steps``
    steps), the measured run's own start-up (taken as the calibration's: the same program to
    compile, data to open, checkpoint to write) and a ``reserve`` fraction of the budget kept for
    the evaluations; at least 1."""
    startup = max(calib_s - calib_steps * step_s, 0.0)
    left = budget_s * (1.0 - reserve) - calib_s - startup
    return max(1, int(left / step_s))


def calibrate(cfg, steps: int, out: str) -> tuple[float, float]:
    """(seconds per step of ``cfg`` here, wall seconds the calibration took): ``steps`` steps,
    held-out loss only, one checkpoint. The step time is the second half's (the last log window),
    so the compile in the first steps is not in it."""
    from ankh_platform.train.job import run_local_process

    probe = dataclasses.replace(
        cfg,
        steps=steps,
        name=f"{cfg.name}-calibrate",
        output=out,
        log_every=steps // 2,
        eval_every=0,
        eval=dataclasses.replace(cfg.eval, probe=False, baselines=False, curves=False),
        checkpoint=dataclasses.replace(cfg.checkpoint, every=steps, keep=1),
    )
    t0 = time.perf_counter()
    summary = run_local_process(probe)
    return float(summary["last"]["step_time_s"]), time.perf_counter() - t0


def measured_config(cfg, steps: int, out: str):
    """``cfg`` resized to ``steps``: warm-up at most a tenth of them, four evaluations."""
    optim = dataclasses.replace(
        cfg.optim, warmup_steps=min(cfg.optim.warmup_steps, steps // 10), total_steps=0
    )
    every = max(1, steps // 4)
    return dataclasses.replace(
        cfg,
        steps=steps,
        output=out,
        optim=optim,
        eval_every=every,
        log_every=min(cfg.log_every, every),
        checkpoint=dataclasses.replace(cfg.checkpoint, every=every),
    )


def report(summary: dict[str, Any], steps: int) -> dict[str, Any]:
    """The JSON fields of a finished run's summary."""
    last = summary.get("last", {})
    out = {
        "steps": steps,
        "tokens_per_s": last.get("tokens_per_s"),
        "mfu": last.get("mfu"),
        "val_residue_loss": summary.get("val_residue_loss"),
        "unigram_entropy": summary.get("unigram_entropy"),
        "run_dir": summary.get("run_dir"),
    }
    if out["val_residue_loss"] is not None and out["unigram_entropy"] is not None:
        out["below_unigram_nats"] = round(out["unigram_entropy"] - out["val_residue_loss"], 4)
    for m in PROBES:
        if m in summary:
            refs = [summary.get(f"{m}_{b}") for b in ("onehot", "random_init")]
            out.update({m: summary[m], f"{m}_onehot": refs[0], f"{m}_random_init": refs[1]})
            if None not in refs:
                out[f"{m}_vs_best_baseline"] = round(summary[m] - max(refs), 4)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    import jax

    from ankh import storage
    from ankh_platform.train.job import run_local_process

    cfg = _config(args)
    out_dir = args.output or tempfile.mkdtemp(prefix="ankh-learn-")
    for name in (cfg.name, f"{cfg.name}-calibrate"):  # same name + output would resume a run
        fs, path = storage.filesystem(storage.join(out_dir, name))
        if fs.exists(path):
            raise ConfigError(
                f"{storage.join(out_dir, name)} already holds a run: a benchmark "
                f"starts fresh; pass another --output or remove it"
            )
    if args.reference:
        return learn_ref.run(args, out_dir, sys.modules[__name__])
    start = time.perf_counter()
    step_s, calib_s = calibrate(cfg, args.calibrate_steps, out_dir)
    steps = plan_steps(args.budget_s, calib_s, args.calibrate_steps, step_s, args.eval_reserve)
    steps = min(steps, args.max_steps) if args.max_steps else steps
    summary = run_local_process(measured_config(cfg, steps, out_dir))
    dev = jax.devices()[0]
    return {
        "benchmark": "learn",
        "config": args.config,
        "overrides": args.overrides,
        "platform": dev.platform,
        "device_kind": dev.device_kind,
        "budget_s": args.budget_s,
        "calibration_step_s": round(step_s, 4),
        "calibration_wall_s": round(calib_s, 1),
        **report(summary, steps),
        "wall_s": round(time.perf_counter() - start, 1),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(
        prog="python -m jobs.benchmark learn",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--config", default="learn-cpu", help="pretraining preset (jobs/configs) or YAML file"
    )
    ap.add_argument(
        "--budget-s",
        type=float,
        default=3000.0,
        help="wall-clock seconds for calibration + the measured run",
    )
    ap.add_argument(
        "--calibrate-steps",
        type=int,
        default=20,
        help="steps run before the measured run; the second half is timed",
    )
    ap.add_argument(
        "--max-steps",
        type=int,
        default=0,
        help="cap on the measured run's steps (0: as many as the budget buys); a smoke run's "
        "length then does not depend on how fast the machine is at the moment",
    )
    ap.add_argument(
        "--eval-reserve",
        type=float,
        default=0.15,
        help="fraction of the budget kept for evaluations and checkpoints",
    )
    _cli.add(ap, "--output", _cli.output_flag(None, "the runs (default: a temp dir)"))
    learn_ref.add_flags(ap)
    ap.add_argument(
        "overrides",
        nargs="*",
        metavar="key.path=value",
        help="config overrides, as jobs.pretrain takes them",
    )
    args = ap.parse_args(argv)
    if args.budget_s <= 0 or args.calibrate_steps < 4 or not 0 <= args.eval_reserve < 1:
        ap.error("--budget-s must be > 0, --calibrate-steps >= 4, 0 <= --eval-reserve < 1")
    if args.max_steps < 0:
        ap.error("--max-steps must be >= 0 (0: no cap)")
    if args.max_steps and args.reference:
        ap.error("--max-steps caps the budget run; with --reference, --residues sets the length")
    if args.output:
        os.makedirs(args.output, exist_ok=True)
    out = run(args)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
