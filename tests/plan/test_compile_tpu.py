"""Slow: the real pretraining step of ``tiny`` compiled for a TPU v4-8 slice (v4:2x2x1: one
host, 4 chips) through ``python -m jobs.check_cluster --compile``, without a TPU, and the
Serve / batch-embedding / decode programs for one chip of that host. Needs libtpu
(the tpu-compile extra, which CI installs)."""

from __future__ import annotations

import json
import math

import jax
import pytest
from flax import nnx

from ankh.config import PRESETS
from ankh.flops import train_step_flops
from ankh.training import build_model
from ankh_platform.plan.libtpu import INSTALL_HINT, libtpu_available

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not libtpu_available(), reason=INSTALL_HINT + " (CI installs it)"),
]

PRESET = """model: tiny
steps: 10
optim: {compute_dtype: bfloat16}
mesh: {data: -1, fsdp: 1, tensor: 1}
scale: {num_workers: 1, use_tpu: true, topology: 2x2x1, accelerator_type: TPU-V4}
"""
CLUSTER = """cluster_name: tiny-plan
metadata: {{ankh_pretrain_preset: {preset}}}
available_node_types:
  tpu:
    node_config:
      acceleratorConfig: {{type: V4, topology: 2x2x1}}
"""


def test_tiny_compiles_for_a_v4_8_and_its_figures_match_the_formula(tmp_path, capsys):
    from jobs.check_cluster import main

    (tmp_path / "pretrain-tiny-tpu.yaml").write_text(PRESET)
    cluster = tmp_path / "tiny-v4-8.yaml"
    cluster.write_text(CLUSTER.format(preset=tmp_path / "pretrain-tiny-tpu.yaml"))
    # the inference programs on one v4 host only (each generation is 4 more compiles)
    assert main(["--compile", str(cluster), "--inference-generations", "v4"]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    row = json.loads(line)
    assert row["ok"] and row["fits"] and row["problems"] == []
    assert (row["topology"], row["chips"], row["hosts"]) == ("v4:2x2x1", 4, 1)
    assert row["mesh"] == {"data": 4, "fsdp": 1, "tensor": 1}

    cfg = PRESETS["tiny"]
    params = nnx.split(nnx.eval_shape(lambda: build_model(cfg)))[1].to_pure_dict()
    n = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    assert row["params"] == n
    mem = row["hbm_bytes_per_chip"]
    # data parallel: every chip holds all float32 params, and the step's output state aliases
    # the donated input state
    assert mem["arguments"] >= 4 * n and mem["aliased"] >= 4 * n
    assert mem["total"] >= mem["arguments"] and mem["total"] <= row["hbm_capacity_bytes"]
    assert row["hbm_capacity_bytes"] == 32 << 30

    formula = train_step_flops(cfg, row["global_batch_rows"], row["enc_len"], row["dec_len"])
    assert row["flops_per_step_formula"] == formula
    # XLA counts every op (norms, softmax, the optimizer); the formula only the matmuls
    assert 1.0 <= row["flops_per_step"] / formula < 1.5

    kinds = {c["kind"]: c for c in row["collectives"]}
    assert "all-reduce" in kinds  # the gradients summed over the data axis
    assert row["estimate"] is True and row["est_step_s"] > 0
    assert row["ray"]["ok"] and row["ray"]["resources_per_worker"]["TPU"] == 4

    # Serve's and the batch job's programs on one chip of a v4 host, at their configs' shapes
    (host,) = row["inference"]["hosts"]
    assert host["topology"] == "v4:2x2x1" and host["fits"] and row["inference"]["params"] == n
    progs = host["programs"]
    assert set(progs) == {"serve_embed", "embed_job", "decode_step"}
    for p in progs.values():  # every program holds the float32 params on its one chip
        assert 4 * n <= p["hbm_bytes_per_chip"]["arguments"] <= p["hbm_bytes_per_chip"]["total"]
    assert progs["serve_embed"]["shape"]["tokens"] <= 16384  # serve-cluster.yaml's batch_tokens
    assert progs["embed_job"]["shape"]["max_segments"] == 64


def _step_temporaries(layers: int, remat: bool) -> int:
    """XLA's per-chip temporaries of the shipped ``base`` preset's train step (its batch,
    mesh, optimizer and dtype) cut to ``layers`` encoder layers and one decoder layer,
    compiled for a v4-8 by the plan's own ``compile_step``."""
    from ankh_platform.cluster_check import load_preset
    from ankh_platform.plan.train import compile_step

    cfg = load_preset(
        "base",
        (
            f"optim.remat={str(remat).lower()}",
            f"model_overrides.num_layers={layers}",
            "model_overrides.num_decoder_layers=1",
            "scale.topology=2x2x1",
            "scale.num_workers=1",
        ),
    )
    return compile_step(cfg, "v4", "2x2x1").memory["temporaries"]


def test_remat_keeps_one_block_of_activations_on_tpu():
    """Per encoder layer, the step's temporaries grow by the block's activations without
    remat and by far less with it -- on the TPU compiler, which is where remat matters (XLA's
    CPU backend schedules the recomputation away). A regression this catches: dividing the
    gradients by the token count after differentiating let the TPU scheduler keep every
    block's recomputed activations, the same HBM with and without remat."""
    per_layer = {
        remat: _step_temporaries(2, remat) - _step_temporaries(1, remat) for remat in (False, True)
    }
    assert per_layer[False] > 0
    assert per_layer[True] < 0.3 * per_layer[False], per_layer
