"""Predictions of a fine-tuned run: ``Predictor``, what ``jobs.predict``'s replicas
(``finetune.predict_job``) and Serve's ``/v1/predict`` hold.

``Predictor(run_dir)`` rebuilds the run's network -- the merged ``model/`` (``lora``/``full``) or
the base model (``head``), and ``head.safetensors`` -- and maps sequences to predictions.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
from flax import nnx

from ankh import storage
from ankh.lora import LoraConfig
from ankh.tokenizer import TokenizerError
from ankh_platform.evaluate.tasks import TaskData
from ankh_platform.finetune import loop
from ankh_platform.finetune.model import build

log = logging.getLogger(__name__)


class Predictor:
    """A fine-tuned run, ready to predict: ``Predictor(run).predict(["MKT...", ...])``."""

    def __init__(self, run_dir: str, batch_size: int = 8):
        import ankh

        run_dir = run_dir.rstrip("/")
        with storage.open_file(f"{run_dir}/run.json", "r") as fh:
            self.info = json.load(fh)
        t = self.info["task"]
        self.task = TaskData(t["name"], t["kind"], t["classes"], {})
        tuned = self.info["mode"] in ("lora", "full")
        base = ankh.load(f"{run_dir}/model" if tuned else self.info["model"])
        self.model = build(base, self.task, "head", self.info["head"], LoraConfig(), 0)
        state = nnx.state(self.model.head, nnx.Param)
        with storage.open_file(f"{run_dir}/head.safetensors", "rb") as fh:
            from safetensors.numpy import load

            tensors = load(fh.read())
        for path, var in nnx.to_flat_state(state):
            var[...] = tensors[".".join(map(str, path))]
        nnx.update(self.model.head, state)
        self.base, self.batch_size = base, batch_size
        self.y_stats = tuple(self.info["y_stats"])

    def predict(self, seqs: list[str]) -> list[Any]:
        """Per sequence (``TokenizerError`` names a bad one): per-residue class probabilities
        ``[n, C]``, class / term probabilities ``[C]``, or the regression value."""
        toks = self.base.tokenize(seqs)
        data = loop.Data(self.task, {}, self.base.num_prefix, self.y_stats, None)
        return loop.predict(self.model, data, toks, self.batch_size)

    def describe(self, pred: Any) -> dict[str, Any]:
        """One prediction as a record: ``prediction`` (classes as letters / names / terms over
        0.5, or the value) and ``probabilities`` where there are classes."""
        kind, classes = self.task.kind, self.task.classes
        if kind == "protein_reg":
            return {"prediction": float(pred)}
        p = np.asarray(pred, np.float32)
        if kind == "residue_class":
            label = "".join(classes[i] for i in p.argmax(-1))
        elif kind == "protein_class":
            label = classes[int(p.argmax())]
        else:
            label = [c for c, x in zip(classes, p) if x >= 0.5]
        return {"prediction": label, "probabilities": p.tolist()}

    def records(self, ids: list, seqs: list) -> tuple[list[dict | None], list[str]]:
        """Per input record: its ``describe`` record, or None and the reason it was rejected
        (no id, not a sequence, a letter the tokenizer refuses, empty, too long)."""
        good, why = [], [""] * len(seqs)
        for k, (i, s) in enumerate(zip(ids, seqs)):
            if i is None or i == "":
                why[k] = "missing id (record without a header or null id)"
                continue
            try:
                self.base.tokenize([s])
                good.append(k)
            except TokenizerError as e:
                # the batch-of-one position means nothing to the user
                why[k] = str(e).replace("sequence 0: ", "").replace("sequence 0 ", "sequence ")
        recs: list[dict | None] = [None] * len(seqs)
        for k, o in zip(good, self.predict([seqs[k] for k in good]) if good else []):
            recs[k] = self.describe(o)
        return recs, why
