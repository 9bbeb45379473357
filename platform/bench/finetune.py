"""Fine-tuning step benchmark: ``python -m jobs.benchmark finetune [--preset base] ...``.

LoRA against full fine-tuning (and the frozen-encoder head, ``--modes``) on the same
per-residue batch: real proteins cropped so each row is ``--length`` tokens (residues and
``</s>``; a rung of the fine-tuning batch ladder, so no padding), ``--rows`` per step, the
``jobs.finetune`` network, optimizer and step (``ankh_platform.finetune``). Each mode runs in
its own process, so its peak memory is its own (the device's ``peak_bytes_in_use`` on GPU/TPU,
the process' peak RSS on CPU) beside ``step_program_mb``, what XLA's compiled step needs on any
backend. Prints one JSON line: per mode the median step time, residues/s, trainable and total
parameters and memory; then full/LoRA step-time and LoRA/full memory ratios. Random weights of
the preset's shape: step time and memory do not depend on the values.

``--longest 8,16,24`` adds, per mode, the longest protein whose training step (``--rows``
sequences) XLA compiles into each budget (GiB of ``step_program_mb``): the rungs of the batch
ladder are bisected by compiling only, so budgets beyond this machine's memory are measured too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time

import numpy as np


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="jobs.benchmark finetune",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--preset", default="base", help="model preset (default base)")
    ap.add_argument("--modes", default="lora,full", help="comma list of head, lora, full")
    ap.add_argument("--rows", type=int, default=8, help="sequences per step")
    ap.add_argument("--length", type=int, default=256, help="residues per sequence (cropped)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (after 2 warm-up steps)")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--remat", action="store_true", help="rematerialise the encoder's blocks")
    ap.add_argument(
        "--longest", default="", help="comma list of memory budgets (GiB): longest protein each"
    )
    ap.add_argument("--max-tokens", type=int, default=32768, help="--longest's top rung")
    ap.add_argument("--one", default="", help=argparse.SUPPRESS)  # the per-mode child process
    return ap


def _setup(args: argparse.Namespace):
    """The mode's model, optimizer, trainable filter and the preset's ``Ankh`` (its encoder)."""
    from flax import nnx

    import ankh
    from ankh_platform.evaluate.tasks import TaskData
    from ankh_platform.finetune import loop
    from ankh_platform.finetune.config import FinetuneJobConfig
    from ankh_platform.finetune.model import build, trainable

    preset = ankh.get_preset(args.preset)
    if args.longest:  # max_length only guards the tokenizer (positions are relative buckets)
        preset = dataclasses.replace(preset, max_length=max(preset.max_length, args.max_tokens))
    base = ankh.Ankh.random(preset, dtype=args.dtype)
    task = TaskData("bench", "residue_class", list("HEC"), {})
    cfg = FinetuneJobConfig(mode=args.one, steps=args.steps + 2)
    model = build(base, task, args.one, "linear", cfg.lora, 0, remat=args.remat)
    wrt = trainable(args.one)
    return task, model, nnx.Optimizer(model, loop.optimizer(cfg), wrt=wrt), wrt, base


def _batch(task, base, seqs: list[str]) -> dict:
    from ankh_platform.finetune.model import make_batch

    toks = base.tokenize(seqs)
    rng = np.random.default_rng(0)
    labels = [rng.integers(0, 3, len(s)) for s in seqs]
    return make_batch(task, toks, labels, len(seqs), base.num_prefix, (0.0, 1.0))


def one_mode(args: argparse.Namespace) -> dict:
    """Build, warm up and time one mode in this process."""
    from ankh_platform.core.samples import real_sequences
    from ankh_platform.finetune import loop
    from ankh_platform.finetune.model import count

    task, model, opt, wrt, base = _setup(args)
    residues = args.length - 1 - base.num_prefix  # + </s> (+ task token) = --length tokens
    seqs = [s[:residues] for s in real_sequences(args.rows, min_len=residues)]
    b = _batch(task, base, seqs)
    step = loop.step_fn(task.kind, wrt)
    program = step_program(step, model, opt, b)
    times = [loop.timed_step(step, model, opt, b)[1] for _ in range(args.steps + 2)][2:]
    med = float(np.median(times))
    out = {
        "mode": args.one,
        "remat": args.remat,
        "tokens_per_row": int(b["ids"].shape[1]),
        "step_s": round(med, 4),
        "residues_per_s": round(args.rows * residues / med, 1),
        "trainable_params": count(model, wrt),
        "total_params": count(model),
        **program,
        **loop.peak_memory_mb(),
    }
    if args.longest:
        out["longest"] = longest(args, task, step, model, opt, base)
    return out


def longest(args, task, step, model, opt, base) -> dict[str, dict]:
    """Per budget (GiB): the longest protein (residues) whose step compiles into it, and the
    step's memory there. Bisection over the ladder's rungs (memory grows with the rung)."""
    from ankh.batching import rung

    rungs, r = [], rung(64, 16, steps_per_octave=1)
    while r <= args.max_tokens:
        rungs.append(r)
        r = rung(r + 1, 16, steps_per_octave=1)
    seen: dict[int, float] = {}

    def need(tokens: int) -> float:
        if tokens not in seen:
            seqs = ["A" * (tokens - 1 - base.num_prefix)] * args.rows
            b = _batch(task, base, seqs)
            seen[tokens] = step_program(step, model, opt, b)["step_program_mb"]
        return seen[tokens]

    out = {}
    for gib in sorted(float(g) for g in args.longest.split(",") if g.strip()):
        lo, hi = -1, len(rungs) - 1  # invariant: rungs[lo] fits (-1: none), above hi none
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if need(rungs[mid]) <= gib * 1024 else (lo, mid - 1)
        fits = rungs[lo] if lo >= 0 else 0
        out[f"{gib:g}"] = {
            "residues": max(0, fits - 1 - base.num_prefix),
            "step_program_mb": seen.get(fits),
            "capped": lo == len(rungs) - 1,  # the top rung fits: the answer is a lower bound
        }
    return out


def step_program(step, model, opt, b: dict) -> dict[str, float]:
    """XLA's compiled ``step`` (``loop.step_fn``'s, lowered for ``b``): ``step_program_mb``, what it needs on any device -- arguments
    (weights, optimizer state, batch) + temporaries (activations, gradients) + outputs not
    written in place (the CPU's process RSS also counts the runtime and the host copies; this
    is the training state's alone, comparable between modes and with a device's peak) -- and
    ``step_gflop``, its floating-point work (XLA's cost analysis): what bounds the full/LoRA
    speed ratio on a compute-bound device."""
    import jax.numpy as jnp

    arrays = {k: jnp.asarray(v) for k, v in b.items()}
    compiled = step.lower(model, opt, arrays).compile()
    mem, cost = compiled.memory_analysis(), compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    need = (
        mem.argument_size_in_bytes
        + mem.temp_size_in_bytes
        + mem.output_size_in_bytes
        - mem.alias_size_in_bytes
    )
    return {
        "step_program_mb": round(need / 2**20, 1),
        "step_gflop": round(float(cost.get("flops", 0.0)) / 1e9, 2),
    }


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    if args.one:
        out = one_mode(args)
        print(json.dumps(out))
        return out
    t0 = time.perf_counter()
    res: dict = {"preset": args.preset, "rows": args.rows, "length": args.length, "modes": {}}
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        argv_one = [*(argv or sys.argv[1:]), "--one", mode]
        proc = subprocess.run(
            [sys.executable, "-m", "ankh_platform.bench.finetune", *argv_one],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode:
            raise RuntimeError(f"finetune bench, mode {mode}: {proc.stderr[-2000:]}")
        res["modes"][mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    m = res["modes"]
    if "lora" in m and "full" in m:
        res["full_over_lora_step_time"] = round(m["full"]["step_s"] / m["lora"]["step_s"], 3)
        mem = next(k for k in m["lora"] if k.startswith("peak_"))
        res["lora_over_full_memory"] = round(m["lora"][mem] / m["full"][mem], 3)
        res["lora_over_full_step_program"] = round(
            m["lora"]["step_program_mb"] / m["full"]["step_program_mb"], 3
        )
        if m["lora"]["step_gflop"]:
            res["full_over_lora_gflop"] = round(
                m["full"]["step_gflop"] / m["lora"]["step_gflop"], 3
            )
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
