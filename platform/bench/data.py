"""``python -m jobs.benchmark data``: pipeline tokens/s and padding waste vs the train step.

Streams real proteins (default: ``samples.protein_shard()``: ``uniprot_go/part-000.parquet`` of the
data dir, else the bundled sample) through the full pipeline (Ray Data read -> crop/mask -> pack -> batches) and
reports throughput and padding waste; then times a jitted forward+backward of the ``base``
preset on this machine and prints the ratio pipeline tokens/s / train tokens/s (target >= 5).
Tokens are token slots of the batch (encoder + decoder, padding included) on both sides.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time

import numpy as np

from ankh.packing import padding_waste
from ankh.tokenizer import RESIDUE_IDS
from ankh_platform.core.samples import protein_shard
from ankh_platform.data.pipeline import BatchStream, DataConfig


def bench_pipeline(cfg: DataConfig, max_batches: int) -> dict:
    t0 = time.perf_counter()
    stream = BatchStream(cfg)
    it = iter(stream)
    first = next(it)
    t1 = time.perf_counter()  # startup: listing, Ray Data plan, first window
    batches, tokens, real, wastes = 1, 0, 0, []
    for b in [first, *it]:
        tokens += b["input_ids"].size + b["labels"].size
        real += int(np.sum(b["segment_ids"] > 0) + np.sum(b["decoder_segment_ids"] > 0))
        wastes.append(padding_waste(b))
        if batches >= max_batches:
            break
        batches += 1
    t2 = time.perf_counter()
    # The last batch of a window may be partly empty rows; it is counted (it is real waste).
    waste = {k: float(np.mean([w[k] for w in wastes])) for k in ("encoder", "decoder", "total")}
    return {
        "batches": batches,
        "batch_shape": {"rows": cfg.rows, "enc_len": cfg.enc_len, "dec_len": stream.spec.dec_len},
        "startup_s": round(t1 - t0, 3),
        "seconds": round(t2 - t1, 3),
        "tokens_per_s": tokens / max(t2 - t1, 1e-9),
        "real_tokens_per_s": real / max(t2 - t1, 1e-9),
        "padding_waste": waste,
    }


def bench_train_step(preset: str, rows: int, enc_len: int, dec_len: int, steps: int) -> dict:
    """Forward + backward of ``preset`` (float32, jitted) on a [rows, enc_len]/[rows, dec_len] batch."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from ankh.config import get_preset
    from ankh.model import AnkhModel

    cfg = get_preset(preset)
    model = AnkhModel(cfg, nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    rng = np.random.default_rng(0)
    enc = jnp.asarray(rng.integers(RESIDUE_IDS.start, RESIDUE_IDS.stop, (rows, enc_len)), jnp.int32)
    # targets: residues and sentinels (ids up to the top of the vocabulary)
    dec = jnp.asarray(rng.integers(RESIDUE_IDS.start, cfg.vocab_size, (rows, dec_len)), jnp.int32)
    ones_e, ones_d = jnp.ones((rows, enc_len), jnp.int32), jnp.ones((rows, dec_len), jnp.int32)

    @jax.jit
    def step(params):
        def loss_fn(p):
            logits = nnx.merge(graphdef, p)(enc, ones_e, dec, ones_d)  # [b, ld, vocab]
            return optax.softmax_cross_entropy_with_integer_labels(logits, dec).mean()

        return jax.value_and_grad(loss_fn)(params)

    t0 = time.perf_counter()
    jax.block_until_ready(step(params))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        jax.block_until_ready(step(params))
        times.append(time.perf_counter() - t)
    sec = float(np.median(times))
    return {
        "preset": preset,
        "rows": rows,
        "enc_len": enc_len,
        "dec_len": dec_len,
        "compile_and_first_s": round(compile_s, 2),
        "step_s": round(sec, 3),
        "tokens_per_s": rows * (enc_len + dec_len) / sec,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m jobs.benchmark data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--paths", nargs="*", default=None, help="Parquet dirs/files, local or gs://")
    ap.add_argument("--batches", type=int, default=300, help="pipeline batches to time")
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--enc-len", type=int, default=DataConfig.enc_len)
    ap.add_argument("--window", type=int, default=DataConfig.window)
    ap.add_argument("--train-preset", default="base")
    ap.add_argument("--train-rows", type=int, default=1)
    ap.add_argument(
        "--train-enc-len",
        type=int,
        default=256,
        help="shorter than a packed row: attention is cheaper per token, so the train "
        "step looks faster and the reported ratio is a lower bound",
    )
    ap.add_argument("--train-dec-len", type=int, default=128)
    ap.add_argument("--train-steps", type=int, default=2)
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import ray

    from ankh_platform.core.runtime import init_ray

    init_ray(
        num_cpus=min(os.cpu_count() or 2, 4),
        object_store_memory=500_000_000,
        log_to_driver=False,
        configure_logging=False,
    )
    ray.data.DataContext.get_current().enable_progress_bars = False
    cfg = dataclasses.replace(
        DataConfig(),
        paths=tuple(args.paths or [str(protein_shard())]),
        rows=args.rows,
        enc_len=args.enc_len,
        window=args.window,
        epochs=1,
    )
    try:
        pipe = bench_pipeline(cfg, args.batches)
    finally:
        ray.shutdown()
    out = {
        "benchmark": "data",
        "paths": list(cfg.paths),
        "pipeline": pipe,
        "padding_waste": pipe["padding_waste"]["total"],
        "tokens_per_s": pipe["tokens_per_s"],
        "cpu_count": os.cpu_count(),
    }
    if not args.skip_train:
        train = bench_train_step(
            args.train_preset,
            args.train_rows,
            args.train_enc_len,
            args.train_dec_len,
            args.train_steps,
        )
        out["train_step"] = train
        out["ratio_vs_train_step"] = pipe["tokens_per_s"] / train["tokens_per_s"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
