"""Evaluation metrics in plain numpy (checked against hand-computed values in tests), and
``score``: every figure of one split of a task."""

from __future__ import annotations

from typing import Any

import numpy as np

from ankh_platform.evaluate.tasks import TaskData, contact_map


def accuracy(pred: np.ndarray, true: np.ndarray) -> float:
    pred, true = np.asarray(pred), np.asarray(true)
    if pred.shape != true.shape:
        raise ValueError(f"accuracy: shapes differ {pred.shape} vs {true.shape}")
    if true.size == 0:
        raise ValueError("accuracy: no examples")
    return float(np.mean(pred == true))


def confusion(pred: np.ndarray, true: np.ndarray, num_classes: int) -> np.ndarray:
    """``[true, pred]`` counts."""
    out = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(out, (np.asarray(true), np.asarray(pred)), 1)
    return out


def rankdata(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties get the average rank (as scipy's default)."""
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), np.float64)
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    xc, yc = x - x.mean(), y - y.mean()
    denom = np.sqrt(np.sum(xc * xc) * np.sum(yc * yc))
    return float(np.sum(xc * yc) / denom) if denom > 0 else 0.0


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(
            f"spearman needs two equal-length arrays of >= 2 values, got {len(x)}, {len(y)}"
        )
    return pearson(rankdata(x), rankdata(y))


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the precision-recall curve as a step sum (sklearn's definition); tied scores
    form one threshold. Flattened inputs give the micro-averaged AUPRC."""
    s = np.asarray(scores, np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    if y.sum() == 0:
        raise ValueError("average_precision: no positive labels")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # end of each tied group
    tp = np.cumsum(y)[last]
    precision = tp / (last + 1)
    recall = tp / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def fmax(
    scores: np.ndarray, labels: np.ndarray, thresholds: np.ndarray | None = None
) -> tuple[float, float]:
    """CAFA protein-centric Fmax -> (fmax, best threshold).

    At threshold t: precision averages over proteins with >= 1 score >= t, recall over all
    proteins with >= 1 true label; F = 2PR/(P+R); maximised over t in 0.01..1.00.
    """
    s, y = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    keep = y.any(axis=1)
    s, y = s[keep], y[keep]
    if len(y) == 0:
        raise ValueError("fmax: no protein has a true label")
    ts = np.round(np.arange(1, 101) / 100, 2) if thresholds is None else np.asarray(thresholds)
    best, best_t = 0.0, float(ts[0])
    for t in ts:
        pred = s >= t
        npred = pred.sum(axis=1)
        tp = (pred & y).sum(axis=1)
        covered = npred > 0
        if not covered.any():
            continue
        p = float(np.mean(tp[covered] / npred[covered]))
        r = float(np.mean(tp / y.sum(axis=1)))
        f = 2 * p * r / (p + r) if p + r > 0 else 0.0
        if f > best:
            best, best_t = f, float(t)
    return best, best_t


def contact_precision(
    prob: np.ndarray,
    true: np.ndarray,
    min_sep: int = 12,
    max_sep: int | None = None,
    top: int | None = None,
) -> float:
    """Precision of the ``top`` highest-scoring pairs i<j with ``min_sep <= j-i (< max_sep)``.

    Default ``top`` = L. Medium+long range is ``min_sep=12`` (medium 12-23, long >= 24).
    """
    prob, true = np.asarray(prob), np.asarray(true)
    n = prob.shape[0]
    if prob.shape != (n, n) or true.shape != (n, n):
        raise ValueError(f"contact maps must be square and equal: {prob.shape} vs {true.shape}")
    i, j = np.triu_indices(n, k=min_sep)
    if max_sep is not None:
        keep = (j - i) < max_sep
        i, j = i[keep], j[keep]
    if len(i) == 0:
        return float("nan")
    k = min(len(i), n if top is None else max(1, top))
    order = np.argsort(-prob[i, j], kind="stable")[:k]
    return float(np.mean(true[i[order], j[order]]))


def score(task: TaskData, preds: list[np.ndarray], ys: list[Any], ids: list[str]) -> dict[str, Any]:
    """All figures for one split; ``main`` is the early-stopping / headline metric."""
    if task.kind == "residue_class":
        p = np.concatenate([x.argmax(-1) for x in preds])
        t = np.concatenate([np.asarray(y) for y in ys])
        name = {"ss3": "q3", "ss8": "q8"}.get(task.name, "accuracy")
        per_chain = [accuracy(x.argmax(-1), np.asarray(y)) for x, y in zip(preds, ys)]
        return {
            "main": name,
            name: accuracy(p, t),
            "per_chain_mean_accuracy": float(np.mean(per_chain)),
            "residues": int(len(t)),
            "confusion": confusion(p, t, len(task.classes)).tolist(),
        }
    if task.kind == "protein_class":
        p, t = np.array([x.argmax() for x in preds]), np.array(ys)
        return {
            "main": "accuracy",
            "accuracy": accuracy(p, t),
            "confusion": confusion(p, t, len(task.classes)).tolist(),
        }
    if task.kind == "protein_reg":
        p, t = np.array(preds, np.float64), np.array(ys, np.float64)
        return {
            "main": "spearman",
            "spearman": spearman(p, t),
            "pearson": pearson(p, t),
            "mse": float(np.mean((p - t) ** 2)),
        }
    if task.kind == "multilabel":
        s, t = np.stack(preds), np.stack(ys)
        out = {
            "main": "micro_auprc",
            "micro_auprc": average_precision(s, t) if t.any() else float("nan"),
        }
        out["fmax"], out["fmax_threshold"] = fmax(s, t) if t.any() else (float("nan"), 0.0)
        onto = np.array(task.info.get("ontology_of_term", []))
        for o in sorted(set(onto.tolist())):
            cols = onto == o
            if t[:, cols].any():
                out[f"fmax_{o}"] = fmax(s[:, cols], t[:, cols])[0]
        return out
    figs: dict[str, list[float]] = {
        "p_at_l5_ml": [],
        "p_at_l2_ml": [],
        "p_at_l_ml": [],
        "p_at_l5_long": [],
    }
    for pr, ca in zip(preds, ys):
        L, true = len(ca), contact_map(ca)
        figs["p_at_l5_ml"].append(contact_precision(pr, true, 12, top=L // 5))
        figs["p_at_l2_ml"].append(contact_precision(pr, true, 12, top=L // 2))
        figs["p_at_l_ml"].append(contact_precision(pr, true, 12, top=L))
        figs["p_at_l5_long"].append(contact_precision(pr, true, 24, top=L // 5))
    return {"main": "p_at_l5_ml", **{k: float(np.nanmean(v)) for k, v in figs.items()}}
