"""LoRA dropout (``lora.dropout``, PEFT's ``lora_dropout`` on the adapters' input): training
steps only, masks a pure function of (seed, step, global row, layer, projection, position)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import ankh
from ankh import layers, lora
from ankh_platform.core import cli
from ankh_platform.core.samples import real_sequences
from ankh_platform.evaluate.heads import loss_fn
from ankh_platform.evaluate.tasks import TaskData
from ankh_platform.finetune import loop
from ankh_platform.finetune.config import FinetuneJobConfig
from ankh_platform.finetune.model import build, make_batch, trainable
from jobs import finetune as job

TASK = TaskData("t", "residue_class", list("HEC"), {})


@pytest.fixture(scope="module")
def setup():
    base = ankh.load("tiny", dtype="float32")
    seqs = [s[:40] for s in real_sequences(4, min_len=20)]
    labels = [np.random.default_rng(i).integers(0, 3, len(s)) for i, s in enumerate(seqs)]
    b = make_batch(TASK, base.tokenize(seqs), labels, 4, base.num_prefix, (0.0, 1.0))
    b["drop_seeds"] = lora.row_seeds(7, 3, 4)
    return base, b


def _model(base, rate: float, remat: bool = False):
    """A LoRA ``Finetuner`` with trained-looking adapters (a fresh ``lora_b`` is zero, and a
    zero adapter hides what its input's dropout does)."""
    model = build(base, TASK, "lora", "linear", lora.LoraConfig(dropout=rate), 0, remat)
    key = jax.random.key(1)
    for att in lora._attentions(model.encoder):
        for t in lora.TARGETS:
            ad = getattr(att, f"lora_{t}")
            key, sub = jax.random.split(key)
            ad.lora_b[...] = 0.3 * jax.random.normal(sub, ad.lora_b.shape)
    return model


@nnx.jit
def _loss_grads_jit(model, b, drop):
    def lf(m):
        return loss_fn(TASK.kind, m(b["ids"], b["mask"], b["res_mask"], drop), b)

    return nnx.value_and_grad(lf, argnums=nnx.DiffState(0, trainable("lora")))(model)


def _loss_grads(model, b, drop):
    loss, grads = _loss_grads_jit(model, {k: jnp.asarray(v) for k, v in b.items()}, drop)
    return float(loss), jax.tree.leaves(grads)


@nnx.jit
def _forward(model, ids, mask, res_mask, drop):
    return model(ids, mask, res_mask, drop)


def _out(model, b, drop, rows=slice(None)):
    """The model's outputs for ``rows`` of ``b``, their ``drop`` seeds given (a training
    step's forward pass)."""
    return np.asarray(
        _forward(model, b["ids"][rows], b["mask"][rows], b["res_mask"][rows], drop[rows])
    )


def test_zero_rate_is_the_plain_step_and_a_rate_only_changes_training(setup):
    base, b = setup
    plain = _loss_grads(_model(base, 0.0), b, None)  # the step before LoRA dropout existed
    zero = _loss_grads(_model(base, 0.0), b, b["drop_seeds"])
    assert zero[0] == plain[0]
    for x, y in zip(zero[1], plain[1], strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    dropped = _model(base, 0.3)
    loss, grads = _loss_grads(dropped, b, b["drop_seeds"])
    assert abs(loss - plain[0]) > 1e-4
    assert max(float(jnp.abs(x - y).max()) for x, y in zip(grads, plain[1])) > 1e-4
    # Evaluation and prediction (no seeds, loop.forward) are deterministic: dropout is off.
    want = _model(base, 0.0)
    ids = [jnp.asarray(b[k]) for k in ("ids", "mask", "res_mask")]
    got, want = loop.forward(dropped, *ids), loop.forward(want, *ids)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert not jax.tree.leaves(nnx.state(dropped, lora.DropoutKeys))  # no keys left behind


def test_masks_follow_seed_step_and_row_not_the_batch_split(setup):
    base, b = setup
    model, seeds = _model(base, 0.3), b["drop_seeds"]
    whole = _out(model, b, seeds)
    np.testing.assert_array_equal(_out(model, b, seeds), whole)  # the same (seed, step, row)
    # Two workers' halves of the global batch (distributed.shard): each row as in one process.
    halves = np.concatenate(
        [_out(model, b, seeds, slice(0, 2)), _out(model, b, seeds, slice(2, 4))]
    )
    np.testing.assert_allclose(halves, whole, atol=1e-6)
    for other in (lora.row_seeds(7, 4, 4), lora.row_seeds(8, 3, 4)):  # another step, seed
        assert np.abs(_out(model, b, other) - whole).max() > 1e-4
    swapped = seeds[[1, 0, 2, 3]]  # row 0 with row 1's seeds: another mask
    assert np.abs(_out(model, b, swapped)[0] - whole[0]).max() > 1e-4


def test_drop_input_is_inverted_dropout_independent_of_padded_length():
    rate, e = 0.25, 512
    keys = jax.random.key_data(jax.random.split(jax.random.key(0), 2))  # 2 rows
    short = np.asarray(layers.drop_input(jnp.ones((2 * 8, e)), keys, 1, rate)).reshape(2, 8, e)
    long = np.asarray(layers.drop_input(jnp.ones((2 * 16, e)), keys, 1, rate)).reshape(2, 16, e)
    assert set(np.unique(long)) == {0.0, np.float32(1 / (1 - rate))}
    assert abs((long > 0).mean() - (1 - rate)) < 0.01
    np.testing.assert_array_equal(long[:, :8], short)  # position p's mask: the same
    other = np.asarray(layers.drop_input(jnp.ones((2 * 8, e)), keys, 2, rate)).reshape(2, 8, e)
    assert (other != short).mean() > 0.2  # another projection: another mask


def test_jitted_step_and_remat_with_dropout(setup):
    """``loop.step_fn`` reads the batch's ``drop_seeds``; remat recomputes the same masks."""
    base, b = setup
    want = _loss_grads(_model(base, 0.3), b, b["drop_seeds"])[0]
    assert _loss_grads(_model(base, 0.3, remat=True), b, b["drop_seeds"])[0] == pytest.approx(
        want, abs=1e-6
    )
    model = _model(base, 0.3)
    opt = nnx.Optimizer(model, loop.optimizer(FinetuneJobConfig()), wrt=trainable("lora"))
    step = loop.step_fn(TASK.kind, trainable("lora"))
    assert float(step(model, opt, {k: jnp.asarray(v) for k, v in b.items()})) == pytest.approx(
        want, abs=1e-6
    )


def test_config_cli_and_peft_export(tmp_path):
    cfg, _ = cli.parse(FinetuneJobConfig, ["lora.dropout=0.1"], None, "jobs.finetune", job.FLAGS)
    assert cfg.lora.dropout == 0.1 and cfg.lora.rank == 4
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match=r"lora.dropout must be in \[0, 1\)"):
            lora.LoraConfig(dropout=bad)
    base = ankh.load("tiny", dtype="float32")
    module = nnx.merge(base.graphdef, nnx.clone(base.params))
    lcfg = lora.LoraConfig(rank=2, dropout=0.1)
    lora.attach(module.encoder, lcfg, nnx.Rngs(0))
    lora.save_peft_dir(str(tmp_path), module.encoder, lcfg, "tiny")
    assert json.loads((tmp_path / "adapter_config.json").read_text())["lora_dropout"] == 0.1
    read, tensors = lora.read_peft_dir(str(tmp_path))
    assert read == lcfg and len(tensors) == 2 * 4 * base.config.num_layers
