"""The logical-axis rule table, mesh construction, and a real fsdp x tensor sharded step."""

from __future__ import annotations

from pathlib import Path

import pytest
from jax.sharding import PartitionSpec as P

from ankh import sharding
from tests.devices import run_on_devices

TESTS = Path(__file__).resolve().parents[2]  # repo root: the script imports tests.train.helpers


def test_rule_table_maps_logical_axes_to_mesh_axes():
    assert sharding.logical_to_spec(("embed", "heads", "kv")) == P("fsdp", "tensor", None)
    assert sharding.logical_to_spec(("embed", "mlp")) == P("fsdp", "tensor")
    assert sharding.logical_to_spec(("vocab", "embed")) == P("tensor", "fsdp")
    assert sharding.logical_to_spec(("relpos_buckets", "heads")) == P(None, "tensor")
    assert sharding.logical_to_spec(("batch", "length")) == P(("data", "fsdp"), None)
    # A mesh axis is used at most once per array (mlp and vocab both want "tensor").
    assert sharding.logical_to_spec(("mlp", "vocab")) == P("tensor", None)
    with pytest.raises(ValueError, match="no sharding rule"):
        sharding.logical_to_spec(("embed", "bogus"))


def test_mesh_shape_resolves_minus_one_and_rejects_bad_sizes():
    assert sharding.mesh_shape({"data": -1}, 8) == {"data": 8, "fsdp": 1, "tensor": 1}
    assert sharding.mesh_shape({"data": 1, "fsdp": -1, "tensor": 4}, 8) == {
        "data": 1,
        "fsdp": 2,
        "tensor": 4,
    }
    with pytest.raises(ValueError, match="does not fit"):
        sharding.mesh_shape({"fsdp": 3}, 8)
    with pytest.raises(ValueError, match="only one mesh axis"):
        sharding.mesh_shape({"data": -1, "fsdp": -1}, 8)
    with pytest.raises(ValueError, match="unknown mesh axes"):
        sharding.mesh_shape({"model": 2}, 8)
    with pytest.raises(ValueError, match="uses 4 devices"):
        sharding.mesh_shape({"fsdp": 2, "tensor": 2}, 8)


def test_single_device_mesh_replicates_everything():
    import jax

    mesh = sharding.make_mesh({"data": -1}, devices=jax.devices()[:1])
    spec = sharding.logical_to_spec(("embed", "mlp"), (64, 128), mesh)
    assert spec == P(None, None)


SCRIPT = r"""
import json, sys
import jax, numpy as np
sys.path.insert(0, sys.argv[1])
from ankh import sharding
from ankh.config import PRESETS
from ankh.training import OptimConfig, Trainer
from tests.train.helpers import real_batch
assert jax.device_count() == 8, jax.devices()
cfg = PRESETS["tiny"].replace(num_layers=1, num_decoder_layers=1)
oc = OptimConfig(peak_lr=1e-2, warmup_steps=0, total_steps=10)
batch = real_batch(rows=8, max_residues=32)
out = {}
results = {}
for name, mesh in (("one", sharding.make_mesh({"data": -1}, devices=jax.devices()[:1])),
                   ("sharded", sharding.make_mesh({"data": 1, "fsdp": 2, "tensor": 4}))):
    tr = Trainer(cfg, oc, mesh)
    st = tr.init_state()
    if name == "sharded":
        specs = {}
        flat = jax.tree_util.tree_flatten_with_path(st["params"])[0]
        for path, leaf in flat:
            key = "/".join(str(getattr(k, "key", k)) for k in path)
            specs[key] = [str(leaf.sharding.spec), list(leaf.addressable_shards[0].data.shape),
                          list(leaf.shape)]
        out["specs"] = specs
    st, m = tr.step(st, sharding.global_batch(batch, mesh))
    st, m = tr.step(st, sharding.global_batch(batch, mesh))
    results[name] = (jax.tree.map(np.asarray, st["params"]), float(m["loss"]))
a, b = results["one"], results["sharded"]
out["loss"] = [a[1], b[1]]
out["max_diff"] = max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a[0]), jax.tree.leaves(b[0])))
print("RESULT " + json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_fsdp_tensor_sharded_step_equals_unsharded_on_8_devices():
    out = run_on_devices(SCRIPT, 8, str(TESTS), timeout=880)
    specs = out["specs"]
    # Shardings are the rule table's: q/k/v [embed, heads, kv] -> (fsdp, tensor, None), etc.
    q = specs["encoder/block/0/SelfAttention/q"]
    assert q[0] == str(P("fsdp", "tensor", None)) and q[1] == [32, 1, 16] and q[2] == [64, 4, 16]
    assert specs["encoder/block/0/DenseReluDense/wi_0"][0] == str(P("fsdp", "tensor"))
    assert specs["encoder/block/0/DenseReluDense/wo"][0] == str(P("tensor", "fsdp"))
    assert specs["shared"][0] == str(P("tensor", "fsdp")) and specs["shared"][1] == [36, 32]
    assert specs["encoder/relative_attention_bias/weight"][0] == str(P(None, "tensor"))
    assert specs["encoder/final_layer_norm/weight"][0] == str(P("fsdp"))
    # Two optimizer steps on the sharded mesh give the single-device result.
    assert out["loss"][0] == pytest.approx(out["loss"][1], rel=1e-5)
    assert out["max_diff"] < 1e-5, out
