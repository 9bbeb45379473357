"""``jobs.finetune`` end to end on the tiny model and real proteins from the shared data."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow.parquet as pq
import pytest
from flax import nnx
from safetensors.numpy import load_file

import ankh
from ankh import lora
from ankh_platform.core.samples import real_sequences
from ankh_platform.evaluate.heads import loss_fn
from ankh_platform.evaluate.metrics import score
from ankh_platform.evaluate.task_specs import load_task
from ankh_platform.evaluate.tasks import TaskData, TaskLimits
from ankh_platform.finetune.config import FinetuneJobConfig
from ankh_platform.finetune.model import build, make_batch, trainable
from jobs import finetune as job
from jobs import predict

SMALL = [
    "limits.train=24",
    "limits.valid=8",
    "limits.test=8",
    "limits.max_length=120",
    "batch_size=4",
]


def _run(out: Path, *extra: str) -> dict:
    return job.main(["--model", "tiny", "--output", str(out), *SMALL, *extra])


def _losses(out: Path) -> dict[int, float]:
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs if "loss" in r}


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ss3")
    return out, _run(out, "--task", "ss3", "steps=4", "eval_every=2")


@pytest.mark.slow
def test_lora_run_writes_adapter_and_merged_model(lora_run):
    out, s = lora_run
    assert s["mode"] == "lora" and s["task"] == "ss3" and 0.0 <= s["test"]["q3"] <= 1.0
    cfg = ankh.get_preset("tiny")
    lora_params = cfg.num_layers * 4 * 4 * (cfg.d_model + cfg.num_heads * cfg.d_kv)
    head_params = cfg.d_model * 3 + 3
    assert s["trainable_params"] == lora_params + head_params < s["total_params"]
    conf = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert conf["r"] == 4 and conf["lora_alpha"] == 1 and conf["target_modules"] == list("qkvo")
    tensors = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert sum(t.size for t in tensors.values()) == lora_params
    # The merged model/ equals the base model with the saved adapters applied.
    base = ankh.load("tiny", dtype="float32")
    model = nnx.merge(base.graphdef, base.params)
    lora.load_peft_state(model.encoder, tensors, lora.LoraConfig())
    ids = jnp.asarray(np.stack(base.tokenize(["MKTAYIAKQRQISFVKSHFSRQ"])))
    want = model.encode(ids, jnp.ones_like(ids))
    merged = ankh.load(str(out / "model"), dtype="float32")
    got = nnx.merge(merged.graphdef, merged.params).encode(ids, jnp.ones_like(ids))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
    assert json.loads((out / "run.json").read_text())["task"]["classes"] == list("HEC")
    assert set(_losses(out)) == {1, 2, 3, 4}


@pytest.mark.slow
def test_resume_takes_the_same_steps(tmp_path):
    """With LoRA dropout on: its masks, too, are a function of (seed, step, row)."""
    a, b = tmp_path / "a", tmp_path / "b"
    args = ("--task", "ss3", "eval_every=2", "patience=0", "lora.dropout=0.1")
    _run(a, *args, "steps=4")
    _run(b, *args, "steps=2")  # stopped after 2 steps ...
    _run(b, *args, "steps=4")  # ... and the same command, further, resumes from its checkpoint
    la, lb = _losses(a), _losses(b)
    assert lb[3] == la[3] and lb[4] == la[4]
    ha, hb = load_file(str(a / "head.safetensors")), load_file(str(b / "head.safetensors"))
    for k in ha:
        np.testing.assert_array_equal(ha[k], hb[k])


@pytest.mark.slow
def test_head_and_full_modes_on_go_mf(tmp_path):
    head = _run(tmp_path / "h", "--task", "go_mf", "mode=head", "steps=2", "class_weights=balanced")
    assert head["kind"] == "multilabel" and "fmax" in head["test"]
    assert head["trainable_params"] == ankh.get_preset("tiny").d_model * 20 + 20
    assert not (tmp_path / "h" / "model").exists()  # the encoder did not change
    full = _run(tmp_path / "f", "--task", "go_mf", "mode=full", "steps=2")
    assert full["trainable_params"] == full["total_params"]
    assert (tmp_path / "f" / "model" / "model.safetensors").exists()


@pytest.mark.slow
def test_predict_job_rows_rejections_and_resume(lora_run, tmp_path):
    run, s = lora_run
    task = load_task("ss3", TaskLimits(train=24, valid=8, test=8, max_length=120))
    test = task.splits["test"]
    fasta = tmp_path / "in.fasta"
    bad = {"bad_letter": "MKT1AY", "empty": ""}
    recs = [*zip(test.ids, test.seqs), *bad.items()]
    fasta.write_text("".join(f">{i}\n{q}\n" for i, q in recs))
    out = tmp_path / "pred"
    summary = predict.main(["--run", str(run), "--input", str(fasta), "--output", str(out)])
    rows = pq.read_table(out / "in.parquet").to_pylist()
    assert [r["id"] for r in rows] == test.ids  # every good record one row, in input order
    assert {r["id"] for r in summary["rejected"]} == set(bad)
    assert all(len(r["prediction"]) == len(r["sequence"]) for r in rows)
    probs = [np.asarray(r["probabilities"]) for r in rows]
    assert score(task, probs, test.labels, [])["q3"] == pytest.approx(s["test"]["q3"], abs=1e-6)
    (out / "in.parquet").touch()  # a rerun keeps what is there
    before = (out / "in.parquet").stat().st_mtime_ns
    again = predict.main(["--run", str(run), "--input", str(fasta), "--output", str(out)])
    assert (out / "in.parquet").stat().st_mtime_ns == before
    assert again["shards"]["in"]["rows"] == len(rows) and len(again["rejected"]) == 2


def test_remat_takes_the_plain_step_with_recomputed_activations():
    """``remat=true``: the traced step rematerialises the encoder's blocks (pretraining's
    mechanism) and its loss and gradients are the plain step's."""
    base = ankh.load("tiny", dtype="float32")
    task = TaskData("t", "residue_class", list("HEC"), {})
    seqs = [s[:40] for s in real_sequences(4, min_len=20)]
    labels = [np.random.default_rng(i).integers(0, 3, len(s)) for i, s in enumerate(seqs)]
    b = make_batch(task, base.tokenize(seqs), labels, 4, base.num_prefix, (0.0, 1.0))
    wrt, got = trainable("lora"), {}
    for remat in (False, True):
        model = build(base, task, "lora", "linear", lora.LoraConfig(), 0, remat)
        grad = nnx.value_and_grad(
            lambda m: loss_fn(task.kind, m(b["ids"], b["mask"], b["res_mask"]), b),
            argnums=nnx.DiffState(0, wrt),
        )
        graph, state = nnx.split(model)
        traced = str(jax.make_jaxpr(lambda st, g=graph, f=grad: f(nnx.merge(g, st))[0])(state))
        assert ("remat" in traced) == remat
        loss, grads = grad(model)
        got[remat] = (float(loss), jax.tree.leaves(grads))
    assert got[True][0] == pytest.approx(got[False][0], abs=1e-6)
    for x, y in zip(got[True][1], got[False][1], strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-6)


def test_bad_settings_are_errors(tmp_path):
    with pytest.raises(SystemExit):
        job.main(["--output", str(tmp_path), "mode=everything"])
    with pytest.raises(ValueError, match="patience"):
        FinetuneJobConfig(patience=-1)
    with pytest.raises(ValueError, match="compute_dtype"):
        FinetuneJobConfig(compute_dtype="float16")
