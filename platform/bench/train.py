"""Train-step benchmark: ``python -m jobs.benchmark train [--preset small] [--steps 20] ...``.

Prints one JSON line: tokens/s, step time, achieved FLOP/s (analytic matmul FLOPs,
``ankh.flops.train_step_flops``), MFU against this machine's *measured* matmul peak
(``ankh.flops.measure_matmul_peak`` in the same run, same dtype), and the fraction of wall time the loop spent
waiting for data. One JAX process, all local devices in a data-parallel mesh (set
``JAX_NUM_CPU_DEVICES`` / run on a TPU host for more). See docs/pretraining.md for TPU-v4 figures.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from ankh import sharding
from ankh.accelerator import dtype_name
from ankh.config import get_preset
from ankh.flops import measure_matmul_peak, train_step_flops
from ankh.training import OptimConfig, Trainer


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="jobs.benchmark train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--preset", default="small", help="model preset (default small)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps (after 2 warm-up steps)")
    ap.add_argument("--rows", type=int, default=8, help="rows per step")
    ap.add_argument(
        "--max-residues", type=int, default=256, help="crop length (enc_len = this + 1)"
    )
    ap.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16"],
        help="compute dtype (auto: bfloat16 on GPU/TPU, float32 on CPU)",
    )
    ap.add_argument("--optimizer", default="adafactor", choices=["adafactor", "adamw"])
    ap.add_argument("--matmul-n", type=int, default=2048, help="size of the peak-FLOP/s matmul")
    ap.add_argument("--data", default="", help="Parquet train dir/file (default: bundled sample)")
    return ap


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    args.dtype = dtype_name(args.dtype)

    from ankh_platform.core.samples import bundled_train
    from ankh_platform.data.pipeline import DataConfig
    from ankh_platform.train.config import SourceConfig
    from ankh_platform.train.source import make_source

    cfg = get_preset(args.preset)
    data = DataConfig(
        paths=(args.data or str(bundled_train()),),
        rows=args.rows,
        max_residues=args.max_residues,
        prefetch=2,
    )
    source = make_source(data, SourceConfig(kind="local"), 0, 1)
    mesh = sharding.make_mesh({"data": -1})
    tr = Trainer(
        cfg,
        OptimConfig(
            optimizer=args.optimizer, total_steps=1000, warmup_steps=10, compute_dtype=args.dtype
        ),
        mesh,
    )
    state = tr.init_state()
    peak0 = measure_matmul_peak(args.dtype, args.matmul_n, seconds=2.0)
    t0 = time.perf_counter()
    for _ in range(2):  # compile + warm up
        state, m = tr.step(state, sharding.global_batch(source.next(), mesh))
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0

    wait, tokens, padded = 0.0, 0, 0
    t0 = time.perf_counter()
    for _ in range(args.steps):
        t = time.perf_counter()
        local = source.next()
        batch = sharding.global_batch(local, mesh)
        wait += time.perf_counter() - t
        tokens += int((local["segment_ids"] > 0).sum() + (local["decoder_segment_ids"] > 0).sum())
        padded += local["segment_ids"].size + local["decoder_segment_ids"].size
        state, m = tr.step(state, batch)
    jax.block_until_ready((state, m))
    wall = time.perf_counter() - t0
    source.close()

    spec = source.spec
    flops = train_step_flops(cfg, spec.rows, spec.enc_len, spec.dec_len) * args.steps
    # Peak measured before and after the timed steps; the higher one (conservative MFU).
    peak = max(peak0, measure_matmul_peak(args.dtype, args.matmul_n, seconds=2.0))
    out = {
        "bench": "train",
        "preset": args.preset,
        "dtype": args.dtype,
        "optimizer": args.optimizer,
        "devices": jax.device_count(),
        "platform": jax.devices()[0].platform,
        "device_kind": jax.devices()[0].device_kind,
        "batch_shape": {"rows": spec.rows, "enc_len": spec.enc_len, "dec_len": spec.dec_len},
        "steps": args.steps,
        "compile_s": round(compile_s, 2),
        "step_time_s": wall / args.steps,
        "tokens_per_s": tokens / wall,
        "padded_tokens_per_s": padded / wall,
        "achieved_flops_per_s": flops / wall,
        "matmul_peak_flops_per_s": peak,
        "mfu": flops / wall / peak,
        "data_wait_frac": wait / wall,
        "final_loss": float(np.asarray(m["loss"])),
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
