"""Predictions of a fine-tuned run: ``Predictor`` (one process) and ``jobs.predict``.

``Predictor(run_dir)`` rebuilds the run's network -- the merged ``model/`` (``lora``/``full``) or
the base model (``head``), and ``head.safetensors`` -- and maps sequences to predictions.
``predict_files`` reads FASTA / Parquet inputs with the batch-embedding job's reader
(``embed.inputs``: shards, row order) and writes ``<output>/<shard>.parquet`` per input, whole or
not at all; a rerun skips the shards already written (resume), and every input record is
either a row there or an entry in ``_summary.json``'s ``rejected`` list (id, row, reason).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from flax import nnx

from ankh import storage
from ankh.lora import LoraConfig
from ankh.tokenizer import TokenizerError
from ankh_platform.core import progress
from ankh_platform.embed import inputs
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


def _predict_chunk(pred: Predictor, ids, seqs, first: int, rows: list, rejected: list) -> None:
    good = []
    for k, (i, s) in enumerate(zip(ids, seqs)):
        try:
            pred.base.tokenize([s if isinstance(s, str) else None])
            good.append(k)
        except TokenizerError as e:
            rejected.append({"id": i, "row": first + k, "reason": str(e).split(": ", 1)[-1]})
    outs = pred.predict([seqs[k] for k in good]) if good else []
    for k, o in zip(good, outs):
        rows.append({"id": ids[k], "row": first + k, "sequence": seqs[k], **pred.describe(o)})


def predict_files(run_dir: str, spec: str, output: str, batch_size: int = 8) -> dict[str, Any]:
    """Predict every record of the inputs ``spec``; returns (and writes) ``_summary.json``."""
    shards = inputs.discover(spec)
    out = output.rstrip("/")
    fs, root = storage.filesystem(out)
    fs.makedirs(root, exist_ok=True)
    pred, summary = None, {"run": run_dir, "shards": {}, "rejected": []}
    prev = f"{root}/_summary.json"
    if fs.exists(prev):
        with fs.open(prev, "r") as fh:
            summary["rejected"] = json.load(fh).get("rejected", [])
    bar = progress.Progress("predict", total=len(shards), unit="shards")
    for shard in shards:
        target = f"{root}/{shard.stem}.parquet"
        if fs.exists(target):  # written whole by an earlier run: resume past it
            with fs.open(target, "rb") as fh:
                summary["shards"][shard.stem] = {"rows": pq.read_metadata(fh).num_rows}
            bar.update()
            continue
        pred = pred or Predictor(run_dir, batch_size)
        rows: list[dict] = []
        rejected = [r for r in summary["rejected"] if r.get("shard") != shard.stem]
        new: list[dict] = []
        for first, ids, seqs in inputs.input_chunks(shard.path, shard.fmt, 1024):
            _predict_chunk(pred, ids, seqs, first, rows, new)
        summary["rejected"] = rejected + [{"shard": shard.stem, **r} for r in new]
        table = pa.Table.from_pylist(rows) if rows else pa.table({"id": pa.array([], pa.string())})
        storage.atomic_write(target, lambda tmp, t=table: pq.write_table(t, tmp), fs)
        summary["shards"][shard.stem] = {"rows": len(rows), "rejected": len(new)}
        bar.update()
    bar.close()
    if pred is not None:
        summary["task"] = pred.info["task"]
    storage.atomic_write(prev, lambda tmp: _dump(tmp, summary), fs)
    return summary


def _dump(path: str, obj: Any) -> None:
    with open(path, "w") as fh:
        json.dump(obj, fh, indent=2)
