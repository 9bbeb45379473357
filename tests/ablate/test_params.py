"""The parameter count (vs the real model's parameters) and the equal-size solver."""

from __future__ import annotations

import dataclasses

import jax
import pytest
from flax import nnx

from ankh.config import PRESETS
from ankh.model import AnkhModel
from ankh_platform.ablate.params import SolveError, param_count, solve, within

TINY = PRESETS["tiny"]


def real_count(cfg) -> int:
    model = nnx.eval_shape(lambda: AnkhModel(cfg, nnx.Rngs(0)))
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize(
    "cfg",
    [
        TINY,
        PRESETS["small"],
        TINY.replace(num_layers=3, num_decoder_layers=1, d_ff=152),
        TINY.replace(dense_act_fn="relu", is_gated_act=False, relative_attention_num_buckets=16),
        TINY.replace(tie_word_embeddings=True, num_heads=2, d_kv=24, d_model=72),
    ],
    ids=["tiny", "small", "split", "relu", "tied"],
)
def test_count_equals_the_models_parameters(cfg):
    assert param_count(cfg) == real_count(cfg)


def test_count_of_the_published_shapes():
    assert param_count(PRESETS["base"]) == 736_453_632  # pinned in ankh/config.py
    assert param_count(PRESETS["large"]) == 1_878_705_152


# At the tiny shape one d_model unit is ~1.5 % of the parameters: only multiples of 1 can land
# within 2 % (at base scale multiples of 8 do: tests/ablate/test_spec.py, the paper config).
@pytest.mark.parametrize(
    "free,change,multiple",
    [
        ("d_ff", {"num_layers": 3, "num_decoder_layers": 1}, 8),
        ("d_ff", {"dense_act_fn": "relu", "is_gated_act": False}, 8),
        ("d_model", {"num_layers": 4, "num_decoder_layers": 2}, 1),
        ("d_model", {"num_layers": 1, "num_decoder_layers": 1}, 1),
    ],
)
def test_solver_lands_within_two_percent_on_the_nearest_multiple(free, change, multiple):
    target = param_count(TINY)
    cfg, n = solve(TINY.replace(**change), free, target, 0.02, multiple_of=multiple)
    assert n == param_count(cfg) and within(n, target, 0.02), (n, target)
    v = getattr(cfg, free)
    assert v % multiple == 0 and v != getattr(TINY, free)
    for other in (v - multiple, v + multiple):  # no neighbouring multiple is nearer the target
        assert abs(param_count(dataclasses.replace(cfg, **{free: other})) - target) >= abs(
            n - target
        )
    assert real_count(cfg) == n


def test_solver_refuses_what_cannot_reach_the_target():
    target = param_count(TINY)
    with pytest.raises(SolveError, match=r"d_ff=8 gives .* the tolerance is 2\.0%"):
        solve(TINY.replace(num_layers=12, num_decoder_layers=12), "d_ff", target)
    with pytest.raises(SolveError, match="cannot solve for 'vocab_size'"):
        solve(TINY, "vocab_size", target)
