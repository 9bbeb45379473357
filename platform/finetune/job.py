"""``jobs.finetune``: load the task and the model's encoder, train (``loop``), write the run.

A run directory holds ``run.json`` (what prediction needs: the model reference, mode, task
kind and classes), ``head.safetensors``, in ``mode=lora`` ``adapter/`` (PEFT's
``adapter_config.json`` + ``adapter_model.safetensors``: the adapters alone), in ``lora`` and
``full`` ``model/`` (an HF directory with the adapters merged: ``ankh.load`` and ``transformers``
read it), ``metrics.jsonl`` (a record per step and per validation pass; ``tensorboard/`` the
same as TensorBoard events), ``curves.png``, ``summary.json`` and ``checkpoints/`` (Orbax;
rerunning the same command resumes). ``scale.num_workers`` > 1: Ray Train; ``mesh.*``: the
parameters sharded over the devices (``distributed``).
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

import jax
import numpy as np
from flax import nnx
from safetensors.numpy import load_file, save_file

from ankh import lora as lora_lib
from ankh import storage
from ankh_platform.core import progress
from ankh_platform.core.config import from_dict, to_dict
from ankh_platform.finetune import distributed, loop
from ankh_platform.finetune.config import FinetuneJobConfig
from ankh_platform.finetune.model import build, class_weights, count, trainable
from ankh_platform.train.records import MetricsWriter, write_curves

log = logging.getLogger(__name__)


def _flat(state: nnx.State) -> dict[str, np.ndarray]:
    return {".".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(state)}


def _save_tensors(path: str, tensors: dict[str, np.ndarray], meta: dict | None = None) -> None:
    storage.atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def _load_best(model: nnx.Module, wrt: Any, path: str) -> None:
    """The best trainable state into ``model``, each array where the one it replaces was (on
    a mesh: sharded; every process reads the file process 0 wrote)."""
    state = nnx.state(model, wrt)
    got = load_file(path)
    for p, v in nnx.to_flat_state(state):
        old, new = v[...], got[".".join(map(str, p))]
        v[...] = distributed.put(new, old.sharding) if isinstance(old, jax.Array) else new
    nnx.update(model, state)


def prepare(cfg: FinetuneJobConfig):
    """The task, the loaded ``Ankh`` and the ``loop.Data`` of token ids."""
    import ankh
    from ankh_platform.evaluate.task_specs import load_task

    task = load_task(cfg.task, cfg.limits, cfg.go_top_n, cfg.seed)
    if not task.splits["train"].ids or not task.splits["valid"].ids:
        raise ValueError(f"task {task.name}: the train and valid splits must not be empty")
    base = ankh.load(cfg.model, dtype=cfg.compute_dtype)
    toks = {s: base.tokenize(sp.seqs) for s, sp in task.splits.items()}
    y_stats = (0.0, 1.0)
    if task.kind == "protein_reg":  # standardised targets (train statistics)
        tr = np.asarray(task.splits["train"].labels, np.float64)
        y_stats = (float(tr.mean()), float(tr.std() or 1.0))
    cw = (
        class_weights(task, task.splits["train"].labels)
        if cfg.class_weights == "balanced"
        else None
    )
    return task, base, loop.Data(task, toks, base.num_prefix, y_stats, cw)


def run(cfg: FinetuneJobConfig, ray_address: str | None = None) -> dict[str, Any]:
    """Fine-tune (or resume): on Ray Train workers when ``distributed.wanted``, else here."""
    out = cfg.output.rstrip("/")
    if not storage.is_gcs(out):  # Orbax's and absl's INFO lines go to the file, not the console
        from ankh_platform.core.runtime import log_to_file

        log_to_file(f"{out}/logs/job.log")
    if distributed.wanted(cfg):
        return distributed.run_ray(cfg, train_loop, ray_address)
    if cfg.compile_cache:  # Ray Train workers get it from worker_env
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(cfg.compile_cache))
    return train(cfg)


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train worker entry point (``config``: ``to_dict`` of the driver's config)."""
    cfg = from_dict(FinetuneJobConfig, config)
    distributed.join(cfg)
    train(cfg)


PANELS = [("loss", "training loss", "loss")]  # + the validation metric's panel


def train(cfg: FinetuneJobConfig) -> dict[str, Any]:
    """The loop, in any number of JAX processes (``distributed``); process 0 writes the run
    and returns its summary (the others: {})."""
    task, base, data = prepare(cfg)
    model = build(base, task, cfg.mode, cfg.head, cfg.lora, cfg.seed, cfg.remat)
    wrt = trainable(cfg.mode)
    mesh = distributed.mesh(cfg)
    if mesh is None:
        return _train(cfg, task, base, data, model, wrt, None)
    distributed.check(model, mesh)
    with jax.set_mesh(mesh):
        return _train(cfg, task, base, data, model, wrt, mesh)


def _train(cfg, task, base, data, model, wrt, mesh) -> dict[str, Any]:
    """``train`` on ``mesh`` (None: this process's first device)."""
    out = cfg.output.rstrip("/")
    primary = jax.process_index() == 0
    where = None
    if mesh is not None:  # placed before the optimizer: its moments follow the parameters
        distributed.place(model, mesh)
    opt = nnx.Optimizer(model, loop.optimizer(cfg), wrt=wrt)
    if mesh is not None:  # and so the checkpoint restores into the placed arrays (resume)
        distributed.place(opt, mesh)
        where = (distributed.shardings(model), distributed.shardings(opt))
    ckpts = loop.Checkpoints(f"{out}/checkpoints")
    meta = ckpts.restore(model, opt, wrt) or {
        "step": 0,
        "best": -math.inf,
        "best_step": 0,
        "bad": 0,
    }
    step_fn, times = loop.step_fn(task.kind, wrt, where), []
    writer = MetricsWriter(out, primary)  # metrics.jsonl + TensorBoard (tensorboard/)
    bar = progress.Progress("finetune", total=cfg.steps, unit="steps")
    bar.enabled = bar.enabled and primary  # one bar: process 0's
    bar.update(meta["step"])
    stopped = False
    while meta["step"] < cfg.steps and not stopped:
        b = loop.batch_at(data, meta["step"], cfg.batch_size, cfg.seed)
        loss, secs = loop.timed_step(
            step_fn, model, opt, b if mesh is None else distributed.shard(b, mesh)
        )
        meta["step"] += 1
        times.append(secs)
        writer.write({"step": meta["step"], "loss": loss, "step_time_s": secs})
        bar.update()
        if meta["step"] % cfg.eval_every == 0 or meta["step"] == cfg.steps:
            stopped = _validate(cfg, model, wrt, data, meta, out, writer, mesh)
            ckpts.save(meta["step"], model, opt, wrt, meta)
    bar.close()
    ckpts.close()
    _load_best(model, wrt, f"{out}/best.safetensors")
    test = loop.evaluate(model, data, "test", cfg.batch_size, mesh)  # every process: a mesh's
    model = distributed.host(model) if mesh is not None else model
    if not primary:
        return {}
    summary = {
        "task": task.name,
        "kind": task.kind,
        "mode": cfg.mode,
        "model": cfg.model,
        "steps": meta["step"],
        "best_step": meta["best_step"],
        "early_stopped": meta["step"] < cfg.steps,
        f"valid_{test['main']}": meta["best"],
        "test": test,
        "trainable_params": count(model, wrt),
        "total_params": count(model),
        "step_time_s": float(np.median(times[1:] if len(times) > 1 else times)) if times else None,
        "sizes": {s: len(sp.ids) for s, sp in task.splits.items()},
        "workers": jax.process_count(),
        "mesh": {a: int(n) for a, n in mesh.shape.items()} if mesh is not None else None,
        **loop.peak_memory_mb(),
    }
    main = f"valid_{test['main']}"
    panels = [*PANELS, (main, f"validation {test['main']}", test["main"])]
    summary["curves"] = write_curves(out, f"{task.name} ({cfg.mode})", panels)
    write_run(cfg, model, base, data, out, summary)
    return summary


def _validate(cfg, model, wrt, data, meta, out, writer, mesh) -> bool:
    """One validation pass: keep the best trainable state; True when patience has run out.
    On a mesh every process scores (the forward is one program over all devices) and gets the
    same figures: the same decision everywhere."""
    val = loop.evaluate(model, data, "valid", cfg.batch_size, mesh)
    v = float(val[val["main"]])
    writer.write({"step": meta["step"], f"valid_{val['main']}": v})
    log.info("step %d: valid %s %.4f", meta["step"], val["main"], v)
    if v > meta["best"] or meta["best_step"] == 0:
        meta.update(best=v, best_step=meta["step"], bad=0)
        best = jax.tree.map(distributed.to_host, nnx.state(model, wrt))  # every process
        if jax.process_index() == 0:
            _save_tensors(f"{out}/best.safetensors", _flat(best))
        return False
    meta["bad"] += 1
    return bool(cfg.patience) and meta["bad"] >= cfg.patience


def write_run(cfg, model, base, data, out: str, summary: dict) -> None:
    """run.json, the head, the adapters (PEFT format) and the merged model directory."""
    task = data.task
    run_info = {
        "model": cfg.model,
        "mode": cfg.mode,
        "head": cfg.head,
        "lora": to_dict(cfg.lora),
        "task": {"name": task.name, "kind": task.kind, "classes": task.classes},
        "y_stats": list(data.y_stats),
        "config": to_dict(cfg),
    }
    _save_tensors(f"{out}/head.safetensors", _flat(nnx.state(model.head, nnx.Param)))
    if cfg.mode == "lora":
        lora_lib.save_peft_dir(f"{out}/adapter", model.encoder, cfg.lora, cfg.model)
        lora_lib.merge(model.encoder)
    if cfg.mode in ("lora", "full"):
        # Not base.flat_params(): ``model`` shares base's encoder and embedding variables,
        # which a mesh made global arrays (``model`` here is the host copy of their values).
        flat = {
            p: np.asarray(v[...])
            for p, v in nnx.to_flat_state(base.params)
            if p[0] not in ("encoder", "shared")
        }
        for path, v in nnx.to_flat_state(nnx.state(model.encoder, nnx.Param)):
            flat[("encoder", *path)] = np.asarray(v[...])
        flat[("shared",)] = np.asarray(model.shared[...])
        from ankh import convert

        convert.write_hf_dir(f"{out}/model", flat, base.config, base.tokenizer.vocab)
    for name, obj in (("run.json", run_info), ("summary.json", summary)):
        storage.atomic_write(f"{out}/{name}", lambda tmp, o=obj: _dump(tmp, o))


def _dump(path: str, obj: Any) -> None:
    with open(path, "w") as fh:
        json.dump(obj, fh, indent=2, default=float)
