"""Probe heads and the training loop: learnable synthetic tasks, padding invariance, determinism."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ankh.probes import ContactHead, ConvBertHead, make_head
from ankh_platform.evaluate.heads import HeadTrainConfig, train_head
from ankh_platform.evaluate.tasks import Split, TaskData

TC = HeadTrainConfig(batch_size=4, learning_rate=1e-2, max_epochs=15, patience=5)


def synthetic(kind: str, seed: int = 0, dim: int = 16):
    """Random 'embeddings' whose labels are a simple function of them (so a probe must learn it)."""
    rng = np.random.default_rng(seed)
    data, splits = {}, {}
    for s, n in (("train", 60), ("valid", 12), ("test", 16)):
        xs = [
            rng.normal(size=(int(rng.integers(10, 50)), dim)).astype(np.float32) for _ in range(n)
        ]
        if kind == "residue_class":  # the label's feature is shifted up by 4 (clearly separable)
            ys = [rng.integers(0, 3, len(x)).astype(np.int8) for x in xs]
            for x, y in zip(xs, ys):
                x[np.arange(len(x)), y] += 4.0
        elif kind == "protein_class":
            ys = [int(rng.integers(0, 2)) for _ in xs]
            for x, y in zip(xs, ys):
                x[:, 0] += 2.0 if y else -2.0
        elif kind == "multilabel":  # term j present <=> feature j shifted up
            ys = [rng.random(4) < 0.4 for _ in xs]
            for x, y in zip(xs, ys):
                x[:, :4] += 2.0 * y
        else:  # the target is added to feature 0 of every residue
            ys = [float(rng.normal()) for _ in xs]
            for x, y in zip(xs, ys):
                x[:, 0] += 2.0 * y
        ids = [f"{s}{i}" for i in range(n)]
        data[s] = (xs, ys, ids)
        splits[s] = Split(ids, ["A" * len(x) for x in xs], ys)
    classes = {
        "residue_class": ["a", "b", "c"],
        "protein_class": ["neg", "pos"],
        "multilabel": ["t0", "t1", "t2", "t3"],
    }.get(kind, [])
    return TaskData("toy", kind, classes, splits), data


@pytest.mark.timeout(300)
def test_linear_probe_learns_per_residue_task_near_perfectly():
    task, data = synthetic("residue_class")
    res, _, _ = train_head(task, "linear", data, TC, seed=0)
    assert res["test"]["accuracy"] >= 0.97, res["history"]
    assert res["test"]["residues"] == sum(len(x) for x in data["test"][0])


def test_linear_head_is_the_in_training_probe():
    """``--head linear`` of jobs.evaluate and the in-training probe are one fit: on the same
    chains and features they give the same Q3, whatever the seed (no seeded state in it)."""
    from ankh_platform.core import samples
    from ankh_platform.evaluate.embedders import OneHotFeatures
    from ankh_platform.train.probe import SS3Probe

    probe = SS3Probe.load(40, 20, root=samples.bundled_dir() / "pdb_sample")
    c, embed = probe.chains, OneHotFeatures().embed
    splits = {
        "train": Split([f"tr{i}" for i in range(len(c.train_seqs))], c.train_seqs, c.train_labels),
        "valid": Split([], [], []),
        "test": Split([f"te{i}" for i in range(len(c.test_seqs))], c.test_seqs, c.test_labels),
    }
    task = TaskData("ss3", "residue_class", ["H", "E", "C"], splits)
    data = {s: (embed(sp.seqs), sp.labels, sp.ids) for s, sp in splits.items()}
    a, model, _ = train_head(task, "linear", data, TC, seed=0)
    b, _, _ = train_head(task, "linear", data, TC, seed=7)
    assert model is None and a["fit"] == "lbfgs" and a["test"] == b["test"]
    assert a["test"]["q3"] == probe.q3(embed)
    assert a["head_params"] == 3 * data["train"][0][0].shape[1] + 3


@pytest.mark.timeout(300)
def test_mlp_learns_per_protein_class_and_linear_regression():
    task, data = synthetic("protein_class", seed=1)
    res, _, _ = train_head(task, "mlp", data, TC, seed=0)
    assert res["test"]["accuracy"] >= 0.9, res["history"]
    task, data = synthetic("protein_reg", seed=2)
    res, _, _ = train_head(task, "linear", data, TC, seed=0)
    assert res["test"]["spearman"] >= 0.9, res["history"]
    task, data = synthetic("multilabel", seed=4)
    tc = HeadTrainConfig(batch_size=2, learning_rate=2e-2, max_epochs=20, patience=20)
    res, _, _ = train_head(task, "linear", data, tc, seed=0)
    assert res["test"]["micro_auprc"] >= 0.95 and res["test"]["fmax"] >= 0.9, res["history"]


@pytest.mark.timeout(300)
def test_training_is_deterministic_under_a_seed():
    task, data = synthetic("residue_class", seed=3)
    tc = HeadTrainConfig(batch_size=8, learning_rate=1e-3, max_epochs=2, patience=5)
    a, model_a, _ = train_head(task, "mlp", data, tc, seed=5)
    b, model_b, _ = train_head(task, "mlp", data, tc, seed=5)
    c, _, _ = train_head(task, "mlp", data, tc, seed=6)
    assert a["history"] == b["history"] and a["test"] == b["test"]
    same = jax.tree.map(
        lambda x, y: bool(jnp.array_equal(x, y)),
        nnx.state(model_a, nnx.Param),
        nnx.state(model_b, nnx.Param),
    )
    assert all(jax.tree.leaves(same))
    assert a["history"] != c["history"]


def test_convbert_head_shapes_and_padding_invariance():
    rngs = nnx.Rngs(0)
    head = ConvBertHead(32, 3, per_protein=False, rngs=rngs)
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(head, nnx.Param)))
    assert 0 < n_params < 20_000  # one small layer: hidden 32, ffn 16
    head.eval()
    x = jax.random.normal(jax.random.key(1), (1, 20, 32))
    short = head(x, jnp.ones((1, 20)))
    padded_x = jnp.concatenate([x, 5.0 * jnp.ones((1, 12, 32))], axis=1)  # garbage in the padding
    padded = head(padded_x, jnp.concatenate([jnp.ones((1, 20)), jnp.zeros((1, 12))], axis=1))
    assert short.shape == (1, 20, 3)
    np.testing.assert_allclose(np.asarray(padded[:, :20]), np.asarray(short), atol=1e-5)
    pooled = ConvBertHead(32, 2, per_protein=True, rngs=rngs)
    assert pooled(padded_x, jnp.ones((1, 32))).shape == (1, 2)
    with pytest.raises(ValueError, match="not divisible"):
        ConvBertHead(30, 2, per_protein=True, rngs=rngs)


def test_contact_head_is_symmetric():
    head = make_head("linear", 16, 1, per_protein=False, rngs=nnx.Rngs(0), contacts=True)
    assert isinstance(head, ContactHead)
    out = head(jax.random.normal(jax.random.key(0), (2, 24, 16)), jnp.ones((2, 24)))
    assert out.shape == (2, 24, 24)
    np.testing.assert_allclose(np.asarray(out), np.asarray(jnp.swapaxes(out, 1, 2)), atol=1e-5)
