"""``python -m jobs.benchmark embed``: our JAX encoder vs HF PyTorch T5 on the same weights.

Prints one JSON line: tokens/s of both (same shapes, same run), their ratio, achieved GFLOP/s
and the fraction of this machine's measured float32 matmul peak.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as stdlib_platform
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import ankh
from ankh.config import AnkhConfig


def encoder_flops(cfg: AnkhConfig, batch: int, length: int) -> float:
    """Forward FLOPs of the encoder (matmuls + attention scores/context)."""
    per_token = 2 * (4 * cfg.d_model * cfg.inner_dim + (3 if cfg.is_gated_act else 2) * cfg.d_model * cfg.d_ff)
    attn = 2 * 2 * cfg.num_heads * cfg.d_kv * length  # QK^T and PV per token
    return float(batch * length * cfg.num_layers * (per_token + attn))


def time_it(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    secs = time_it(lambda: f(a).block_until_ready(), repeats)
    return 2 * n ** 3 / secs / 1e9


def real_batch(model: ankh.Ankh, batch: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    from ankh_platform.core.samples import long_sequences  # bundled/shared real proteins

    seqs = [s[: length - 1] for s in long_sequences(batch, length - 1)]
    return model.tokenizer.batch_encode(seqs, pad_to=length)


def hf_encoder(model: ankh.Ankh):
    import torch
    from transformers import T5Config, T5EncoderModel

    from ankh.convert import flat_to_hf

    ref = T5EncoderModel(T5Config(**model.config.to_hf_dict())).eval()
    sd = {k: torch.from_numpy(np.array(v)) for k, v in flat_to_hf(model.flat_params(), model.config).items()
          if k.startswith(("shared", "encoder"))}
    missing, unexpected = ref.load_state_dict(sd, strict=False)
    assert not unexpected and all("embed_tokens" in m for m in missing), (missing, unexpected)
    return ref


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m jobs.benchmark embed", description=__doc__)
    ap.add_argument("--preset", default="base", help="model preset (random weights)")
    ap.add_argument("--checkpoint", help="HF dir or checkpoint instead of a preset")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=256, help="tokens per sequence (incl. </s>)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--reference", default="hf", choices=["hf", "none"])
    args = ap.parse_args(argv)

    model = ankh.load(args.checkpoint or args.preset, dtype=args.dtype)
    ids, mask = real_batch(model, args.batch, args.length)
    encode = jax.jit(lambda p, i, m: nnx.merge(model.graphdef, p).encode(i, m))
    ours = time_it(lambda: encode(model.params, ids, mask).block_until_ready(), args.repeats)
    flops = encoder_flops(model.config, args.batch, args.length)
    tokens = args.batch * args.length
    peak = matmul_peak_gflops()
    result = {
        "benchmark": "embed", "preset": args.checkpoint or args.preset, "dtype": args.dtype,
        "batch": args.batch, "length": args.length, "device": str(jax.devices()[0]),
        "cpu": stdlib_platform.processor() or stdlib_platform.machine(), "cores": os.cpu_count(),
        "ours_tokens_per_s": tokens / ours, "ours_gflops": flops / ours / 1e9,
        "matmul_peak_gflops": peak, "ours_fraction_of_peak": flops / ours / 1e9 / peak,
    }
    if args.reference == "hf":
        import torch

        ref = hf_encoder(model)
        ti, tm = torch.from_numpy(ids).long(), torch.from_numpy(mask).long()
        with torch.inference_mode():
            theirs = time_it(lambda: ref(input_ids=ti, attention_mask=tm), args.repeats)
            diff = np.abs(ref(input_ids=ti, attention_mask=tm).last_hidden_state.numpy()
                          - np.asarray(encode(model.params, ids, mask)))[mask.astype(bool)].max()
        result.update({"hf_tokens_per_s": tokens / theirs, "hf_gflops": flops / theirs / 1e9,
                       "ratio_ours_over_hf": theirs / ours, "torch_threads": torch.get_num_threads(),
                       "max_abs_diff_vs_hf": float(diff)})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
