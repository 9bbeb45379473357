"""``python -m jobs.benchmark packed``: how attention runs for the batch-embedding job's rows,
model time only (one JSON line).

The same real proteins (the length-mix flags of ``jobs.benchmark fasta``) are packed as
``jobs.embed`` packs them and run through the same compiled encoder program
(``ankh.embedding.encode_pool``), in three ways:

- ``skip``: several proteins per row; attention computes only the key tiles each query tile's
  proteins span (the default);
- ``mask``: the same rows; attention over the whole row, other proteins masked away (before);
- ``unpacked``: one protein per row on the 1.5x/2x ladder (``max_segments=1
  row_steps_per_octave=2``): attention never meets another protein, for more padding;
- ``noattn`` (only when named in ``--variants``): the ``skip`` rows with attention's scores not
  computed at all (each query's context is its own value vector). Not a model: its time is what
  everything but attention costs -- projections, feed-forward, norms -- so ``useful FLOPs /
  noattn_model_s`` bounds the fraction of peak any attention could reach on this machine
  (``noattn_fraction_of_peak``, against all useful FLOPs; ``attention_share_of_time`` = 1 -
  noattn / skip, beside ``attention_flop_share``). Its vectors are not compared.

Rounds are interleaved (skip, mask, unpacked, skip, ...) so a shared machine's load falls on
every variant alike; each variant's ``*_model_s`` is its fastest round, ``*_rounds_s`` all of
them (their spread is the noise). Compilation is not timed. ``*_score_elements``: attention
scores each variant computes per head and layer (whole rows, or the visited tiles), the
noise-free part of the comparison. ``max_abs_diff``: the largest
difference of a pooled vector between variants.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import time

import numpy as np

from ankh_platform.bench.fasta import add_mix_flags, pick_proteins
from ankh_platform.core import cli as _cli  # the --model flag every job shares

log = logging.getLogger("bench_packed")

VARIANTS = {  # name: (pack overrides, skip_segments)
    "skip": ({}, True),
    "mask": ({}, False),
    "unpacked": ({"max_segments": 1, "steps_per_octave": 2}, False),
}
CEILING = {"noattn": ({}, True)}  # opt-in: not a model (see the module docstring)


@contextlib.contextmanager
def attention_removed(on: bool):
    """While tracing ``noattn``'s program: the layers' attention returns the values unchanged
    (``ankh.layers`` imports ``attend`` by name, so that name is the one swapped)."""
    import ankh.layers

    keep = ankh.layers.attend
    if on:
        ankh.layers.attend = lambda q, k, v, bias: v
    try:
        yield
    finally:
        ankh.layers.attend = keep


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m jobs.benchmark packed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _cli.add(
        ap,
        "--model",
        _cli.model_flag(
            None, "or d512x8 (random weights; the default); a preset has random weights"
        ),
        default="d512x8",
    )
    add_mix_flags(ap)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds (default 3)")
    ap.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma list of {', '.join([*VARIANTS, *CEILING])} (default: all but noattn)",
    )
    ap.add_argument("--peak-seconds", type=float, default=2.0, help="matmul-peak probe (0: skip)")
    return ap


def batches(model, proteins: dict[str, str], overrides: dict) -> tuple[list, list, int]:
    """``(model inputs per call, (call, row, segment) per protein, token slots)``."""
    from ankh_platform.embed.pack import EmbedPackSpec, layout, pack, prepare

    spec = EmbedPackSpec(max_length=model.config.max_length, **overrides)
    ids = list(proteins)
    prep = prepare(ids, [proteins[i] for i in ids], ["x"] * len(ids), model.tokenizer, spec)
    calls, where, slots = [], [None] * len(ids), 0
    lens, nwin = np.asarray(prep.seq_len), np.asarray(prep.seq_nwin)
    for c, b in enumerate(pack(prep, spec)):
        seg, pos, wt = layout(b["ids"], b["pieces"], lens, nwin, spec.max_length, 0)
        calls.append((b["ids"], seg, pos, wt))
        slots += b["ids"].size
        for row, _start, _ntok, s, _win, sid in b["pieces"].tolist():
            where[s] = (c, row, sid - 1)
    return calls, where, slots


def score_tiles(calls: list, skip: bool, tile: int) -> int:
    """Attention scores computed per head and layer: whole rows (``skip`` False: every query
    against every key of its row) or, on the ``segments`` path, each query tile against the
    key tiles from the first to the last key of its segments -- the work the timings compare,
    without their noise."""
    total = 0
    for _ids, seg, _pos, _wt in calls:
        b, n = seg.shape
        if not skip:
            total += int(b * n * n)
            continue
        nt = -(-n // tile)
        for row in seg:
            row = np.pad(row, (0, nt * tile - n))
            for i in range(nt):
                segs = set(row[i * tile : (i + 1) * tile].tolist()) - {0}
                keys = np.flatnonzero(np.isin(row, list(segs)))
                if len(keys):
                    total += tile * tile * int(keys[-1] // tile - keys[0] // tile + 1)
    return int(total)


def run_variant(model, fn, calls) -> tuple[float, list]:
    t0 = time.perf_counter()
    outs = [np.asarray(fn(model.params, *c)["pooled"]) for c in calls]
    return time.perf_counter() - t0, outs


def main(argv: list[str] | None = None) -> dict:
    import ankh
    from ankh import attention
    from ankh.api import Ankh
    from ankh.config import PRESETS
    from ankh.embedding import jit_encoder
    from ankh.flops import encoder_flops, measure_matmul_peak
    from ankh_platform.bench.generate import SHAPES, bench_config

    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    names = [v for v in args.variants.split(",") if v]
    known = VARIANTS | CEILING
    if not names or any(v not in known for v in names):
        raise SystemExit(f"--variants: a comma list of {', '.join(known)}, got {args.variants!r}")
    proteins = pick_proteins(
        args.data, args.fasta, args.sequences, args.min_residues, args.max_residues
    )
    named = args.model in SHAPES or args.model in PRESETS
    model = Ankh.random(bench_config(args.model), seed=0) if named else ankh.load(args.model)
    lengths = np.array([len(s) for s in proteins.values()])
    out: dict = {
        "benchmark": "packed",
        "model": args.model,
        "sequences": len(proteins),
        "residues": int(lengths.sum()),
        "length_mean": float(lengths.mean()),
        "length_max": int(lengths.max()),
    }
    plans, pooled = {}, {}
    for v in names:
        overrides, skip = known[v]
        calls, where, slots = batches(model, proteins, overrides)
        segs = overrides.get("max_segments", 64)  # the job's pooling one-hot
        fn = jit_encoder(model.graphdef, max_segments=segs, skip_segments=skip)
        with attention_removed(v in CEILING):  # compile each shape, untimed
            for c in {c[0].shape: c for c in calls}.values():
                fn(model.params, *c)["pooled"].block_until_ready()
        plans[v] = (fn, calls, where)
        out[f"{v}_padding"] = 1 - (lengths.sum() + len(lengths)) / slots
        out[f"{v}_shapes"] = len({c[0].shape for c in calls})
        scores = 0 if v in CEILING else score_tiles(calls, skip, attention.SEGMENT_TILE)
        out[f"{v}_score_elements"] = scores
    rounds = {v: [] for v in names}
    for r in range(args.rounds):
        for v in names:
            fn, calls, where = plans[v]
            secs, outs = run_variant(model, fn, calls)
            rounds[v].append(secs)
            pooled[v] = np.stack([outs[c][row, s] for c, row, s in where])
            log.info("round %d %s: %.2fs", r + 1, v, secs)
    useful = float(sum(encoder_flops(model.config, 1, int(n) + 1) for n in lengths))
    # the same without attention's length-squared terms (a length-1 encoder per token)
    dense = float(encoder_flops(model.config, 1, 1) * (lengths.sum() + len(lengths)))
    out["attention_flop_share"] = 1 - dense / useful
    peak = measure_matmul_peak("float32", seconds=args.peak_seconds) if args.peak_seconds else 0
    for v in names:
        best = min(rounds[v])
        out[f"{v}_model_s"] = best
        out[f"{v}_rounds_s"] = [round(x, 3) for x in rounds[v]]
        out[f"{v}_tokens_per_s"] = (lengths.sum() + len(lengths)) / best
        if peak:
            out[f"{v}_fraction_of_peak"] = useful / best / peak
    if peak:
        out["matmul_peak_gflops"] = peak / 1e9
    if "noattn" in names and "skip" in names:
        out["attention_share_of_time"] = 1 - out["noattn_model_s"] / out["skip_model_s"]
    models = [v for v in names if v not in CEILING]
    if models:
        first = pooled[models[0]]
        out["max_abs_diff"] = max(float(np.abs(pooled[v] - first).max()) for v in models)
    out = {
        k: float(f"{v:.4g}") if isinstance(v, float) and k != "max_abs_diff" else v
        for k, v in out.items()
    }
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
