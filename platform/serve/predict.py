"""``POST /v1/predict``: predictions of fine-tuned runs (``jobs.finetune`` directories).

Each served task is a run directory (``ServeConfig.tasks``, ``{name: run}``, local or gs://);
the request names its task (default: the first). The prediction deployment holds tasks the way
the embedding deployment holds models (``serve.models.ModelSet``: the first task loaded at
replica start and pinned, the others loaded on first use, at most ``max_tasks_per_replica``
resident, Serve routing a task's requests to a replica that holds it). Sequences of concurrent
requests are gathered by ``@serve.batch`` and predicted together per task; every length rung
up to the served maximum is compiled at load (``predict.warmup``), so no request pays a
compile. The output per protein is ``Predictor.describe``'s -- the record ``jobs.predict``
writes: ``prediction`` (per-residue class letters, a class name, the GO terms over 0.5, or a
value) and ``probabilities``. ``build_app`` refuses a task whose ``run.json`` is unreadable,
before anything starts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from pydantic import BaseModel, Field, StrictStr
from ray import serve

from ankh import storage
from ankh.batching import rung
from ankh_platform.core.config import from_dict
from ankh_platform.serve.models import ModelSet
from ankh_platform.serve.schema import (
    STRICT,
    PredictOptions,
    Sequences,
    ServeConfig,
    UnknownModelError,
    check_sequences,
)

log = logging.getLogger("ray.serve")


class UnknownTaskError(UnknownModelError):
    """A task name this app does not serve (HTTP 404, like an unknown model)."""

    def __init__(self, name: str, known: list[str]):
        LookupError.__init__(self, f"unknown task {name!r}; served: {known}")


class PredictRequest(BaseModel):
    model_config = STRICT
    sequences: Sequences = Field(
        min_length=1,
        description="Protein sequences (one letter codes; case and whitespace are normalised).",
    )
    task: StrictStr | None = Field(
        None, description="Served task (a fine-tuned run); default: the first served."
    )


class Prediction(BaseModel):
    prediction: Any = Field(
        description="Per-residue class letters (one per residue), a class name, the terms "
        "with probability >= 0.5 (multi-label), or a value (regression)."
    )
    probabilities: list[Any] | None = Field(
        None, description="Per class ([C]), per residue and class ([L][C]); absent: regression."
    )


class PredictResponse(BaseModel):
    task: str
    kind: str = Field(description="residue_class, protein_class, multilabel or protein_reg.")
    classes: list[str] = Field(description="The probabilities' order (empty: regression).")
    predictions: list[Prediction] = Field(description="One per input sequence, in input order.")


def task_facts(run: str) -> dict[str, Any]:
    """What a run's ``run.json`` says about its task (kind, classes, model)."""
    with storage.open_file(f"{run.rstrip('/')}/run.json", "r") as fh:
        info = json.load(fh)
    return {**info["task"], "mode": info["mode"], "model": info["model"]}


def check_tasks(cfg: ServeConfig) -> dict[str, dict[str, Any]]:
    """Every configured task's facts; a run without a readable ``run.json`` is refused."""
    facts = {}
    for name, run in cfg.tasks.items():
        try:
            facts[name] = task_facts(run)
        except (OSError, KeyError, ValueError) as e:
            raise ValueError(
                f"task {name!r}: {run} is not a jobs.finetune run (run.json: {e})"
            ) from None
    return facts


class PredictTask:
    """One run ready to predict: its ``Predictor`` with every length rung compiled."""

    def __init__(self, run: str, opts: PredictOptions, max_length: int):
        from ankh_platform.finetune.predict import Predictor

        t0 = time.perf_counter()
        self.run = run
        self.predictor = Predictor(run, opts.batch_size)
        self.max_residues = min(max_length, self.predictor.base.config.max_length)
        if opts.warmup:  # a sequence filling each padded length make_batch can pick
            prefix = self.predictor.base.num_prefix
            top, length = rung(self.max_residues + prefix + 1, 16, steps_per_octave=1), 16
            while length <= top:
                self.predictor.predict(["M" * min(length - prefix - 1, self.max_residues)])
                length *= 2
        self.load_s = round(time.perf_counter() - t0, 2)

    def info(self) -> dict[str, Any]:
        p = self.predictor
        return {
            "run": self.run,
            "kind": p.task.kind,
            "classes": p.task.classes,
            "max_residues": self.max_residues,
            "vocab": p.base.tokenizer.vocab,
        }


@serve.deployment(name="AnkhPredict")
class PredictDeployment:
    """Handle API: ``await handle.predict.remote(seqs, task)``; the task's replica is picked
    with ``handle.options(multiplexed_model_id=task)`` (the first task: a plain handle)."""

    def __init__(
        self, tasks: dict[str, str], options: dict | None, max_tasks: int, max_length: int
    ):
        self.opts = from_dict(PredictOptions, options or {})
        first = next(iter(tasks))
        self.tasks = ModelSet(
            first,
            PredictTask(tasks[first], self.opts, max_length),
            tasks,
            max_tasks,
            lambda name, run: PredictTask(run, self.opts, max_length),
        )
        self._predict_seq.set_max_batch_size(self.opts.max_batch_size)
        self._predict_seq.set_batch_wait_timeout_s(self.opts.batch_wait_timeout_s)
        log.info("predictor ready", extra={"tasks": self.tasks.names()})

    async def info(self, task: str) -> dict[str, Any]:
        name, t = await self.tasks.get(task)
        return {"id": name, **t.info()}

    def health(self) -> bool:
        return True

    async def predict(self, sequences: list[str], task: str) -> list[dict[str, Any]]:
        _, t = await self.tasks.get(task)
        return list(await asyncio.gather(*[self._predict_seq((t, s)) for s in sequences]))

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005)
    async def _predict_seq(self, items: list[tuple[PredictTask, str]]) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self._run, items)  # off the event loop: keep batching

    def _run(self, items: list[tuple[PredictTask, str]]) -> list[dict[str, Any]]:
        out: list[Any] = [None] * len(items)
        groups: dict[int, list[int]] = {}
        for i, (t, _) in enumerate(items):
            groups.setdefault(id(t), []).append(i)
        for idx in groups.values():
            p = items[idx[0]][0].predictor
            for i, pred in zip(idx, p.predict([items[i][1] for i in idx])):
                out[i] = p.describe(pred)
        return out


def deployment(cfg: ServeConfig, options: dict[str, Any]) -> Any:
    """The bound prediction deployment of ``cfg.tasks`` (``options``: Serve's, from
    ``app.deployment_options``)."""
    from ankh_platform.serve.schema import to_plain

    check_tasks(cfg)
    return PredictDeployment.options(**options).bind(
        dict(cfg.tasks), to_plain(cfg.predict), cfg.max_tasks_per_replica, cfg.limits.max_length
    )


async def predict(ingress: Any, req: PredictRequest) -> dict[str, Any]:
    """The ``/v1/predict`` operation of ``app.Ingress``: task, limits, normalisation, predict."""
    facts = ingress.task_facts
    name = req.task or next(iter(facts), "")
    if name not in facts:
        raise UnknownTaskError(name, list(facts))
    handle = ingress.predictor if name == next(iter(facts)) else None
    if handle is None:
        key = (id(ingress.predictor), f"task:{name}")
        if key not in ingress._routes:
            ingress._routes[key] = ingress.predictor.options(multiplexed_model_id=name)
        handle = ingress._routes[key]
    info = await task_info(ingress, handle, name)
    check_sequences(req.sequences, ingress.limits, info["max_residues"])
    seqs = ingress.normalise(name, req.sequences, tok=info["tokenizer"])
    ingress.m_sequences.inc(len(seqs), tags={"route": "/v1/predict"})
    preds = await handle.predict.remote(seqs, name)
    f = facts[name]
    return {"task": name, "kind": f["kind"], "classes": f["classes"], "predictions": preds}


async def task_info(ingress: Any, handle: Any, name: str) -> dict[str, Any]:
    """A task's served maximum length and tokenizer (asked once of a replica holding it)."""
    if name not in ingress._task_info:
        from ankh.tokenizer import AnkhTokenizer

        info = await handle.info.remote(name)
        ingress._task_info[name] = {
            "max_residues": info["max_residues"],
            "tokenizer": AnkhTokenizer(info["vocab"]),
        }
    return ingress._task_info[name]
