"""Annotation transfer from nearest neighbours (goPredSim) and its CAFA Fmax.

goPredSim (Littmann et al. 2021) predicts a query's GO terms from its nearest *labelled*
neighbours in embedding space: every term of a neighbour is predicted with that neighbour's
similarity as its score, and a term held by several neighbours keeps the highest score. A
neighbour with no term in an ontology is not labelled there and transfers nothing for it.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def transfer(hits: pa.Table, columns: list[str]) -> pa.Table:
    """``(query_id, ontology, term, score)`` from a hits table (``jobs.search`` layout) whose
    list columns ``columns`` hold the neighbours' terms."""
    missing = [c for c in columns if c not in hits.column_names]
    if missing:
        raise ValueError(f"the index keeps no column {missing} to transfer (jobs.index --columns)")
    q, s = hits["query_id"].to_pylist(), hits["score"].to_pylist()
    out: dict[str, list] = {"query_id": [], "ontology": [], "term": [], "score": []}
    for col in columns:
        best: dict[tuple[str, str], float] = {}
        for qid, score, terms in zip(q, s, hits[col].to_pylist()):
            for t in terms or ():
                key = (qid, t)
                best[key] = max(best.get(key, -np.inf), score)
        for (qid, t), score in sorted(best.items()):
            out["query_id"].append(qid)
            out["ontology"].append(col)
            out["term"].append(t)
            out["score"].append(score)
    return pa.table(
        {
            "query_id": pa.array(out["query_id"], pa.string()),
            "ontology": pa.array(out["ontology"], pa.string()),
            "term": pa.array(out["term"], pa.string()),
            "score": pa.array(out["score"], pa.float32()),
        }
    )


def predictions(table: pa.Table, ontology: str) -> dict[str, dict[str, float]]:
    """``{query: {term: score}}`` of one ontology from a ``transfer`` table."""
    preds: dict[str, dict[str, float]] = {}
    rows = table.filter(pc.equal(table["ontology"], ontology))
    for q, t, s in zip(*(rows[c].to_pylist() for c in ("query_id", "term", "score"))):
        preds.setdefault(q, {})[t] = s
    return preds


def naive(lookup_terms: list[list[str] | None], queries: list[str]) -> dict[str, dict[str, float]]:
    """The naive baseline: every query gets every term scored by its frequency among the
    labelled proteins of the lookup set."""
    labelled = [ts for ts in lookup_terms if ts]
    freq = Counter(t for ts in labelled for t in set(ts))
    scores = {t: c / max(1, len(labelled)) for t, c in freq.items()}
    return {q: scores for q in queries}


def fmax(
    truth: dict[str, set[str]], preds: dict[str, dict[str, float]], steps: int = 100
) -> tuple[float, float]:
    """CAFA Fmax and its threshold: over thresholds t = 0, 1/steps, ..., 1, precision averages
    over the proteins with at least one prediction >= t, recall over every protein with a true
    term (those without one are not benchmarked); F = 2 pr rc / (pr + rc), maximised over t.
    Terms are compared as given (no propagation through the GO graph)."""
    bench = {q: ts for q, ts in truth.items() if ts}
    best, best_t = 0.0, 0.0
    for t in np.linspace(0.0, 1.0, steps + 1):
        precisions, recall_sum = [], 0.0
        for q, ts in bench.items():
            pred = {term for term, s in preds.get(q, {}).items() if s >= t - 1e-9}
            if pred:
                hit = len(pred & ts)
                precisions.append(hit / len(pred))
                recall_sum += hit / len(ts)
        if not precisions:
            continue
        pr, rc = float(np.mean(precisions)), recall_sum / len(bench)
        f = 2 * pr * rc / (pr + rc) if pr + rc > 0 else 0.0
        if f > best:
            best, best_t = f, float(t)
    return best, best_t
