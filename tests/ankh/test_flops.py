"""The FLOP counts (ankh.flops) checked against counts derived independently of the formula.

The reference counts every matrix multiply XLA is actually given: the ``dot_general`` equations
of the traced program (forward, and forward + backward for the train step) -- so a term missing
from, or added to, the formula fails here whatever the arithmetic in ``ankh/flops.py``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from ankh.config import PRESETS, get_preset
from ankh.flops import (
    cross_kv_flops,
    decode_step_bytes,
    decode_step_flops,
    decoder_flops,
    encoder_flops,
    measure_matmul_peak,
    measure_read_bandwidth,
    train_step_flops,
)
from ankh.model import AnkhModel

TINY = PRESETS["tiny"].replace(num_layers=2, num_decoder_layers=1)  # fast to trace


def _dot_flops(jaxpr) -> int:
    """2 x multiply-adds of every dot_general in ``jaxpr``, nested jaxprs included."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            lhs, rhs = (v.aval.shape for v in eqn.invars)
            (_, rhs_contract), (_, rhs_batch) = eqn.params["dimension_numbers"]
            rhs_free = [d for i, d in enumerate(rhs) if i not in (*rhs_contract, *rhs_batch)]
            total += 2 * math.prod(lhs) * math.prod(rhs_free)
        times = eqn.params.get("length", 1)  # scan bodies run `length` times
        for p in eqn.params.values():
            for sub in p if isinstance(p, (tuple, list)) else (p,):
                inner = getattr(sub, "jaxpr", sub)  # ClosedJaxpr -> Jaxpr
                if hasattr(inner, "eqns"):
                    total += times * _dot_flops(inner)
    return total


def _model(cfg):
    return nnx.split(AnkhModel(cfg, nnx.Rngs(0)))


def _tokens(b: int, length: int):
    ids = jnp.asarray(np.random.default_rng(0).integers(3, 28, (b, length)), jnp.int32)
    return ids, jnp.ones((b, length), jnp.int32)


@pytest.mark.parametrize("gated", [True, False])
def test_encoder_flops_equal_the_traced_matmuls(gated):
    cfg = TINY.replace(is_gated_act=gated)
    graphdef, params = _model(cfg)
    b, length = 3, 24
    ids, mask = _tokens(b, length)
    jaxpr = jax.make_jaxpr(lambda p: nnx.merge(graphdef, p).encode(ids, mask))(params)
    assert encoder_flops(cfg, b, length) == _dot_flops(jaxpr.jaxpr)


def test_train_step_flops_equal_the_traced_forward_and_backward():
    graphdef, params = _model(TINY)
    b, le, ld = 2, 20, 12
    enc, enc_mask = _tokens(b, le)
    dec, dec_mask = _tokens(b, ld)

    def loss(p):
        logits = nnx.merge(graphdef, p)(enc, enc_mask, dec, dec_mask)
        return optax.softmax_cross_entropy_with_integer_labels(logits, dec).mean()

    forward = _dot_flops(jax.make_jaxpr(loss)(params).jaxpr)
    assert encoder_flops(TINY, b, le) + decoder_flops(TINY, b, le, ld) == forward
    step = _dot_flops(jax.make_jaxpr(jax.value_and_grad(loss))(params).jaxpr)
    assert train_step_flops(TINY, b, le, ld) == step


def test_counts_from_parameter_shapes():
    # Dense part = 2 x (weights a token passes through); attention = 4 x q_len x kv_len x inner.
    cfg = PRESETS["tiny"].replace(num_layers=1, num_decoder_layers=1)
    b, le, ld = 2, 10, 6
    e, hd, f, v = cfg.d_model, cfg.inner_dim, cfg.d_ff, cfg.vocab_size
    enc_w = 4 * e * hd + 3 * e * f
    dec_w = 8 * e * hd + 3 * e * f
    fwd = 2 * b * (le * enc_w + ld * dec_w + ld * e * v - ld * 2 * e * hd + le * 2 * e * hd)
    fwd += 2 * b * 2 * hd * (le * le + ld * ld + ld * le)
    assert train_step_flops(cfg, b, le, ld) == pytest.approx(3 * fwd)


def test_base_encoder_per_token_from_its_weights():
    # The base encoder's useful FLOPs per token at length 256 (what its fraction of peak in
    # docs/benchmarks.md counts): every encoder weight matrix (shapes of the real preset, not
    # allocated) once per token, plus attention.
    cfg = get_preset("base")
    shapes = jax.eval_shape(lambda: nnx.state(AnkhModel(cfg, nnx.Rngs(0)), nnx.Param))
    weights = sum(
        math.prod(x.shape)
        for path, x in jax.tree_util.tree_leaves_with_path(shapes)
        if "encoder" in jax.tree_util.keystr(path)
        and len(x.shape) >= 2
        and "relative_attention_bias" not in jax.tree_util.keystr(path)
    )
    per_token = encoder_flops(cfg, 1, 256) / 256
    assert per_token == 2 * weights + cfg.num_layers * 4 * 256 * cfg.inner_dim
    assert 0.9e9 < per_token < 1.0e9


def test_matmul_peak_is_a_rate():
    peak = measure_matmul_peak("float32", n=64, seconds=0.0)
    assert np.isfinite(peak) and peak > 0


@pytest.mark.parametrize("group", [1, 2])
def test_decode_step_flops_equal_the_traced_matmuls(group):
    # The cached step attends every slot of its buffer: dec_len = the buffer's length.
    from ankh.kv_cache import decode_step, init_cache

    graphdef, params = _model(TINY)
    g, le, t_len = 2, 12, 9
    ids, mask = _tokens(g, le)

    def step(p):
        model = nnx.merge(graphdef, p)
        cache = init_cache(model, model.encode(ids, mask), mask, t_len, group=group)
        return decode_step(model, jnp.zeros((g * group,), jnp.int32), jnp.int32(3), cache)

    full = _dot_flops(jax.make_jaxpr(step)(params).jaxpr)
    setup = encoder_flops(TINY, g, le) + cross_kv_flops(TINY, g, le)
    assert full - setup == decode_step_flops(TINY, g * group, le, t_len)


def test_decode_step_bytes_from_parameter_shapes():
    # Every decoder matrix but the cross keys/values (projected once per call), and the LM head.
    cfg = get_preset("base")
    shapes = jax.eval_shape(lambda: nnx.state(AnkhModel(cfg, nnx.Rngs(0)), nnx.Param))
    read = 0
    for path, x in jax.tree_util.tree_leaves_with_path(shapes):
        key = jax.tree_util.keystr(path)
        if len(x.shape) < 2 or "relative_attention_bias" in key:
            continue
        if (
            (
                "decoder" in key
                and not ("EncDecAttention" in key and key.split("'")[-2] in ("k", "v"))
            )
            or "lm_head" in key
            or (cfg.tie_word_embeddings and "shared" in key)
        ):
            read += math.prod(x.shape)
    rows, inputs, le, t = 8, 4, 100, 30
    caches = cfg.num_decoder_layers * 2 * cfg.inner_dim * (inputs * le + rows * t)
    assert decode_step_bytes(cfg, rows, inputs, le, t) == 4 * (read + caches)
    assert decode_step_bytes(cfg, rows, inputs, le, t, itemsize=2) == 2 * (read + caches)


def test_read_bandwidth_is_a_rate():
    bw = measure_read_bandwidth(nbytes=1 << 20, seconds=0.0)
    assert np.isfinite(bw) and bw > 0
