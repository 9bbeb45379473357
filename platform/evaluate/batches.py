"""Padded fixed-shape batches for the trained probe heads (``evaluate.heads``): per-protein
pooling, per-residue packing into fixed chunks, padding to a few compiled lengths."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ankh.batching import rung
from ankh_platform.evaluate.tasks import TaskData, contact_map


def pool(x: list[np.ndarray]) -> list[np.ndarray]:
    return [e.mean(axis=0, keepdims=True) for e in x]  # [1, e]: a per-protein "sequence" of 1


def pack(items: list[np.ndarray], chunk: int) -> list[np.ndarray]:
    """Concatenate per-residue arrays and cut them into ``chunk``-residue pieces."""
    flat = np.concatenate([np.asarray(i) for i in items])
    return [flat[i : i + chunk] for i in range(0, len(flat), chunk)]


def unpack(chunks: list[np.ndarray], lengths: list[int]) -> list[np.ndarray]:
    flat = np.concatenate(chunks)
    return np.split(flat, np.cumsum(lengths)[:-1])


def make_batch(
    task: TaskData,
    xs: list[np.ndarray],
    ys: list[Any],
    rows: np.ndarray,
    batch: int,
    y_stats: tuple[float, float],
) -> dict[str, np.ndarray]:
    """Pad ``rows`` into fixed ``[batch, bucket(L)]`` arrays (few jit shapes); pad rows weigh 0."""
    dim = xs[rows[0]].shape[1]
    longest = max(len(xs[i]) for i in rows)
    # Doubling rungs from 16 (few jit shapes for the head's training step); pooled
    # per-protein rows are "sequences" of one.
    length = rung(longest, 16, steps_per_octave=1) if longest > 1 else 1
    x = np.zeros((batch, length, dim), np.float32)
    mask = np.zeros((batch, length), np.float32)
    row_w = np.zeros((batch,), np.float32)
    if task.kind == "residue_class":
        y = np.full((batch, length), -1, np.int32)
    elif task.kind == "contacts":
        y = np.zeros((batch, length, length), np.float32)
    elif task.kind == "multilabel":
        y = np.zeros((batch, len(task.classes)), np.float32)
    else:
        y = np.zeros((batch,), np.float32 if task.kind == "protein_reg" else np.int32)
    for r, i in enumerate(rows):
        n = len(xs[i])
        x[r, :n], mask[r, :n], row_w[r] = xs[i], 1.0, 1.0
        if task.kind == "residue_class":
            y[r, :n] = ys[i]
        elif task.kind == "contacts":
            y[r, :n, :n] = contact_map(ys[i])
        elif task.kind == "protein_reg":
            y[r] = (ys[i] - y_stats[0]) / y_stats[1]
        else:
            y[r] = ys[i]
    return {"x": x, "mask": mask, "y": y, "row_w": row_w}


def iter_batches(task: TaskData, xs, ys, batch: int, order: np.ndarray, y_stats) -> Iterator[tuple]:
    for s in range(0, len(order), batch):
        rows = order[s : s + batch]
        yield rows, make_batch(task, xs, ys, rows, batch, y_stats)
