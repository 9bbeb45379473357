"""What Serve and the batch-embedding job run on a TPU host, compiled ahead of time for one.

A Serve replica and a batch-embedding replica each hold their model unsharded and run it on
one JAX device -- one chip of the host (they reserve no TPU resource in Ray; the others stay
idle or serve other replicas). So each program is compiled for one chip of a host's
topology (v4: ``v4:2x2x1``, 4 chips; v5e/v6e: ``v5e:2x2`` / ``v6e:2x2``, the 4-chip hosts
libtpu describes), with abstract float32 parameters (as ``ankh.load`` keeps them) and the
compute dtype of the config:

- ``serve_embed``: ``encode_pool`` at the Serve embedding replica's largest shape;
- ``embed_job``: ``encode_pool`` on packed rows at the batch-embedding job's largest shape;
- ``decode_step``: ``ankh.kv_cache.decode_step`` (one token for every row, the cache donated
  and updated in place as the decoding loop carries it) at the worst case the Serve request
  limits allow.

Shapes come from ``ankh_platform.plan.shapes`` (the project's batching policy).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ankh.accelerator import compute_dtype
from ankh.config import AnkhConfig
from ankh.embedding import encode_pool
from ankh.kv_cache import decode_step, init_cache
from ankh.model import AnkhModel
from ankh_platform.plan import shapes as shp
from ankh_platform.plan.chips import chip
from ankh_platform.plan.libtpu import topology_devices
from ankh_platform.plan.train import compile_or_oom, flops_of, memory_of

log = logging.getLogger(__name__)

# One TPU host per generation, as libtpu names its topology.
HOST_TOPOLOGY = {"v4": "2x2x1", "v5e": "2x2", "v6e": "2x2"}


def _on(device: Any, tree: Any) -> Any:
    sh = jax.sharding.SingleDeviceSharding(device)
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), tree)


@functools.cache
def _abstract_model(model: AnkhConfig, dtype: str) -> tuple[Any, Any]:
    """(graphdef, abstract float32 params) of the network, no weights made."""
    graphdef, state = nnx.split(
        nnx.eval_shape(lambda: AnkhModel(model, nnx.Rngs(0), compute_dtype(dtype)))
    )
    f32 = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(
            a.shape, jnp.float32 if jnp.issubdtype(a.dtype, jnp.floating) else a.dtype
        ),
        state,
    )
    return graphdef, f32


def _report(lowered: Any, t0: float, capacity: int, shape: dict) -> dict:
    compiled, oom = compile_or_oom(lowered)
    mem = oom or memory_of(compiled)
    return {
        "shape": shape,
        "hbm_bytes_per_chip": mem,
        "fits": oom is None and mem["total"] <= capacity,
        "flops": None if oom else flops_of(compiled),
        "compile_s": round(time.perf_counter() - t0, 1),
    }


def compile_encoder(
    model: AnkhConfig, dtype: str, s: shp.EncoderShape, device: Any, capacity: int
) -> dict:
    graphdef, params = _abstract_model(model, dtype)
    prefix = int(model.task_prefixes)
    ids = jax.ShapeDtypeStruct((s.rows, s.length), jnp.int32)
    t0 = time.perf_counter()
    # ``jit_encoder``'s function and static arguments, jitted keeping the parameters it does
    # not read (the decoder's) as arguments: a replica holds every parameter on its chip.
    kw = {"per_residue": s.per_residue, "num_layers": None, "skip_segments": True}
    if s.max_segments:  # the batch job's packed rows: ids, segments, positions, weights
        kw |= {"max_segments": s.max_segments, "skip_first": 0}
        w = jax.ShapeDtypeStruct((s.rows, s.length), jnp.float32)
        args = _on(device, (params, ids, ids, ids, w))
    else:  # Serve: padded rows, ids and mask
        kw |= {"max_segments": 0, "skip_first": prefix}
        args = _on(device, (params, ids, ids))
    fn = jax.jit(functools.partial(encode_pool, graphdef, **kw), keep_unused=True)
    return _report(fn.lower(*args), t0, capacity, dataclasses.asdict(s) | {"tokens": s.tokens})


def compile_decode_step(
    model: AnkhConfig, dtype: str, s: shp.DecodeShape, device: Any, capacity: int
) -> dict:
    graphdef, params = _abstract_model(model, dtype)
    dt = compute_dtype(dtype)

    def cache_of(p, enc, mask):
        return init_cache(nnx.merge(graphdef, p), enc, mask, s.max_len, group=s.returns)

    enc = jax.ShapeDtypeStruct((s.inputs, s.enc_len, model.d_model), dt)
    mask = jax.ShapeDtypeStruct((s.inputs, s.enc_len), jnp.int32)
    cache = jax.eval_shape(cache_of, params, enc, mask)

    def step(p, tokens, t, c):
        return decode_step(nnx.merge(graphdef, p), tokens, t, c)

    tokens = jax.ShapeDtypeStruct((s.rows,), jnp.int32)
    t = jax.ShapeDtypeStruct((), jnp.int32)
    t0 = time.perf_counter()
    lowered = jax.jit(step, donate_argnums=3, keep_unused=True).lower(
        *_on(device, (params, tokens, t, cache))
    )
    return _report(lowered, t0, capacity, dataclasses.asdict(s) | {"rows": s.rows})


def worst(reports: list[dict]) -> dict:
    """The report needing the most memory, with every candidate shape's total beside it."""
    top = max(reports, key=lambda r: r["hbm_bytes_per_chip"]["total"])
    others = [{"shape": r["shape"], "total": r["hbm_bytes_per_chip"]["total"]} for r in reports]
    return top | ({"candidates": others} if len(reports) > 1 else {})


def host_plan(model: AnkhConfig, generation: str, serve: Any, job: Any) -> dict[str, Any]:
    """The three programs compiled for one chip of a ``generation`` host; ``serve`` a
    ``ServeConfig``, ``job`` an ``EmbedJobConfig``."""
    spec = chip(generation)
    topology = HOST_TOPOLOGY[generation]
    devices = topology_devices(generation, topology)
    dev, cap = devices[0], spec.hbm_bytes
    serve_dtype = "bfloat16" if serve.dtype == "auto" else serve.dtype  # auto: bf16 on a TPU
    job_dtype = "bfloat16" if job.compute_dtype == "auto" else job.compute_dtype
    log.info("compiling the inference programs for one chip of %s:%s", generation, topology)
    programs = {
        "serve_embed": worst(
            [
                compile_encoder(model, serve_dtype, s, dev, cap)
                for s in shp.serve_embed_shapes(model, serve)
            ]
        ),
        "embed_job": worst(
            [
                compile_encoder(model, job_dtype, s, dev, cap)
                for s in shp.embed_job_shapes(model, job)
            ]
        ),
        "decode_step": compile_decode_step(
            model, serve_dtype, shp.decode_shape(model, serve), dev, cap
        ),
    }
    return {
        "topology": f"{generation}:{topology}",
        "chips_per_host": len(devices),
        "hbm_capacity_bytes": cap,
        "fits": all(p["fits"] for p in programs.values()),
        "programs": programs,
    }


# ---- what a cluster file serves -------------------------------------------------------------
SHIPPED_SERVE = "serve-cluster.yaml"  # the Serve config deployed on the launcher/KubeRay clusters
DEFAULT_SERVE_MODEL = "base"  # what the shipped Serve configs serve (checkpoint runs/ankh-base)


def serve_config_of(path: Any) -> tuple[Any, str]:
    """The ``ServeConfig`` a cluster file runs: its own Serve application (a Serve config file,
    or a RayService's ``serveConfigV2``), else the shipped ``cluster/serve-cluster.yaml`` that
    is deployed onto the launcher and KubeRay clusters. Returns it and where it came from."""
    from pathlib import Path

    import yaml

    from ankh_platform.cluster_check import CLUSTER_DIR
    from ankh_platform.core.config import from_dict
    from ankh_platform.serve.schema import ServeConfig

    for source in (str(path), str(CLUSTER_DIR / SHIPPED_SERVE)):
        for doc in yaml.safe_load_all(Path(source).read_text()):
            if not isinstance(doc, dict):
                continue
            if doc.get("kind") == "RayService":
                doc = yaml.safe_load(doc["spec"]["serveConfigV2"])
            apps = doc.get("applications") or []
            if apps:
                return from_dict(ServeConfig, apps[0].get("args") or {}), source
    raise AssertionError(f"{SHIPPED_SERVE} has no Serve application")


def served_model(serve: Any, fallback: str) -> tuple[AnkhConfig, str]:
    """The network the Serve config's default checkpoint holds where it can be read without
    the network (a preset name, a local directory); else the preset ``fallback``
    (``--serve-model``). A remote checkpoint (gs://, a hub id) is never opened: a plan must not
    wait on a bucket or credentials it may not have (resolving a gs:// path here waits for
    minutes on the metadata server and retries)."""
    from pathlib import Path

    from ankh.config import PRESETS
    from ankh.resolve import resolve

    ckpt = str(serve.checkpoint)
    if ckpt in PRESETS or ("://" not in ckpt and Path(ckpt).exists()):
        return resolve(ckpt).config, ckpt
    return PRESETS[fallback], f"{fallback} (--serve-model; {ckpt} not read)"


_PLANS: dict[str, dict] = {}


def plan(model: AnkhConfig, model_from: str, generations: tuple[str, ...], serve, job) -> dict:
    """Every generation's host plan for ``model`` (cached: files sharing a model and configs
    compile once)."""
    hosts = []
    for gen in generations:
        key = repr((model, gen, serve, job))
        if key not in _PLANS:
            try:
                _PLANS[key] = host_plan(model, gen, serve, job)
            except jax.errors.JaxRuntimeError as e:  # e.g. a topology libtpu cannot describe
                log.warning("no %s host plan: %s", gen, e)
                _PLANS[key] = {"topology": f"{gen}:{HOST_TOPOLOGY[gen]}", "error": str(e)}
        hosts.append(_PLANS[key])
    return {
        "model": model_from,
        "params": _param_count(model),
        "fits": all(h.get("fits", False) for h in hosts),
        "hosts": hosts,
    }


def _param_count(model: AnkhConfig) -> int:
    import math

    return sum(math.prod(a.shape) for a in jax.tree.leaves(_abstract_model(model, "float32")[1]))
