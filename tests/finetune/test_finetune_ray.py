"""``jobs.finetune`` data parallel on Ray Train: 2 real worker processes (JAX distributed over
gloo on CPU) take the steps one process takes -- the global batch split by rows -- within float
reduction order (docs/finetuning.md#ray-train), LoRA dropout's masks included; with the
parameters sharded across the two processes too, and through a stop and resume."""

import json
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from safetensors.numpy import load_file

from jobs import finetune as job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]  # busy shared cores: minutes
ARGS = [
    "--model",
    "tiny",
    "--task",
    "ss3",
    "limits.train=16",
    "limits.valid=4",
    "limits.test=4",
    "limits.max_length=100",
    "batch_size=4",
    "steps=3",
    "eval_every=3",
    "patience=0",
    "class_weights=balanced",  # a replicated (not row-split) input too
    "lora.dropout=0.1",  # its masks follow the global row, not the worker holding it
]
TOL = 1e-5  # float32 sums in another order (the gradient all-reduce over 2 processes)


def _records(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_two_workers_take_the_steps_one_takes(tmp_path, ray_local):
    one = job.main([*ARGS, "--output", str(tmp_path / "one")])
    two = job.main([*ARGS, "--output", str(tmp_path / "two"), "scale.num_workers=2"])
    assert one["workers"] == 1 and two["workers"] == 2
    losses = [[r["loss"] for r in _records(tmp_path / d) if "loss" in r] for d in ("one", "two")]
    assert len(losses[0]) == len(losses[1]) == 3
    np.testing.assert_allclose(losses[1], losses[0], atol=TOL)
    assert two["test"]["q3"] == pytest.approx(one["test"]["q3"], abs=1e-3)
    a = load_file(str(tmp_path / "one" / "head.safetensors"))
    b = load_file(str(tmp_path / "two" / "head.safetensors"))
    for k in a:
        np.testing.assert_allclose(b[k], a[k], atol=TOL)
    # The records and pictures of a run (written by process 0 alone).
    for d in ("one", "two"):
        assert (tmp_path / d / "curves.png").stat().st_size > 0
        assert list((tmp_path / d / "tensorboard").glob("events.out.tfevents.*"))
    assert sum("valid_q3" in r for r in _records(tmp_path / "two")) == 1


def test_two_sharded_workers_resume_where_they_stopped(tmp_path, ray_local):
    """Parameters, gradients and optimizer state sharded over a 2 x 2 mesh of the two workers'
    devices (``mesh.fsdp=2`` over the processes, ``mesh.tensor=2`` within each), stopped after a saved
    step and resumed by the same command: they end where one uninterrupted process ends -- the
    same losses, validation record, head, test figures and final (gathered) state."""
    args = [*ARGS, "steps=2", "eval_every=1"]  # a checkpoint (and a validation) every step
    ref = job.main([*args, "--output", str(tmp_path / "ref")])  # one process, no stop
    two = [*args, "--output", str(tmp_path / "two"), "scale.num_workers=2", "mesh.fsdp=2"]
    two += ["scale.devices_per_worker=2", "mesh.tensor=2"]  # a 2 x 2 mesh: tensor within a worker
    first = job.main([*two, "steps=1"])  # stopped after step 1 (saved) ...
    assert first["steps"] == 1 and first["workers"] == 2
    done = job.main(two)  # ... and the same command, further, resumes from its checkpoint
    assert done["steps"] == 2 and done["best_step"] == ref["best_step"]
    got, want = _records(tmp_path / "two"), _records(tmp_path / "ref")
    assert [r["step"] for r in got if "loss" in r] == [1, 2]  # step 1 not taken again
    for key in ("loss", "valid_q3"):
        np.testing.assert_allclose(
            [r[key] for r in got if key in r], [r[key] for r in want if key in r], atol=TOL
        )
    assert done["test"]["q3"] == pytest.approx(ref["test"]["q3"], abs=TOL)
    a = load_file(str(tmp_path / "ref" / "head.safetensors"))
    b = load_file(str(tmp_path / "two" / "head.safetensors"))
    for k in a:
        np.testing.assert_allclose(b[k], a[k], atol=TOL)
    # The final state (adapters, head, optimizer moments and count), not only the best head.
    want, got = _final_state(tmp_path / "ref"), _final_state(tmp_path / "two")
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=TOL)


def _final_state(out: Path, step: int = 2) -> dict:
    """A run's Orbax checkpoint of ``step`` as host arrays (one process reads what 2 wrote)."""
    with ocp.StandardCheckpointer() as c:
        path = (out / "checkpoints" / str(step) / "state").absolute()
        tree = c.metadata(path).item_metadata.tree
        return c.restore(path, jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), tree))
