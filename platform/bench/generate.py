"""Generation speed: our jitted KV-cache decoding vs HF ``generate`` on the same weights.

    python -m jobs.benchmark generate [--preset d512x8] [--batch 8] [--input-len 200]
        [--sentinels 1] [--max-new-tokens 64] [--strategies greedy,sample,beam4] [--repeats 1]
        [--torch-threads auto] [--reference hf|none] [--no-profile]

Both sides get the same real proteins (cropped to ``--input-len`` residues, then
``--sentinels`` sentinels), the same weights (ours exported with ``save_hf`` and loaded by
``T5ForConditionalGeneration``), the same settings (sampling: temperature 1, top_k 0, top_p 1)
and exactly ``--max-new-tokens`` new tokens per row (``min_new_tokens`` = ``max_new_tokens`` on
both sides; the token counts are in the output). Greedy and beam outputs are compared token for
token (``identical_to_hf``). ``--preset``: a model preset or ``d512x8`` (d_model 512, d_ff 2048,
8 heads of 64, 8 + 8 layers, gated-GELU, 64 buckets; random weights).

Time excludes compilation / warm-up (one untimed call each); the median of ``--repeats`` timed
calls is reported, as seconds, steps/s and ms/step (a step = one new token for every row).
HF runs with the fastest of the ``--torch-threads`` settings (``auto``: 1 and all cores) on a
short probe call: PyTorch's multi-threaded small matmuls can be ten times slower than one
thread on a busy host, and the ratio should not profit from that. ``profile``: what one of our decode steps
executes (from the compiled program: ops, dots, copies of KV-cache-sized buffers, host round
trips) and where the greedy time goes (encoder + setup vs per step). ``floor`` (float32): the
least time any implementation could take here -- the encoder at the matmul peak and each step
at the slower of its FLOPs at that peak and its bytes (every decoder weight, the caches) at the
memory read bandwidth, both measured in the same run -- and, per mode, ``ceiling_ratio``: HF's
time over that floor, the most a ratio could be on this machine. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from typing import Any

import numpy as np

from ankh_platform.bench.decode_profile import floor_seconds, step_profile

# d512 x 8: the shape the CPU comparisons use (ankh-base's proportions, d_ff = 4 d).
SHAPES = {
    "d512x8": dict(
        d_model=512,
        d_ff=2048,
        d_kv=64,
        num_heads=8,
        num_layers=8,
        num_decoder_layers=8,
        max_length=1024,
    )
}


def _strategy(name: str) -> dict[str, Any]:
    """The settings a strategy name sets, as keywords of HF ``generate`` and ``GenerationConfig``."""
    if name == "greedy":
        return {"do_sample": False, "num_beams": 1}
    if name == "sample":
        return {"do_sample": True, "num_beams": 1, "temperature": 1.0, "top_k": 0, "top_p": 1.0}
    if name.startswith("beam"):
        return {"do_sample": False, "num_beams": int(name[4:] or 4)}
    raise SystemExit(f"unknown strategy {name!r}: greedy, sample or beamN")


def _settings(name: str, steps: int):
    """Our side's ``GenerationConfig``: exactly ``steps`` new tokens per row, as HF is asked."""
    from ankh.generation_config import GenerationConfig

    return GenerationConfig(max_new_tokens=steps, min_new_tokens=steps, **_strategy(name))


def bench_config(name: str):
    """A benchmark model shape: one of ``SHAPES`` or a preset (every CPU comparison with HF
    names its model this way: ``generate``, ``embed``, ``fasta``)."""
    from ankh.config import AnkhConfig, get_preset

    return AnkhConfig(**SHAPES[name]) if name in SHAPES else get_preset(name)


def _timed(fn, repeats: int) -> tuple[float, Any]:
    out = fn()  # warm-up (compiles ours; primes HF's caches)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _count(rows) -> int:
    return int(sum(len(r) - (1 if len(r) and r[-1] == 1 else 0) for r in rows))


def _speed(seconds: float, steps: int, tokens: int, prefix: str) -> dict[str, float]:
    return {
        f"{prefix}_seconds": round(seconds, 4),
        f"{prefix}_tokens_per_s": round(tokens / seconds, 1),
        f"{prefix}_steps_per_s": round(steps / seconds, 2),
        f"{prefix}_ms_per_step": round(1e3 * seconds / steps, 2),
    }


# ---- HF -------------------------------------------------------------------------------------------
def _hf_model(model):
    from transformers import T5ForConditionalGeneration

    with tempfile.TemporaryDirectory() as tmp:
        model.save_hf(tmp)
        return T5ForConditionalGeneration.from_pretrained(tmp).eval()


def _hf_batch(model, seqs: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """HF's inputs: our token ids (sentinels included), padded to the longest row only."""
    from ankh import batching

    toks = [model.tokenizer.encode(s, allow_sentinels=True) for s in seqs]
    ids, mask = batching.pad_rows(toks, pad_id=model.tokenizer.pad_id)
    return np.asarray(ids, np.int64), np.asarray(mask, np.int64)


def _pick_threads(hf, ids, mask, threads: list[int]) -> tuple[int, dict[str, float]]:
    """The fastest of ``threads`` for HF on a short greedy call (encoder + 4 steps)."""
    import torch

    t_ids, t_mask = torch.tensor(ids), torch.tensor(mask)
    probe = {}
    for n in threads:
        torch.set_num_threads(n)
        with torch.no_grad():
            probe[n], _ = _timed(
                lambda: hf.generate(
                    input_ids=t_ids, attention_mask=t_mask, max_new_tokens=4, do_sample=False
                ),
                1,
            )
    best = min(probe, key=probe.get)
    torch.set_num_threads(best)
    return best, {str(n): round(t, 3) for n, t in probe.items()}


def _hf_rows(hf, ids, mask, args, kw) -> tuple[float, list]:
    import torch

    t_ids, t_mask = torch.tensor(ids), torch.tensor(mask)

    def hf_call():
        torch.manual_seed(0)
        with torch.no_grad():
            return hf.generate(
                input_ids=t_ids,
                attention_mask=t_mask,
                min_new_tokens=args.max_new_tokens,
                max_new_tokens=args.max_new_tokens,
                **kw,
            ).numpy()

    hf_t, hf_out = _timed(hf_call, args.repeats)
    rows = []
    for r in hf_out:
        r = r[1:]
        stop = np.flatnonzero(r == 1)
        rows.append(r[: stop[0] + 1] if stop.size else r[r != 0])
    return hf_t, rows


def _threads(spec: str) -> list[int]:
    if spec == "auto":
        return sorted({1, os.cpu_count() or 1})
    try:
        return [int(x) for x in spec.split(",") if x]
    except ValueError:
        raise SystemExit(
            f"--torch-threads: 'auto' or a comma list of integers, got {spec!r}"
        ) from None


# ---- profile ----------------------------------------------------------------------------------------
def _profile(model, seqs, args, name: str) -> dict[str, Any]:
    gc = _settings(name, args.max_new_tokens)
    cfg, rows = model.config, args.batch * gc.num_beams
    cache_bytes = (
        rows * cfg.num_heads * cfg.d_kv * (args.max_new_tokens + 1) * np.dtype(model.dtype).itemsize
    )
    hlo = model.decoding_hlo(seqs, gc, batch_size=args.batch)
    return step_profile(hlo, cache_bytes)


def _step_split(model, hf, hf_in, seqs, args, greedy: dict[str, Any]) -> dict[str, float]:
    """Greedy, both sides: the cost of a 1-token call (encoder, cache setup, one step) and of
    each further step. The 1-token call bounds the ratio whatever a step costs."""
    n = max(args.max_new_tokens - 1, 1)
    one, _ = _timed(
        lambda: model.generate_ids(seqs, _settings("greedy", 1), batch_size=args.batch),
        args.repeats,
    )
    out = {
        "ours_one_token_call_s": round(one, 4),
        "ours_ms_per_extra_step": round(1e3 * (greedy["ours_seconds"] - one) / n, 2),
    }
    if hf is not None:
        one_args = argparse.Namespace(**{**vars(args), "max_new_tokens": 1})
        hf_one, _ = _hf_rows(hf, *hf_in, one_args, _strategy("greedy"))
        out.update(
            {
                "hf_one_token_call_s": round(hf_one, 4),
                "hf_ms_per_extra_step": round(1e3 * (greedy["hf_seconds"] - hf_one) / n, 2),
            }
        )
    return out


# ---- the float32 floor --------------------------------------------------------------------------------
def _ceilings(cfg, results: dict[str, Any], args, enc_len: int, seconds: float) -> dict[str, Any]:
    """Per mode: the floor, ours as a fraction of it and (with HF) the ratio at the floor."""
    import jax

    from ankh.flops import measure_matmul_peak, measure_read_bandwidth

    peak = measure_matmul_peak("float32", seconds=seconds, devices=jax.devices()[:1])
    bw = measure_read_bandwidth(seconds=seconds)
    out = {
        "matmul_peak_gflops": round(peak / 1e9, 1),
        "read_bandwidth_gb_s": round(bw / 1e9, 1),
        "enc_len": enc_len,
    }
    for name, res in results.items():
        floor = floor_seconds(
            cfg, args.batch, enc_len, args.max_new_tokens, _strategy(name)["num_beams"], peak, bw
        )
        res["floor_seconds"] = round(floor, 6)
        res["ours_fraction_of_floor"] = round(floor / res["ours_seconds"], 3)
        if "hf_seconds" in res:  # the most any float32 implementation could reach against HF
            res["ceiling_ratio"] = round(res["hf_seconds"] / floor, 2)
    return out


# ---- the run ----------------------------------------------------------------------------------------
def _mode(model, hf, seqs, hf_in, args, name: str) -> dict[str, Any]:
    kw = _strategy(name)
    steps, gc = args.max_new_tokens, _settings(name, args.max_new_tokens)
    ours_t, ours = _timed(lambda: model.generate_ids(seqs, gc, batch_size=args.batch), args.repeats)
    ours_rows = [r[0] for r in ours]
    res = {"tokens_ours": _count(ours_rows), **_speed(ours_t, steps, _count(ours_rows), "ours")}
    if hf is not None:
        hf_t, hf_rows = _hf_rows(hf, *hf_in, args, kw)
        res.update({"tokens_hf": _count(hf_rows), **_speed(hf_t, steps, _count(hf_rows), "hf")})
        res["ratio"] = round(hf_t / ours_t, 2)  # same tokens on both sides
        if name != "sample":
            res["identical_to_hf"] = len(ours_rows) == len(hf_rows) and all(
                np.array_equal(a, b) for a, b in zip(ours_rows, hf_rows)
            )
    return res


def run(args: argparse.Namespace) -> dict[str, Any]:
    import jax

    from ankh.api import Ankh
    from ankh_platform.core.samples import long_sequences

    model = Ankh.random(bench_config(args.preset), seed=0)
    tail = "".join(
        model.tokenizer.decode([model.tokenizer.sentinel_id(k)]) for k in range(args.sentinels)
    )
    seqs = [s[: args.input_len] + tail for s in long_sequences(args.batch, args.input_len, seed=0)]
    hf = _hf_model(model) if args.reference == "hf" else None
    hf_in = _hf_batch(model, seqs)
    if hf is not None:
        threads, probe = _pick_threads(hf, *hf_in, _threads(args.torch_threads))
    results = {
        name: _mode(model, hf, seqs, hf_in, args, name) for name in args.strategies.split(",")
    }
    out = {
        "benchmark": "generate",
        "preset": args.preset,
        "batch": args.batch,
        "input_len": args.input_len,
        "sentinels": args.sentinels,
        "max_new_tokens": args.max_new_tokens,
        "min_new_tokens": args.max_new_tokens,
        "repeats": args.repeats,
        "device": jax.devices()[0].platform,
        "dtype": str(np.dtype(model.dtype)),
        "cpu_count": os.cpu_count(),
        "results": results,
    }
    if hf is not None:
        out.update({"torch_threads": threads, "torch_threads_probe_s": probe})
    if args.peak_seconds > 0 and out["dtype"] == "float32":
        out["floor"] = _ceilings(model.config, results, args, hf_in[0].shape[1], args.peak_seconds)
    if args.profile:
        out["profile"] = {name: _profile(model, seqs, args, name) for name in results}
        if "greedy" in results:
            out["profile"]["greedy"].update(
                _step_split(model, hf, hf_in, seqs, args, results["greedy"])
            )
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(
        prog="python -m jobs.benchmark generate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--preset", default="d512x8", help=f"model preset or {', '.join(SHAPES)} (random weights)"
    )
    ap.add_argument("--batch", type=int, default=8, help="input sequences decoded together")
    ap.add_argument("--input-len", type=int, default=200, help="residues per input")
    ap.add_argument("--sentinels", type=int, default=1, help="sentinels after the residues")
    ap.add_argument(
        "--max-new-tokens",
        type=int,
        default=64,
        help="new tokens per row, exactly (min_new_tokens is set to it)",
    )
    ap.add_argument(
        "--strategies", default="greedy,sample,beam4", help="comma list of greedy, sample, beamN"
    )
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument(
        "--torch-threads",
        default="auto",
        help="HF thread counts to try, fastest counts ('auto': 1 and all cores)",
    )
    ap.add_argument(
        "--reference",
        default="hf",
        choices=["hf", "none"],
        help="none: ours only (an accelerator run; HF would run on the CPU)",
    )
    ap.add_argument(
        "--peak-seconds",
        type=float,
        default=2.0,
        help="time spent measuring the float32 matmul peak and the memory read "
        "bandwidth for the floor (0: skip)",
    )
    ap.add_argument(
        "--no-profile",
        dest="profile",
        action="store_false",
        help="skip the decode-step profile (one more compile per strategy)",
    )
    out = run(ap.parse_args(argv))
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
