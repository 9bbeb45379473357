"""The TPU plan's pure parts, without libtpu: collectives read from a real compiled HLO text,
the step-time estimate's arithmetic, Ray's ScalingConfig against a compiled slice's hosts, the
compile-only environment, and --compile's one-line answer where libtpu is absent."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from ankh_platform.cluster_check import CLUSTER_DIR, load_preset, load_slices
from ankh_platform.plan import hlo, libtpu
from ankh_platform.plan.chips import chip
from ankh_platform.plan.estimate import estimate_flops, step_estimate
from ankh_platform.plan.ray_side import agreement_problems

HERE = Path(__file__).parent
# tests/plan/data/fsdp_step.hlo: libtpu's compiled HLO of an SGD step of a 2-layer bf16 MLP,
# weights [256,512] and [512,256] sharded over a 4-chip v4 slice (v4:2x2x1) along one axis.
HLO = (HERE / "data" / "fsdp_step.hlo").read_text()


def test_collectives_of_a_compiled_fsdp_step():
    got = hlo.collectives(HLO)
    # forward: both weights gathered (bf16, 256*512*2 bytes each) and the activations once;
    # backward: each gradient reduce-scattered -- written by the TPU compiler as an
    # "all-reduce-scatter" fusion around an all-reduce of the whole gradient.
    assert got == {
        "all-gather": {"count": 3, "bytes": 2 * 256 * 512 * 2 + 64 * 256 * 2},
        "reduce-scatter": {"count": 2, "bytes": 2 * 256 * 512 * 2},
        "all-to-all": {"count": 1, "bytes": 4 * 16 * 128 * 2},
    }


def test_async_pairs_count_once_and_tuples_add_up():
    text = """HloModule m
ENTRY %main (p: f32[8]) -> f32[32] {
  %ags = (f32[8]{0}, f32[32]{0}) all-gather-start(f32[8]{0} %p), dimensions={0}
  %agd = f32[32]{0} all-gather-done((f32[8]{0}, f32[32]{0}) %ags)
  %ar = (f32[4]{0}, bf16[2,2]{1,0}) all-reduce(f32[4]{0} %a, bf16[2,2]{1,0} %b), to_apply=%add
  ROOT %cp = f32[32]{0} collective-permute(f32[32]{0} %agd), source_target_pairs={{0,1}}
}
"""
    assert hlo.collectives(text) == {
        "all-reduce": {"count": 1, "bytes": 4 * 4 + 4 * 2},
        "all-gather": {"count": 1, "bytes": 32 * 4},
        "collective-permute": {"count": 1, "bytes": 32 * 4},
    }
    assert hlo.shape_bytes("bf16[8,128]{1,0:T(8,128)(2,1)S(3)}") == 8 * 128 * 2


def test_step_estimate_arithmetic():
    v4 = chip("v4")
    est = step_estimate(
        v4,
        flops_per_chip=275e12 * 0.5,
        collective_bytes_per_chip=0.0,
        tokens_per_step=1000,
        mfu=0.5,
    )
    assert est["estimate"] is True
    assert est["est_step_s"] == pytest.approx(1.0)
    assert est["est_tokens_per_s"] == pytest.approx(1000.0)
    assert est["est_tokens_per_day"] == pytest.approx(86_400_000.0)
    comm = step_estimate(v4, 0.0, v4.ici_bytes_per_s * 2, 10, mfu=0.5)
    assert comm["est_collective_s"] == pytest.approx(2.0)
    assert est["assumptions"]["bf16_peak_flops_per_chip"] == 275e12
    assert est["assumptions"]["mfu"] == 0.5
    with pytest.raises(ValueError, match="mfu"):
        step_estimate(v4, 1.0, 0.0, 1, mfu=0.0)
    with pytest.raises(ValueError, match="no data sheet"):
        chip("v9")


def test_estimate_never_uses_fewer_flops_than_the_model_does():
    """XLA's count of a v4-32 base step (its sharded matmuls in loops, each counted once) came
    out at 0.59x the model's matmul FLOPs; the estimate takes the larger count and names it."""
    flops, source = estimate_flops(2.0e13, 3.4e13)
    assert flops == 3.4e13 and source.startswith("ankh.flops")
    assert estimate_flops(3.7e13, 3.4e13) == (3.7e13, "XLA cost analysis")  # remat: XLA's more
    assert estimate_flops(3.7e13, None) == (3.7e13, "XLA cost analysis")
    est = step_estimate(chip("v4"), 1.0, 0.0, 1, flops_source="x")
    assert est["assumptions"]["flops"] == "x"


def _ray_dict(preset: str, **scale) -> dict:
    import dataclasses

    from ankh_platform.train.job import scaling_config

    cfg = load_preset(preset)
    sc = scaling_config(dataclasses.replace(cfg.scale, **scale))
    return {
        "use_tpu": sc.use_tpu,
        "topology": sc.topology,
        "accelerator_type": sc.accelerator_type,
        "num_workers": sc.num_workers,
        "resources_per_worker": dict(sc.resources_per_worker or {}),
    }


def test_ray_scaling_config_of_the_shipped_files_agrees_with_their_slices():
    sl = next(s for s in load_slices(CLUSTER_DIR / "gcp-tpu-v4.yaml"))
    ray = _ray_dict(sl.preset)
    hosts = {h: 4 for h in range(4)}  # 2x2x4 = 16 chips: 4 hosts of 4, as libtpu lays it out
    assert ray["resources_per_worker"]["TPU"] == 4
    assert agreement_problems(ray, sl, hosts) == []
    # a slice with twice the hosts: one worker per host no longer holds
    wide = {h: 4 for h in range(8)}
    assert any("8 TPU hosts" in p for p in agreement_problems(ray, sl, wide))
    # a worker that would hold 2 chips of a 4-chip host
    assert any(
        "every chip of a host" in p
        for p in agreement_problems(ray | {"resources_per_worker": {"TPU": 2}}, sl, hosts)
    )
    assert any("use_tpu" in p for p in agreement_problems(ray | {"use_tpu": False}, sl, hosts))


def test_compile_only_env_only_fills_what_is_unset():
    env = {"TPU_WORKER_HOSTNAMES": "mine"}
    added = libtpu.compile_only_env(env)  # this machine has no TPU chips
    assert env["TPU_WORKER_HOSTNAMES"] == "mine" and "TPU_WORKER_HOSTNAMES" not in added
    assert env["TPU_SKIP_MDS_QUERY"] == "1" and env["ALLOW_MULTIPLE_LIBTPU_LOAD"] == "1"
    assert env["TPU_ACCELERATOR_TYPE"] == added["TPU_ACCELERATOR_TYPE"]


def test_compile_without_libtpu_says_how_to_install(monkeypatch, capsys):
    from jobs.check_cluster import main

    monkeypatch.setitem(sys.modules, "libtpu", None)  # as if the extra were not installed
    assert main(["--compile", str(CLUSTER_DIR / "gcp-tpu-v4.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'pip install -e ".[tpu-compile]"' in err[0]


def test_cpu_processes_never_load_libtpu():
    """With the tpu-compile extra installed, an ordinary CPU process of the project still runs
    on JAX's CPU backend alone: libtpu is not loaded (nor its warnings printed)."""
    code = (
        "import ankh.accelerator, jax, jax.numpy as jnp; jnp.ones(2).sum().block_until_ready(); "
        "print(jax.default_backend(), 'libtpu.so' in open('/proc/self/maps').read())"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "JAX_PLATFORMS"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.stdout.split() == ["cpu", "False"], out.stderr
    assert "TPU_WORKER_HOSTNAMES" not in out.stderr


def test_remat_recomputes_each_block_and_changes_no_gradient():
    """optim.remat (what the batch search compiles "with rematerialisation"): one remat per
    encoder/decoder block in the traced step, and the same gradients."""
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from ankh.config import PRESETS
    from ankh.training import OptimConfig, _grads, build_model, graphdef_of

    cfg = PRESETS["tiny"]
    params = nnx.split(build_model(cfg, 0))[1].to_pure_dict()
    rng = np.random.default_rng(0)
    ids = lambda n: rng.integers(3, 28, (2, n)).astype(np.int32)  # noqa: E731
    pos = lambda n: np.tile(np.arange(n, dtype=np.int32), (2, 1))  # noqa: E731
    batch = {
        "input_ids": ids(16),
        "segment_ids": np.ones((2, 16), np.int32),
        "positions": pos(16),
        "decoder_input_ids": ids(8),
        "decoder_segment_ids": np.ones((2, 8), np.int32),
        "decoder_positions": pos(8),
        "labels": ids(8),
        "loss_mask": np.ones((2, 8), np.float32),
    }
    grads = {}
    for remat in (False, True):
        oc = OptimConfig(remat=remat)
        fn = jax.jit(lambda p, b, r=remat, o=oc: _grads(graphdef_of(cfg, "float32", r), p, b, o))
        jaxpr = str(jax.make_jaxpr(fn)(params, batch))
        assert jaxpr.count("remat") == (cfg.num_layers + cfg.num_decoder_layers if remat else 0)
        grads[remat] = fn(params, batch)[0]
    diff = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), grads[False], grads[True])
    assert max(jax.tree.leaves(diff)) < 1e-5


def test_inference_shapes_follow_the_serve_and_embed_configs():
    """The shapes the inference plan compiles are the replicas' own (``ankh.batching`` over the
    Serve config / the embed job's settings): the largest ones, from the configs' numbers."""
    from ankh.batching import SERVE_MIN_LENGTH, BatchPlan, sequence_ladder
    from ankh.config import PRESETS
    from ankh_platform.embed.config import EmbedJobConfig
    from ankh_platform.embed.job import pack_spec
    from ankh_platform.plan import shapes
    from ankh_platform.plan.inference import serve_config_of, served_model

    assert shapes.largest([(32, 128), (8, 512), (3, 1025)]) == [(8, 512), (3, 1025)]
    assert shapes.largest([(32, 128), (8, 512)]) == [(8, 512)]  # same tokens: the longer row

    serve, src = serve_config_of(CLUSTER_DIR / "kuberay" / "rayservice.yaml")
    assert src.endswith("rayservice.yaml") and serve.embed.batch_tokens == 16384
    # a cluster file without a Serve app: the Serve config deployed onto it
    assert serve_config_of(CLUSTER_DIR / "gcp-tpu-v4.yaml")[1].endswith("serve-cluster.yaml")

    base = PRESETS["base"]
    got = shapes.serve_embed_shapes(base, serve)
    plan = BatchPlan(sequence_ladder(base.max_length, SERVE_MIN_LENGTH), 16384)
    assert [(s.rows, s.length) for s in got] == [(8, 2048), (3, 4097)]  # 16384 and 12291 slots
    assert all((s.rows, s.length) in plan.shapes() and s.per_residue for s in got)
    assert got[0].compiled_shapes == 2 * len(plan.shapes())  # pooled and per-residue variants

    (job,) = shapes.embed_job_shapes(base, EmbedJobConfig())
    assert (job.rows, job.length) in pack_spec(EmbedJobConfig(), base).shapes()
    assert (job.rows, job.length, job.max_segments) == (1, 4160, 64)  # 4097 tokens, 64-aligned

    dec = shapes.decode_shape(base, serve)
    lim = serve.limits
    assert (dec.inputs, dec.returns, dec.max_len) == (32, lim.max_variants, lim.max_new_tokens + 1)
    assert dec.enc_len == 1280  # 1024 residues + </s> on generation's 4-per-octave ladder
    assert dec.rows == 32 * lim.max_variants

    # a gs:// checkpoint is planned as --serve-model's preset, never opened (no network)
    cfg, source = served_model(serve, "large")
    assert cfg == PRESETS["large"] and "--serve-model" in source and "gs://" in source
    assert (
        served_model(dataclasses.replace(serve, checkpoint="tiny"), "large")[0] == PRESETS["tiny"]
    )


def test_plan_table_cells_and_rendering(tmp_path):
    """The plan table's cells (settings per model x slice, all valid slices) and its markdown:
    a compiled cell's figures, and a cell not compiled in time named with its command."""
    from ankh_platform.cluster_check import Slice, check_slice
    from ankh_platform.plan import table

    assert table.cell_config("base", "v4-32") == (
        "base",
        ("scale.topology=2x2x4", "scale.num_workers=4"),
    )
    preset, over = table.cell_config("ankh3-xl", "v4-128")
    assert preset == "large" and over[0] == "model=ankh3-xl"
    cfg = load_preset(preset, over)
    assert cfg.model == "ankh3-xl" and check_slice(Slice("t", "v4", "4x4x4", 16, 4), cfg) == []

    done = {
        "model": "base",
        "slice_name": "v4-8",
        "mesh": {"data": 1, "fsdp": 4, "tensor": 1},
        "rows_per_host": 32,
        "global_batch_rows": 32,
        "fits": False,
        "hbm_bytes_per_chip": {"total": 40 << 30},
        "est_step_s": 1.5,
        "est_tokens_per_day": 3e9,
    }
    out = tmp_path / "plan.jsonl"
    out.write_text(json.dumps(done) + "\n")
    rows = table.run_cells(("base",), ("v4-8", "v4-32"), out, 1, compile_missing=False)
    assert rows[0] == done and rows[1]["missing"]
    md = table.markdown(rows).splitlines()
    assert md[2] == "| base | v4-8 | 32 (32) | 1x4x1 | **no** | 40.0 | 1.50 | 3.0 B |"
    assert "python -m jobs.check_cluster --plan-cell base v4-32" in md[3]
    timed = {"model": "large", "slice_name": "v4-8", "timed_out": True, "timeout_s": 60}
    assert "not compiled in 60 s" in table.markdown([timed])


def test_a_program_the_tpu_compiler_refuses_is_reported_as_not_fitting():
    """libtpu refuses to compile a program over its chip's HBM (RESOURCE_EXHAUSTED, as it did
    for ``base``'s decode step at serve-cluster.yaml's limits): the plan reports the need."""
    from ankh_platform.plan.table import markdown
    from ankh_platform.plan.train import compile_or_oom

    msg = (
        "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
        "temporaries (42.68G) exceeds available HBM (30.75G)."
    )

    class Refused:
        def compile(self):
            raise jax.errors.JaxRuntimeError(msg)

    compiled, mem = compile_or_oom(Refused())
    assert compiled is None and mem["total"] == int(42.68 * (1 << 30))
    assert (
        mem["compiler_usable_hbm"] == int(30.75 * (1 << 30)) and "42.68G" in mem["compiler_error"]
    )
    row = {"model": "base", "slice_name": "v4-8", "mesh": {"data": 1, "fsdp": 4, "tensor": 1}}
    row |= {"rows_per_host": 32, "global_batch_rows": 32, "fits": False, "hbm_bytes_per_chip": mem}
    assert markdown([row]).splitlines()[2].endswith("| **no** | >= 42.7 | - | - |")

    class Broken:
        def compile(self):
            raise jax.errors.JaxRuntimeError("INTERNAL: something else")

    with pytest.raises(jax.errors.JaxRuntimeError, match="INTERNAL"):
        compile_or_oom(Broken())
