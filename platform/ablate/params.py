"""Parameter counts of an Ankh shape, and the free-dimension solver that keeps every ablation
trial at the base's count.

The count is analytic (microseconds, so a spec's every trial under every possible earlier
winner can be solved before anything trains); ``tests/ablate/test_params.py`` pins it to the
real model's parameters (``jax.eval_shape``) and to the published base count.
"""

from __future__ import annotations

import dataclasses

from ankh.config import AnkhConfig

# The integer dimensions a group may solve for (the rest of the shape stays as configured).
SOLVABLE = ("d_ff", "d_model", "d_kv", "num_heads", "num_layers", "num_decoder_layers")


class SolveError(ValueError):
    """No value of the free dimension brings a trial within tolerance of the target count."""


def param_count(cfg: AnkhConfig) -> int:
    """Trainable parameters of ``AnkhModel(cfg)`` (``ankh/model.py``, ``ankh/layers.py``):
    shared embedding (+ untied head), per encoder block self-attention, gated (or plain) FFN and
    two RMSNorm scales, per decoder block self- and cross-attention, FFN and three norms, one
    relative-position bias table per stack and one final norm per stack."""
    e, inner = cfg.d_model, cfg.num_heads * cfg.d_kv
    attn = 4 * e * inner  # q, k, v [e, h, d] and o [h, d, e]
    ffn = (3 if cfg.is_gated_act else 2) * e * cfg.d_ff  # wi_0 (+ wi_1), wo
    embed = cfg.vocab_size * e * (1 if cfg.tie_word_embeddings else 2)
    encoder = cfg.num_layers * (attn + ffn + 2 * e)
    decoder = cfg.num_decoder_layers * (2 * attn + ffn + 3 * e)
    relpos = 2 * cfg.relative_attention_num_buckets * cfg.num_heads
    return embed + encoder + decoder + relpos + 2 * e


def within(count: int, target: int, tolerance: float) -> bool:
    return abs(count - target) <= tolerance * target


def solve(
    cfg: AnkhConfig, free: str, target: int, tolerance: float = 0.02, multiple_of: int = 8
) -> tuple[AnkhConfig, int]:
    """``cfg`` with ``free`` set to the multiple of ``multiple_of`` (layer counts: any integer)
    whose parameter count is nearest ``target``; raises SolveError when even that one is off by
    more than ``tolerance`` (a fraction of ``target``). Returns (config, its count).

    The count grows monotonically with every solvable dimension, so a bisection over the
    multiples finds the crossing and the nearer neighbour of it wins.
    """
    if free not in SOLVABLE:
        raise SolveError(f"cannot solve for {free!r}: one of {', '.join(SOLVABLE)}")
    step = 1 if free.startswith("num_") else max(1, multiple_of)

    def count(k: int) -> int:
        return param_count(dataclasses.replace(cfg, **{free: k * step}))

    lo, hi = 1, 2
    while count(hi) < target:  # grow the bracket: count(hi) >= target or it can never get there
        lo, hi = hi, hi * 2
        if hi * step > 10**7:
            break
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) < target else (lo, mid)
    best = min((lo, hi), key=lambda k: (abs(count(k) - target), k))
    solved = dataclasses.replace(cfg, **{free: best * step})
    n = param_count(solved)
    if not within(n, target, tolerance):
        raise SolveError(
            f"{free}={best * step} gives {n:,} parameters, the nearest to the target {target:,} "
            f"({(n - target) / target:+.1%}); the tolerance is {tolerance:.1%} -- this shape "
            f"cannot reach the base's size through {free} alone (solve another dimension, or "
            "change the values)"
        )
    return solved, n
