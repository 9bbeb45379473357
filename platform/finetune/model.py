"""The network a fine-tuning run trains: Ankh's encoder (the decoder is dropped on load) and a
probe head from ``ankh.probes``, with LoRA adapters from ``ankh.lora`` in ``mode=lora``; its
padded batches and what it predicts per example (the form ``evaluate.metrics.score`` reads)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ankh import lora as lora_lib
from ankh.batching import pad_rows, rung
from ankh.model import default_positions
from ankh.probes import make_head
from ankh_platform.evaluate.tasks import TaskData


class Finetuner(nnx.Module):
    """Token ids -> encoder states -> head outputs; the head sees residues only (no task token,
    no ``</s>``), pooled per protein or per residue."""

    def __init__(self, shared: nnx.Param, encoder: nnx.Module, head: nnx.Module, dtype: Any):
        self.shared, self.encoder, self.head, self.dtype = shared, encoder, head, dtype

    def hidden(self, ids: jax.Array, mask: jax.Array, drop: jax.Array | None = None) -> jax.Array:
        """``drop``: a training batch's ``drop_seeds`` (LoRA dropout on); None: deterministic."""
        x = jnp.take(self.shared[...], ids, axis=0).astype(self.dtype)  # [b, l, e]
        with lora_lib.dropout_keys(self.encoder, drop):
            h = self.encoder(x, mask, default_positions(mask)[:1])
        return h.astype(jnp.float32)

    def __call__(
        self, ids: jax.Array, mask: jax.Array, res_mask: jax.Array, drop: jax.Array | None = None
    ) -> jax.Array:
        return self.head(self.hidden(ids, mask, drop), res_mask)


def n_outputs(task: TaskData) -> int:
    return 1 if task.kind == "protein_reg" else len(task.classes)


def build(
    base: Any,
    task: TaskData,
    mode: str,
    head: str,
    lcfg: lora_lib.LoraConfig,
    seed: int,
    remat: bool = False,
):
    """A ``Finetuner`` from a loaded ``Ankh`` (its decoder and lm_head are not kept); ``remat``:
    the encoder's blocks rematerialised in the backward pass, as in pretraining."""
    if task.kind == "contacts":
        raise ValueError("contacts is not a fine-tuning task (use jobs.evaluate)")
    full = nnx.merge(base.graphdef, base.params)
    rngs = nnx.Rngs(params=seed, dropout=seed + 1)
    head_mod = make_head(head, base.config.d_model, n_outputs(task), task.per_protein, rngs)
    full.encoder.remat = remat  # read by ankh.model.block_call when the step is traced
    model = Finetuner(full.shared, full.encoder, head_mod, base.dtype)
    if mode == "lora":
        lora_lib.attach(model.encoder, lcfg, rngs)
    return model


def trainable(mode: str) -> Any:
    """The parameters ``mode`` trains (an nnx filter)."""
    head = nnx.All(nnx.Param, nnx.PathContains("head"))
    if mode == "head":
        return head
    if mode == "lora":
        return nnx.Any(nnx.LoRAParam, head)
    return nnx.Param


def count(model: nnx.Module, what: Any = nnx.Param) -> int:
    return int(sum(x.size for x in jax.tree.leaves(nnx.state(model, what))))


def class_weights(task: TaskData, labels: list[Any]) -> np.ndarray | None:
    """Inverse-frequency weights (mean 1 over the examples); multi-label: negatives / positives
    per term, clipped to [1, 100]. None for regression."""
    if task.kind == "protein_reg":
        return None
    if task.kind == "multilabel":
        y = np.stack(labels).astype(np.float64)
        pos = y.sum(0)
        return np.clip((len(y) - pos) / np.maximum(pos, 1.0), 1.0, 100.0).astype(np.float32)
    flat = np.concatenate([np.atleast_1d(np.asarray(y)) for y in labels]).astype(np.int64)
    counts = np.bincount(flat, minlength=len(task.classes)).astype(np.float64)
    return (len(flat) / (len(counts) * np.maximum(counts, 1.0))).astype(np.float32)


def make_batch(
    task: TaskData, toks: list[np.ndarray], ys: list[Any] | None, rows: int, prefix: int, y_stats
) -> dict[str, np.ndarray]:
    """``rows`` padded rows (missing rows weigh 0), length on a doubling ladder (few jit
    shapes); labels (None: prediction) sit on their residues' token positions (per residue: -1
    elsewhere)."""
    length = rung(max(len(t) for t in toks), 16, steps_per_octave=1)
    ids, mask = pad_rows(toks, rows, length)
    res_mask = np.zeros((rows, length), np.float32)
    row_w = np.zeros((rows,), np.float32)
    if task.kind == "residue_class":
        y = np.full((rows, length), -1, np.int32)
    elif task.kind == "multilabel":
        y = np.zeros((rows, len(task.classes)), np.float32)
    else:
        y = np.zeros((rows,), np.float32 if task.kind == "protein_reg" else np.int32)
    for r, (t, lab) in enumerate(zip(toks, ys or [None] * len(toks))):
        n = len(t) - prefix - 1  # residues: no task token, no </s>
        res_mask[r, prefix : prefix + n], row_w[r] = 1.0, 1.0
        if lab is None:
            continue
        if task.kind == "residue_class":
            y[r, prefix : prefix + n] = lab
        elif task.kind == "protein_reg":
            y[r] = (lab - y_stats[0]) / y_stats[1]
        else:
            y[r] = lab
    return {"ids": ids, "mask": mask, "res_mask": res_mask, "y": y, "row_w": row_w}


def outputs(task: TaskData, out: np.ndarray, toks: list[np.ndarray], prefix: int, y_stats):
    """Per example: class probabilities (per residue ``[n, C]``), term probabilities, or the
    regression value in the label's units."""
    res = []
    for r, t in enumerate(toks):
        if task.kind == "residue_class":
            res.append(np.asarray(jax.nn.softmax(out[r, prefix : len(t) - 1], axis=-1)))
        elif task.kind == "protein_class":
            res.append(np.asarray(jax.nn.softmax(out[r])))
        elif task.kind == "multilabel":
            res.append(np.asarray(jax.nn.sigmoid(out[r])))
        else:
            res.append(float(out[r, 0]) * y_stats[1] + y_stats[0])
    return res
