"""The pretraining math (ankh.training): loss, masking, accumulation, schedule, bf16."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ankh import sharding
from ankh.config import PRESETS
from ankh.training import (
    OptimConfig,
    Trainer,
    build_model,
    counts_entropy,
    graphdef_of,
    loss_sums,
    lr_schedule,
)
from tests.train.helpers import real_batch

CFG = PRESETS["tiny"].replace(num_layers=1, num_decoder_layers=1)  # fast to compile


@pytest.fixture(scope="module")
def batch():
    b = real_batch(rows=4, max_residues=32)
    b["loss_mask"][0, -3:] = 0.0  # some targets that must not count
    return b


@pytest.fixture(scope="module")
def params():
    return nnx.split(build_model(CFG, seed=0))[1].to_pure_dict()


def test_batch_is_the_data_contract(batch):
    assert batch["input_ids"].dtype == np.int32 and batch["loss_mask"].dtype == np.float32
    assert batch["labels"].shape == batch["decoder_input_ids"].shape == batch["loss_mask"].shape
    assert set(np.unique(batch["segment_ids"])) >= {1} and batch["example_ids"].shape[0] == 4


def test_loss_is_masked_token_cross_entropy(batch, params):
    gd = graphdef_of(CFG)
    total, sums = jax.jit(lambda p, b: loss_sums(gd, p, b))(params, batch)
    model = nnx.merge(gd, params)
    logits = np.asarray(
        model(
            batch["input_ids"],
            batch["segment_ids"],
            batch["decoder_input_ids"],
            batch["decoder_segment_ids"],
            batch["positions"],
            batch["decoder_positions"],
        ),
        np.float64,
    )
    logp = (
        logits
        - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - logits.max(-1, keepdims=True)
    )
    nll = -np.take_along_axis(logp, batch["labels"][..., None], -1)[..., 0]
    m = batch["loss_mask"]
    np.testing.assert_allclose(float(sums["ce"]), (nll * m).sum(), rtol=1e-4)
    assert float(sums["tokens"]) == m.sum()
    acc = ((logits.argmax(-1) == batch["labels"]) * m).sum()
    assert float(sums["correct"]) == acc
    # Targets outside the mask never count: scrambling them leaves the loss unchanged.
    b2 = dict(batch, labels=np.where(m > 0, batch["labels"], 7).astype(np.int32))
    _, s2 = jax.jit(lambda p, b: loss_sums(gd, p, b))(params, b2)
    assert float(s2["ce"]) == pytest.approx(float(sums["ce"]), rel=1e-6)
    # z-loss adds coef * sum(lse^2).
    tz, _ = jax.jit(lambda p, b: loss_sums(gd, p, b, 1e-3))(params, batch)
    assert float(tz) == pytest.approx(float(total) + 1e-3 * float(sums["z"]), rel=1e-5)


def test_lr_schedule_warmup_then_linear_decay():
    oc = OptimConfig(peak_lr=0.002, warmup_steps=10, total_steps=110, end_lr=0.0)
    s = lr_schedule(oc)
    assert float(s(0)) == 0.0 and float(s(5)) == pytest.approx(0.001)
    assert float(s(10)) == pytest.approx(0.002)
    assert float(s(60)) == pytest.approx(0.001)
    assert float(s(110)) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="accum_steps"):
        OptimConfig(accum_steps=0)


def test_bf16_compute_keeps_float32_params(batch, params):
    gd32, gd16 = graphdef_of(CFG, "float32"), graphdef_of(CFG, "bfloat16")
    l32 = float(jax.jit(lambda p, b: loss_sums(gd32, p, b)[0])(params, batch))
    l16 = float(jax.jit(lambda p, b: loss_sums(gd16, p, b)[0])(params, batch))
    assert l16 == pytest.approx(l32, rel=3e-2) and l16 != l32  # really computed in bf16
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))


def test_accumulation_equals_one_big_batch_and_loss_falls(batch):
    mesh = sharding.make_mesh({"data": -1})
    oc = OptimConfig(optimizer="adamw", peak_lr=3e-3, warmup_steps=0, total_steps=10)
    one = Trainer(CFG, oc, mesh)
    two = Trainer(CFG, dataclasses.replace(oc, accum_steps=2), mesh)
    b = sharding.global_batch(batch, mesh)
    s1, m1 = one.step(one.init_state(), b)
    s2, m2 = two.step(two.init_state(), b)
    assert float(m1["loss"]) == pytest.approx(float(m2["loss"]), rel=1e-5)
    for a, c in zip(jax.tree.leaves(s1["params"]), jax.tree.leaves(s2["params"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(c), atol=2e-6)
    assert int(s1["step"]) == 1 and float(m1["grad_norm"]) > 0
    losses = [float(m1["loss"])]
    for _ in range(4):  # the same batch again: the loss must fall (and stay finite)
        s1, m = one.step(s1, b)
        losses.append(float(m["loss"]))
    assert losses[-1] < losses[0] - 0.1, losses


def test_counts_entropy():
    assert counts_entropy(np.bincount([3, 3, 4, 4])) == pytest.approx(np.log(2))
    assert np.isnan(counts_entropy(np.zeros(3)))
