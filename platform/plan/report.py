"""One slice's plan as one JSON-able dict: the compiled step's memory, FLOPs and collectives,
the estimate, Ray's reservation, and -- when it does not fit -- the largest batch that does.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from ankh_platform.cluster_check import Slice, check_slice
from ankh_platform.plan import train
from ankh_platform.plan.chips import Chip, chip
from ankh_platform.plan.estimate import estimate_flops, step_estimate
from ankh_platform.plan.libtpu import topology_devices
from ankh_platform.plan.ray_side import scaling_agreement
from ankh_platform.train.config import PretrainConfig

log = logging.getLogger(__name__)


def compiled_fields(c: train.Compiled, spec: Chip) -> dict[str, Any]:
    """The compile's figures as the JSON line names them."""
    collective_bytes = sum(v["bytes"] for v in c.collectives.values())
    if c.flops_per_chip is None:  # not compiled: out of HBM, nothing to estimate from
        est = {"estimate": True, "est_step_s": None, "est_tokens_per_day": None}
    else:
        formula = c.formula_flops_per_step
        flops, source = estimate_flops(c.flops_per_chip, formula and formula / c.chips)
        est = step_estimate(spec, flops, collective_bytes, c.tokens_per_step, flops_source=source)
    capacity = spec.hbm_bytes
    return {
        "params": c.params,
        "mesh": c.mesh,
        "rows_per_host": c.rows_per_host,
        "global_batch_rows": c.rows_per_host * c.hosts,
        "enc_len": c.enc_len,
        "dec_len": c.dec_len,
        "hbm_bytes_per_chip": c.memory,
        "hbm_capacity_bytes": capacity,
        "fits": "compiler_error" not in c.memory and c.memory["total"] <= capacity,
        # XLA's count, every op, all chips (None: the compiler refused the program)
        "flops_per_step": None if c.flops_per_chip is None else c.flops_per_chip * c.chips,
        "flops_per_step_formula": c.formula_flops_per_step,  # ankh.flops: matmuls only
        "collectives": [{"kind": k, **v} for k, v in c.collectives.items()],
        "tokens_per_step": c.tokens_per_step,
        **est,
        "compile_s": round(c.compile_s, 1),
    }


def plan_slice(
    sl: Slice, cfg: PretrainConfig, path: str | Path, search: bool = True
) -> dict[str, Any]:
    """The plan of ``cfg`` on ``sl``: every field of the JSON line; ``ok`` false when the slice
    arithmetic, the memory or Ray's reservation disagrees."""
    spec = chip(sl.generation)
    row: dict[str, Any] = {
        "file": str(path),
        "slice": sl.where,
        "preset": sl.preset,
        "topology": f"{sl.generation}:{sl.topology}",
        "accelerator": sl.accelerator_type,
        "chips": sl.chips,
        "hosts": sl.hosts,
    }
    problems = check_slice(sl, cfg)
    if problems:  # the mesh or batch cannot even be built for this slice
        return row | {"ok": False, "problems": problems}
    log.info("compiling %s's train step for %s:%s", sl.preset, sl.generation, sl.topology)
    c = train.compile_step(cfg, sl.generation, sl.topology)
    row |= compiled_fields(c, spec)
    row["ray"] = scaling_agreement(cfg, sl, topology_devices(sl.generation, sl.topology))
    problems += row["ray"]["problems"]
    if not row["fits"]:
        over = c.memory["total"] / spec.hbm_bytes
        problems.append(f"the step needs {over:.2f}x a chip's HBM at {c.rows_per_host} rows/host")
        if search:
            row["largest_fitting_rows_per_host"] = found = batch_search(cfg, sl, spec, c)
            problems.append(
                f"largest per-host batch that fits: {found['without_remat']} rows without "
                f"rematerialisation, {found['with_remat']} with it (optim.remat=true)"
            )
    return row | {"ok": not problems, "problems": problems}


def batch_search(cfg: PretrainConfig, sl: Slice, spec: Chip, c: train.Compiled) -> dict:
    """{"without_remat": rows or None, "with_remat": rows or None}, each found by compiling."""
    args = (sl.generation, sl.topology, spec.hbm_bytes, c.mesh, c.hosts)
    return {
        f"{'with' if remat else 'without'}_remat": train.largest_fitting_rows(
            train.with_remat(cfg, remat), *args, known_unfit=remat == cfg.optim.remat
        )
        for remat in (False, True)
    }


def compile_file(
    path: str | Path,
    preset: str | None = None,
    search: bool = True,
    inference: tuple[str, ...] | None = None,
    serve_model: str = "base",
) -> list[dict[str, Any]]:
    """The plan of every TPU slice of a cluster file (its own preset, or ``preset``); with
    ``inference`` (TPU generations, the slice's own first), what Serve and the batch-embedding
    job run on one host of each."""
    from ankh_platform.cluster_check import load_preset, load_slices

    rows = []
    for sl in load_slices(path):
        name = preset or sl.preset
        cfg = None
        if not name:  # e.g. a Serve cluster: no pretraining runs there
            row = {
                "file": str(path),
                "slice": sl.where,
                "topology": f"{sl.generation}:{sl.topology}",
                "compiled": False,
                "ok": True,
                "problems": [],
                "note": "the file names no pretraining preset: no train step to compile",
            }
        else:
            cfg = load_preset(name, sl.overrides)
            row = plan_slice(dataclasses.replace(sl, preset=name), cfg, path, search)
        if inference is not None:
            row = row | inference_fields(path, sl.generation, cfg, inference, serve_model, row)
        rows.append(row)
    return rows


def inference_fields(
    path: str | Path,
    generation: str,
    cfg: PretrainConfig | None,
    generations: tuple[str, ...],
    serve_model: str,
    row: dict[str, Any],
) -> dict[str, Any]:
    """``inference``: the Serve and batch-embedding programs on one host of the slice's
    generation (must fit: else ``ok`` is false) and of each of ``generations`` (reported)."""
    from ankh.resolve import resolve
    from ankh_platform.embed.config import EmbedJobConfig
    from ankh_platform.plan import inference as inf
    from ankh_platform.train.config import model_shape

    serve, serve_from = inf.serve_config_of(path)
    if cfg is not None:  # the network this file trains is the one it serves
        model, model_from = model_shape(cfg, resolve(cfg.model).config), f"preset {cfg.model}"
    else:
        model, model_from = inf.served_model(serve, serve_model)
    gens = (generation, *(g for g in generations if g != generation))
    out = inf.plan(model, model_from, gens, serve, EmbedJobConfig())
    out |= {"serve_config": serve_from, "embed_config": "EmbedJobConfig defaults (jobs.embed)"}
    own = out["hosts"][0]
    if own.get("fits"):
        return {"inference": out}
    bad = [k for k, p in own.get("programs", {}).items() if not p["fits"]]
    why = f"inference on one {own['topology']} chip does not fit: {bad or own.get('error')}"
    return {"inference": out, "ok": False, "problems": [*row["problems"], why]}
