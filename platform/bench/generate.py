"""Decoded tokens/s: our jitted KV-cache decoding vs HF ``generate`` on the same weights.

    python -m jobs.benchmark generate [--preset small] [--batch 8] [--input-len 128]
        [--max-new-tokens 64] [--strategies greedy,sample,beam4] [--repeats 3]

Both sides get the same real proteins (cropped to ``--input-len``), the same weights (ours
exported with ``save_hf`` and loaded by ``T5ForConditionalGeneration``) and the same settings
(sampling: temperature 1, top_k 0, top_p 1). Tokens counted = returned tokens before ``</s>``
(beam: of the returned best beam). Time excludes compilation / warm-up (one untimed call each);
the median of ``--repeats`` timed calls is reported. Prints one JSON line.
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


def _strategy(name: str) -> dict[str, Any]:
    if name == "greedy":
        return {"do_sample": False, "num_beams": 1}
    if name == "sample":
        return {"do_sample": True, "num_beams": 1, "temperature": 1.0, "top_k": 0, "top_p": 1.0}
    if name.startswith("beam"):
        return {"do_sample": False, "num_beams": int(name[4:] or 4)}
    raise SystemExit(f"unknown strategy {name!r}: greedy, sample or beamN")


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


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from transformers import T5ForConditionalGeneration

    from ankh.api import Ankh
    from ankh.config import get_preset
    from ankh_platform.core.samples import long_sequences

    torch.set_num_threads(os.cpu_count() or 1)
    model = Ankh.random(get_preset(args.preset), seed=0)
    seqs = [s[: args.input_len] for s in long_sequences(args.batch, args.input_len, seed=0)]
    with tempfile.TemporaryDirectory() as tmp:
        model.save_hf(tmp)
        hf = T5ForConditionalGeneration.from_pretrained(tmp).eval()
    ids, mask = model.tokenizer.batch_encode(seqs)
    t_ids, t_mask = torch.tensor(ids).long(), torch.tensor(mask).long()
    results = {}
    for name in args.strategies.split(","):
        kw = _strategy(name)
        ours_t, ours = _timed(lambda: model.generate_ids(seqs, max_new_tokens=args.max_new_tokens,
                                                         batch_size=args.batch, **kw), args.repeats)
        ours_rows = [r[0] for r in ours]

        def hf_call():
            torch.manual_seed(0)
            with torch.no_grad():
                return hf.generate(input_ids=t_ids, attention_mask=t_mask,
                                   max_new_tokens=args.max_new_tokens, **kw).numpy()
        hf_t, hf_out = _timed(hf_call, args.repeats)
        hf_rows = []
        for r in hf_out:
            r = r[1:]
            stop = np.flatnonzero(r == 1)
            hf_rows.append(r[: stop[0] + 1] if stop.size else r[r != 0])
        n_ours, n_hf = _count(ours_rows), _count(hf_rows)
        res = {"ours_tokens_per_s": round(n_ours / ours_t, 1), "hf_tokens_per_s": round(n_hf / hf_t, 1),
               "ours_seconds": round(ours_t, 4), "hf_seconds": round(hf_t, 4),
               "tokens_ours": n_ours, "tokens_hf": n_hf}
        res["ratio"] = round(res["ours_tokens_per_s"] / max(res["hf_tokens_per_s"], 1e-9), 2)
        if name != "sample":
            res["identical_to_hf"] = all(np.array_equal(a, b) for a, b in zip(ours_rows, hf_rows))
        results[name] = res
    import jax

    return {"benchmark": "generate", "preset": args.preset, "batch": args.batch,
            "input_len": args.input_len, "max_new_tokens": args.max_new_tokens,
            "repeats": args.repeats, "device": jax.devices()[0].platform,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "results": results}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m jobs.benchmark generate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small", help="model preset (random weights)")
    ap.add_argument("--batch", type=int, default=8, help="input sequences decoded together")
    ap.add_argument("--input-len", type=int, default=128, help="residues per input")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--strategies", default="greedy,sample,beam4",
                    help="comma list of greedy, sample, beamN")
    ap.add_argument("--repeats", type=int, default=3)
    print(json.dumps(run(ap.parse_args(argv))))


if __name__ == "__main__":
    main()
