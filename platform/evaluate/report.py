"""Evaluation outputs: ``results.json`` (every figure), ``results.csv`` (long format),
``results.md`` (task x head x metric rows, one column per checkpoint) and PNG plots."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from ankh_platform.evaluate.tasks import contact_map

log = logging.getLogger(__name__)
TABLE_METRICS = {  # headline figures per task kind, in table order
    "residue_class": ["q3", "q8", "accuracy"],
    "protein_class": ["accuracy"],
    "protein_reg": ["spearman", "pearson"],
    "multilabel": ["micro_auprc", "fmax"],
    "contacts": ["p_at_l5_ml", "p_at_l_ml"],
}


def rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (task, checkpoint, head, metric) of the test split."""
    out = []
    for r in report["results"]:
        for metric, value in r["test"].items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out.append(
                    {
                        "task": r["task"],
                        "checkpoint": r["checkpoint"],
                        "head": r["head"],
                        "seed": r["seed"],
                        "metric": metric,
                        "value": value,
                        "n_test": report["tasks"][r["task"]]["sizes"]["test"],
                    }
                )
    return out


def markdown(report: dict[str, Any]) -> str:
    ckpts = list(dict.fromkeys(r["checkpoint"] for r in report["results"]))
    lines = [
        "| task | head | metric (test) | " + " | ".join(f"`{c}`" for c in ckpts) + " |",
        "|---|---|---|" + "---|" * len(ckpts),
    ]
    by = {(r["task"], r["checkpoint"], r["head"]): r["test"] for r in report["results"]}
    for task, meta in report["tasks"].items():
        for head in dict.fromkeys(r["head"] for r in report["results"] if r["task"] == task):
            for metric in TABLE_METRICS[meta["kind"]]:
                vals = [by.get((task, c, head), {}).get(metric) for c in ckpts]
                if all(v is None for v in vals):
                    continue
                cells = [
                    "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"
                    for v in vals
                ]
                lines.append(f"| {task} | {head} | {metric} | " + " | ".join(cells) + " |")
    sizes = "; ".join(
        f"{t}: " + ", ".join(f"{k} {v}" for k, v in m["sizes"].items())
        for t, m in report["tasks"].items()
    )
    return "\n".join(lines) + f"\n\nSplit sizes (chains/proteins): {sizes}.\n"


def write_reports(
    report: dict[str, Any], output: str | Path, plots: bool = True, contact_protein: str = ""
) -> dict[str, str]:
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    plot_items = report.pop("_plots", [])
    paths = {
        "json": out / "results.json",
        "csv": out / "results.csv",
        "markdown": out / "results.md",
    }
    paths["json"].write_text(json.dumps(report, indent=1, default=_default))
    rs = rows(report)
    with open(paths["csv"], "w", newline="") as fh:
        w = csv.DictWriter(
            fh, fieldnames=["task", "checkpoint", "head", "seed", "metric", "value", "n_test"]
        )
        w.writeheader()
        w.writerows(rs)
    paths["markdown"].write_text(markdown(report))
    written = {k: str(v) for k, v in paths.items()}
    if plots and plot_items:
        written.update(write_plots(report, plot_items, out, contact_protein))
    return written


def _default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def write_plots(
    report: dict[str, Any], items: list[dict[str, Any]], out: Path, contact_protein: str = ""
) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = {}
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for it in items:
        groups.setdefault((it["task"].name, it["head"]), []).append(it)
    for (task_name, head), its in groups.items():
        task = its[0]["task"]
        fig, axes = plt.subplots(1, len(its), figsize=(4.2 * len(its), 4), squeeze=False)
        if task.kind in ("residue_class", "protein_class"):
            for ax, it in zip(axes[0], its):
                cm = np.asarray(it["result"]["test"]["confusion"], np.float64)
                norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
                ax.imshow(norm, vmin=0, vmax=1, cmap="Blues")
                ax.set_xticks(range(len(task.classes)), task.classes, fontsize=7)
                ax.set_yticks(range(len(task.classes)), task.classes, fontsize=7)
                for (i, j), v in np.ndenumerate(norm):
                    ax.text(
                        j,
                        i,
                        f"{v:.2f}",
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if v > 0.5 else "black",
                    )
                main = it["result"]["test"]["main"]
                ax.set_title(
                    f"{it['checkpoint']}\n{main} {it['result']['test'][main]:.3f}", fontsize=8
                )
                ax.set_xlabel("predicted")
                ax.set_ylabel("true")
            name = f"confusion_{task_name}_{head}.png"
        elif task.kind == "contacts":
            test = task.splits["test"]
            k = test.ids.index(contact_protein) if contact_protein in test.ids else 0
            true = contact_map(test.labels[k])
            for ax, it in zip(axes[0], its):
                pred = np.triu(it["pred"][k], 6)  # only separation >= 6 is predicted
                img = pred + np.tril(true.astype(np.float64), -1)
                ax.imshow(img, cmap="Greys", vmin=0, vmax=1)
                ax.set_title(
                    f"{it['checkpoint']}: {test.ids[k]}\nupper predicted, lower true", fontsize=8
                )
            name = f"contacts_{task_name}_{head}.png"
        else:
            plt.close(fig)
            continue
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written[name] = str(out / name)
    return written
