"""``python -m jobs.benchmark embed``: our JAX encoder vs HF PyTorch T5 on the same weights.

Prints one JSON line: tokens/s of both (same shapes, same run), their ratio, achieved GFLOP/s
and the fraction of this machine's matmul peak (``ankh.flops``: same run, same dtype).
"""

from __future__ import annotations

import argparse
import json
import os
import platform as stdlib_platform
import time
from collections.abc import Callable

import jax
import numpy as np
from flax import nnx

import ankh
from ankh.accelerator import dtype_name
from ankh.flops import encoder_flops, measure_matmul_peak
from ankh_platform.core import cli as _cli  # the --model / --output flags every job shares


def time_it(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def real_batch(model: ankh.Ankh, batch: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    from ankh_platform.core.samples import long_sequences  # bundled/shared real proteins

    seqs = [s[: length - 1] for s in long_sequences(batch, length - 1)]
    return model.tokenizer.batch_encode(seqs, pad_to=length)


def hf_encoder(model: ankh.Ankh):
    import torch
    from transformers import T5Config, T5EncoderModel

    from ankh.convert import flat_to_hf

    ref = T5EncoderModel(T5Config(**model.config.to_hf_dict())).eval()
    sd = {
        k: torch.from_numpy(np.array(v))
        for k, v in flat_to_hf(model.flat_params(), model.config).items()
        if k.startswith(("shared", "encoder"))
    }
    missing, unexpected = ref.load_state_dict(sd, strict=False)
    assert not unexpected and all("embed_tokens" in m for m in missing), (missing, unexpected)
    return ref


def _model(name: str, dtype: str) -> ankh.Ankh:
    """A preset, checkpoint or HF dir (``ankh.load``), or a benchmark shape (``d512x8``: the
    issue's CPU comparison shape, random weights from seed 0)."""
    from ankh_platform.bench.generate import SHAPES, bench_config

    if name in SHAPES:
        return ankh.Ankh.random(bench_config(name), seed=0, dtype=dtype)
    return ankh.load(name, dtype=dtype)


_MODEL = _cli.model_flag(
    None,
    "or a benchmark shape (d512x8); a preset or shape has random weights (default base)",
    aliases=("--checkpoint", "--preset"),
    default="base",
)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m jobs.benchmark embed", description=__doc__)
    _cli.add(ap, "--model", _MODEL)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=256, help="tokens per sequence (incl. </s>)")
    ap.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16"],
        help="compute dtype (auto: bfloat16 on GPU/TPU, float32 on CPU)",
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--reference", default="hf", choices=["hf", "none"])
    args = ap.parse_args(argv)
    args.dtype = dtype_name(args.dtype)

    model = _model(args.model, args.dtype)
    ids, mask = real_batch(model, args.batch, args.length)
    encode = jax.jit(lambda p, i, m: nnx.merge(model.graphdef, p).encode(i, m))
    ours = time_it(lambda: encode(model.params, ids, mask).block_until_ready(), args.repeats)
    flops = encoder_flops(model.config, args.batch, args.length)
    tokens = args.batch * args.length
    # The encoder runs on one device: the peak of that device, in the model's dtype.
    peak = measure_matmul_peak(args.dtype, seconds=2.0, devices=jax.devices()[:1]) / 1e9
    result = {
        "benchmark": "embed",
        "preset": args.model,
        "dtype": args.dtype,
        "batch": args.batch,
        "length": args.length,
        "device": str(jax.devices()[0]),
        "device_kind": jax.devices()[0].device_kind,
        "cpu": stdlib_platform.processor() or stdlib_platform.machine(),
        "cores": os.cpu_count(),
        "ours_tokens_per_s": tokens / ours,
        "ours_gflops": flops / ours / 1e9,
        "matmul_peak_gflops": peak,
        "ours_fraction_of_peak": flops / ours / 1e9 / peak,
    }
    if args.reference == "hf":
        import torch

        ref = hf_encoder(model)
        ti, tm = torch.from_numpy(ids).long(), torch.from_numpy(mask).long()
        with torch.inference_mode():
            theirs = time_it(lambda: ref(input_ids=ti, attention_mask=tm), args.repeats)
            diff = np.abs(
                ref(input_ids=ti, attention_mask=tm).last_hidden_state.numpy()
                - np.asarray(encode(model.params, ids, mask))
            )[mask.astype(bool)].max()
        result.update(
            {
                "hf_tokens_per_s": tokens / theirs,
                "hf_gflops": flops / theirs / 1e9,
                "ratio_ours_over_hf": theirs / ours,
                "torch_threads": torch.get_num_threads(),
                "max_abs_diff_vs_hf": float(diff),
            }
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
