"""What a sweep leaves in its directory: ``results.csv`` (one row per trial), ``results.md`` (a
table per group, winner marked), ``results.json`` (spec, every trial's config, changes,
metrics and learning curves) and PNG plots (``group-<k>.png``: each metric per value;
``curves.png``: training and validation loss per trial, one panel per group).

``eval_loss`` is the held-out masked-token loss on residue targets (``val_residue_loss``).
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

from ankh import storage
from ankh_platform.core.config import to_dict

COLUMNS = (
    "trial",
    "group",
    "group_name",
    "variable",
    "value",
    "params",
    "eval_loss",
    "val_loss",
    "ss3_q3",
    "steps",
    "selected",
    "same_run_as",
)
# metrics the fixed columns already show (val_residue_loss as eval_loss)
SHOWN = {"val_residue_loss", "val_loss", "ss3_q3"}


def extra_metrics(spec: Any) -> list[str]:
    """The spec's metrics beyond the fixed columns (e.g. ``ss8_q8``), in the spec's order:
    columns after the fixed ones, so readers of the fixed layout are unaffected."""
    return [m for m in spec.metrics if m not in SHOWN and m not in COLUMNS]


def write_json(path: str, obj: Any) -> str:
    """``obj`` as indented JSON at the local ``path``, whole or not at all."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return storage.atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=1)))


def read_curve(run_dir: str) -> dict[str, list[list[float]]]:
    """``{"train": [[step, loss]], "val": [[step, val_loss, val_residue_loss]]}`` from the run's
    ``metrics.jsonl`` (a resumed run repeats steps: the last record of a step wins)."""
    train: dict[int, list[float]] = {}
    val: dict[int, list[float]] = {}
    fs, path = storage.filesystem(f"{run_dir}/metrics.jsonl")  # local or gs://
    if fs.exists(path):
        with fs.open(path, "r") as fh:
            for line in fh:
                rec = json.loads(line)
                step = rec.get("step")
                if "loss" in rec:
                    train[step] = [step, rec["loss"]]
                if "val_loss" in rec:
                    val[step] = [step, rec["val_loss"], rec.get("val_residue_loss", math.nan)]
    return {"train": [train[s] for s in sorted(train)], "val": [val[s] for s in sorted(val)]}


def rows(spec: Any, done: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for k, g in enumerate(done):
        for i, (t, m) in enumerate(zip(g["trials"], g["metrics"])):
            out.append(
                {
                    "trial": t.id,
                    "group": k,
                    "group_name": spec.groups[k].name,
                    "variable": spec.groups[k].variable,
                    "value": t.label,
                    "params": t.params,
                    "eval_loss": m.get("val_residue_loss", m.get("val_loss")),
                    "val_loss": m.get("val_loss"),
                    "ss3_q3": m.get("ss3_q3"),
                    "steps": t.config.steps,
                    "selected": i == g["winner"],
                    "same_run_as": g.get("run_of", {}).get(t.id, ""),
                }
                | {x: m.get(x) for x in extra_metrics(spec)}
            )
    return out


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else "" if v is None else str(v)


def markdown(spec: Any, done: list[dict[str, Any]], table: list[dict[str, Any]]) -> str:
    sel = spec.select_by
    extra = extra_metrics(spec)
    lines = [
        f"# Ablation sweep `{spec.name}`",
        "",
        f"Every trial: {done[0]['trials'][0].config.steps} steps, seed "
        f"{done[0]['trials'][0].config.seed}, within {spec.param_tolerance:.0%} of the base's "
        f"parameter count. Winner of each group: {sel.best()} `{sel.metric}`, carried into "
        "every later group. `eval_loss` = held-out masked-token loss on residues "
        "(`val_residue_loss`).",
        "",
    ]
    for k, g in enumerate(spec.groups):
        solve = f", `{g.solve}` solved for equal parameters" if g.solve else ""
        lines += [
            f"## {k}. {g.name}: `{g.variable}`{solve}",
            "",
            "| trial | value | params | eval_loss | val_loss | ss3_q3 | "
            + "".join(f"{x} | " for x in extra)
            + "|",
            "|---|---|---:|---:|---:|---:|" + "---:|" * len(extra) + "---|",
        ]
        for r in (r for r in table if r["group"] == k):
            mark = ("**winner**" if r["selected"] else "") + (
                f" (run of {r['same_run_as']})" if r["same_run_as"] else ""
            )
            lines.append(
                f"| {r['trial']} | `{r['value']}` | {r['params']:,} | {_fmt(r['eval_loss'])} "
                f"| {_fmt(r['val_loss'])} | {_fmt(r['ss3_q3'])} | "
                + "".join(f"{_fmt(r[x])} | " for x in extra)
                + f"{mark} |"
            )
        lines.append("")
    return "\n".join(lines)


def plots(out: str, spec: Any, done: list[dict[str, Any]], curves: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for k, g in enumerate(done):
        names = [m for m in spec.metrics if any(m in x for x in g["metrics"])]
        fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.4), squeeze=False)
        labels = [t.label for t in g["trials"]]
        for ax, m in zip(axes[0], names):
            vals = [x.get(m, math.nan) for x in g["metrics"]]
            colors = ["tab:orange" if i == g["winner"] else "tab:blue" for i in range(len(vals))]
            ax.bar(range(len(vals)), vals, color=colors)
            ax.set_xticks(range(len(vals)), labels, rotation=20, ha="right", fontsize=7)
            finite = [v for v in vals if not math.isnan(v)]
            if finite:  # differences are small next to the values: zoom on them
                lo, hi = min(finite), max(finite)
                pad = (hi - lo) * 0.5 or abs(hi) * 0.05 or 1.0
                ax.set_ylim(lo - pad, hi + pad)
            ax.set_title(m, fontsize=9)
        fig.suptitle(
            f"group {k}: {spec.groups[k].name} ({spec.groups[k].variable}); orange = winner",
            fontsize=9,
        )
        fig.tight_layout()
        path = os.path.join(out, f"group-{k}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    written.append(_curves_plot(out, spec, done, curves, plt))
    return written


def _curves_plot(
    out: str, spec: Any, done: list[dict[str, Any]], curves: dict[str, Any], plt: Any
) -> str:
    fig, axes = plt.subplots(1, len(done), figsize=(4.2 * len(done), 3.6), squeeze=False)
    for ax, (k, g) in zip(axes[0], enumerate(done)):
        for t in g["trials"]:
            c = curves[t.id]
            (line,) = ax.plot(
                [p[0] for p in c["train"]],
                [p[1] for p in c["train"]],
                lw=1,
                label=f"{t.label} (train)",
            )
            if c["val"]:
                ax.plot(
                    [p[0] for p in c["val"]],
                    [p[1] for p in c["val"]],
                    "o--",
                    ms=3,
                    lw=0.8,
                    color=line.get_color(),
                    label=f"{t.label} (val)",
                )
        ax.set_title(f"group {k}: {spec.groups[k].name}", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend(fontsize=6)
    fig.tight_layout()
    path = os.path.join(out, "curves.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_all(out: str, spec: Any, done: list[dict[str, Any]]) -> dict[str, str]:
    table = rows(spec, done)
    run_dir = {t.id: t.config.run_dir() for g in done for t in g["trials"]}
    for g in done:  # a trial that took an earlier trial's run: that run's curve
        run_dir |= {tid: run_dir[ref] for tid, ref in g.get("run_of", {}).items()}
    curves = {tid: read_curve(d) for tid, d in run_dir.items()}
    with open(os.path.join(out, "results.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=[*COLUMNS, *extra_metrics(spec)])
        w.writeheader()
        w.writerows(table)
    Path(out, "results.md").write_text(markdown(spec, done, table))
    groups = [
        {
            "name": spec.groups[k].name,
            "variable": spec.groups[k].variable,
            "solve": spec.groups[k].solve,
            "winner": g["trials"][g["winner"]].id,
            "trials": [
                t.record()
                | {
                    "metrics": m,
                    "curve": curves[t.id],
                    "run_dir": run_dir[t.id],
                    "same_run_as": g.get("run_of", {}).get(t.id),
                    "selected": i == g["winner"],
                }
                for i, (t, m) in enumerate(zip(g["trials"], g["metrics"]))
            ],
        }
        for k, g in enumerate(done)
    ]
    write_json(os.path.join(out, "results.json"), {"spec": to_dict(spec), "groups": groups})
    pngs = plots(out, spec, done, curves)
    return {
        "csv": os.path.join(out, "results.csv"),
        "markdown": os.path.join(out, "results.md"),
        "json": os.path.join(out, "results.json"),
        "plots": ",".join(pngs),
    }
