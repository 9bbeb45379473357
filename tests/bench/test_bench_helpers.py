"""Arithmetic of the benchmark helpers (the figures in the README are computed by these)."""

import pytest

from ankh.config import get_preset
from ankh_platform.bench.embed import encoder_flops
from ankh_platform.bench.serve import steady_tokens_per_s


def test_steady_rate_excludes_first_wait_and_counts_rounds():
    # Two rounds of 4 requests (100 tokens each) completing at t=10 and t=15: the sustained
    # rate is the second round's 400 tokens over the 5 s between rounds, not 800 / 15 s.
    ok = [(200, 10.0, 100, 10.0 + c * 1e-3, c) for c in range(4)]
    ok += [(200, 5.0, 100, 15.0 + c * 1e-3, c) for c in range(4)]
    assert steady_tokens_per_s(ok) == pytest.approx(400 / 5)
    assert steady_tokens_per_s(ok[:4]) is None  # one reply per client: no sustained rate


def test_encoder_flops_base_per_token():
    # base: 48 layers x (4 e*hd + 3 e*f) MACs per token, x2 FLOPs, plus attention at length 256.
    cfg = get_preset("base")
    per_token = encoder_flops(cfg, 1, 256) / 256
    dense = 2 * 48 * (4 * 768 * 768 + 3 * 768 * 3072)
    assert per_token == pytest.approx(dense + 48 * 4 * 768 * 256)
    assert 0.9e9 < per_token < 1.0e9
