"""``jobs.finetune`` with its parameters sharded over a mesh of 4 CPU devices (one process):
the same per-step losses, validation figures and exported weights as the default (one device),
the parameters and optimizer moments really split, and a sharded run resumes exactly
(docs/finetuning.md#ray-train)."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractMesh

import ankh
from ankh import sharding
from ankh_platform.finetune import distributed
from ankh_platform.finetune.config import FinetuneJobConfig
from ankh_platform.train.config import MeshConfig
from tests.devices import run_on_devices

SLOW = [pytest.mark.slow, pytest.mark.timeout(1500)]  # the runs: ~2 min on the 2-core machine
TOL = 1e-5  # float32 sums in another order (the sharded contractions and all-reduces)

# Runs in a fresh interpreter: JAX_NUM_CPU_DEVICES is read when JAX starts. One process for all
# the runs (the imports and the tiny model's load once).
SCRIPT = r"""
import dataclasses, json, sys
import numpy as np
from pathlib import Path
from safetensors.numpy import load_file
import jax
from flax import nnx
from jobs import finetune as job
from ankh_platform.finetune import distributed, job as fjob, loop
from ankh_platform.finetune.config import FinetuneJobConfig
from ankh_platform.finetune.model import build, trainable
from ankh_platform.core.config import from_dict

out = Path(sys.argv[1])
ARGS = ["--model", "tiny", "--task", "ss3", "limits.train=12", "limits.valid=4",
        "limits.test=4", "limits.max_length=60", "batch_size=4", "patience=0"]
RUNS = {  # name: extra settings
    "full": ["mode=full", "steps=3", "eval_every=3"],
    "full_fsdp4": ["mode=full", "steps=3", "eval_every=3", "mesh.fsdp=4"],
    "full_f2t2": ["mode=full", "steps=3", "eval_every=3", "mesh.fsdp=2", "mesh.tensor=2"],
    "lora": ["mode=lora", "steps=3", "eval_every=2"],
    "lora_f2t2": ["mode=lora", "steps=3", "eval_every=2", "mesh.fsdp=2", "mesh.tensor=2"],
}  # step 1's learning rate is 0 (the warm-up): step 3's loss is the first after an update
res = {"devices": jax.device_count()}
for name, extra in RUNS.items():
    if name == "lora_f2t2":  # stopped after step 2 (saved), resumed by the same command
        job.main([*ARGS, *extra, "--output", str(out / name), "steps=2"])
    s = job.main([*ARGS, *extra, "--output", str(out / name)])
    recs = [json.loads(x) for x in (out / name / "metrics.jsonl").read_text().splitlines()]
    res[name] = {
        "loss": [r["loss"] for r in recs if "loss" in r],
        "valid": [r["valid_q3"] for r in recs if "valid_q3" in r],
        "test": s["test"]["q3"], "mesh": s["mesh"],
    }
# Where the sharded run puts the arrays: its own placement, looked at.
cfg = from_dict(FinetuneJobConfig, {"model": "tiny", "mode": "full", "mesh": {"fsdp": 4},
    "limits": {"train": 4, "valid": 4, "test": 4, "max_length": 60}, "batch_size": 4})
task, base, data = fjob.prepare(cfg)
model = build(base, task, cfg.mode, cfg.head, cfg.lora, cfg.seed)
mesh = distributed.mesh(cfg)
with jax.set_mesh(mesh):
    distributed.place(model, mesh)
    opt = nnx.Optimizer(model, loop.optimizer(cfg), wrt=trainable(cfg.mode))
    distributed.place(opt, mesh)
def shards(x):
    return [str(x.sharding.spec), list(x.addressable_shards[0].data.shape), list(x.shape)]
res["q"] = shards(model.encoder.block[0].SelfAttention.q[...])
res["q_mu"] = shards(opt.opt_state[1][0].mu["encoder"]["block"][0]["SelfAttention"]["q"][...])
try:  # a batch the mesh's data x fsdp devices do not divide
    distributed.mesh(dataclasses.replace(cfg, batch_size=2))
except ValueError as e:
    res["batch_error"] = str(e)
print("RESULT " + json.dumps(res))
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("mesh")
    return out, run_on_devices(SCRIPT, 4, str(out), timeout=1200)


def _weights(out, name: str, f: str) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(out / name / f))


@pytest.mark.parametrize(
    "ref,sharded", [("full", "full_fsdp4"), ("full", "full_f2t2"), ("lora", "lora_f2t2")]
)
@SLOW[0]
@SLOW[1]
def test_sharded_run_takes_the_default_runs_steps(runs, ref, sharded):
    out, res = runs
    assert res["devices"] == 4 and res[ref]["mesh"] is None
    assert res[sharded]["mesh"]["data"] == 1 and res[sharded]["mesh"]["fsdp"] in (2, 4)
    a, b = res[ref], res[sharded]
    assert len(a["loss"]) == len(b["loss"]) == 3  # lora_f2t2: steps 1-2, then 3 resumed
    assert res["full"]["loss"][2] != pytest.approx(res["lora"]["loss"][2], abs=1e-4)  # trained
    np.testing.assert_allclose(b["loss"], a["loss"], atol=TOL)
    np.testing.assert_allclose(b["valid"], a["valid"], atol=TOL)
    assert b["test"] == pytest.approx(a["test"], abs=TOL)
    # The exports, gathered from the mesh: the head and the merged encoder.
    for f in ("head.safetensors", "model/model.safetensors"):
        want, got = _weights(out, ref, f), _weights(out, sharded, f)
        assert sorted(got) == sorted(want)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], atol=TOL, err_msg=f"{f} {k}")


@SLOW[0]
@SLOW[1]
def test_parameters_and_moments_are_sharded(runs):
    _, res = runs
    # q [embed 64, heads 4, kv 16]: embed over fsdp=4, each device a quarter.
    for key in ("q", "q_mu"):
        spec, shard, full = res[key]
        assert "fsdp" in spec and full == [64, 4, 16] and shard == [16, 4, 16], res[key]
    assert "batch_size 2 is not divisible by mesh data x fsdp = 4" in res["batch_error"]


def test_a_mesh_the_devices_do_not_divide_is_refused():
    cfg = FinetuneJobConfig(mesh=MeshConfig(fsdp=jax.device_count() + 1))
    with pytest.raises(ValueError, match="does not divide the .* devices"):
        distributed.mesh(cfg)


def test_a_mesh_that_leaves_a_sharded_dim_whole_is_refused():
    """fsdp=3 does not divide the tiny encoder's d_model 64: refused, not quietly replicated
    (the mesh need not exist here: the check reads its axis sizes)."""
    base = ankh.load("tiny")
    model = nnx.merge(base.graphdef, base.params).encoder
    mesh = AbstractMesh((1, 3, 1), sharding.MESH_AXES)
    with pytest.raises(ValueError, match="does not divide the sharded dims") as e:
        distributed.check(model, mesh)
    assert "block.0.DenseReluDense.wi_0 (64, 128) ('embed', 'mlp')" in str(e.value)
    distributed.check(model, AbstractMesh((1, 4, 2), sharding.MESH_AXES))  # these divide
