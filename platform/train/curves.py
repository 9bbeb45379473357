"""The learning-curve PNG of a run, drawn from its ``metrics.jsonl``.

Panels against the step: training loss; held-out residue loss with the unigram-entropy line
(below it = the model predicts masked residues from context, not just their frequency); SS3 Q3
of the linear probe with the one-hot and random-init baselines; and, when the run probes SS8
(``eval.probe_tasks``), SS8 Q8 with its baselines. The run writes
``<run>/curves.png`` at its end; redraw any run (also one still going, or a gs:// one) with::

    python -m ankh_platform.train.curves RUN_DIR [--output PNG]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from ankh import storage

log = logging.getLogger(__name__)
REFERENCE_KEYS = (
    "unigram_entropy",
    "ss3_q3_onehot",
    "ss3_q3_random_init",
    "ss8_q8_onehot",
    "ss8_q8_random_init",
)
# probe panels: (metric, title, y label); SS3's is always drawn, the others when measured
PROBE_PANELS = (
    ("ss3_q3", "SS3 Q3, held-out PDB entries", "Q3"),
    ("ss8_q8", "SS8 Q8, held-out PDB entries", "Q8"),
)


def read_metrics(run_dir: str) -> list[dict[str, Any]]:
    """The records of ``<run_dir>/metrics.jsonl`` (local or any fsspec URL)."""
    with storage.open_file(f"{run_dir}/metrics.jsonl", "r") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _series(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of ``key``; a resumed run's repeated steps keep the last value."""
    by_step = {
        r["step"]: float(r[key])
        for r in records
        if key in r and "step" in r and r.get("event") != "reference"
    }
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def references(records: list[dict]) -> dict[str, float]:
    """The newest value of each reference number (unigram entropy, baseline Q3s)."""
    out: dict[str, float] = {}
    for r in records:
        out.update({k: float(r[k]) for k in REFERENCE_KEYS if r.get(k) is not None})
    return out


def plot(records: list[dict[str, Any]], path: str, title: str = "") -> str:
    """Write the PNG of ``records`` to ``path`` (local or fsspec URL); returns it."""
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    ref = references(records)
    probes = [p for p in PROBE_PANELS if p[0] == "ss3_q3" or _series(records, p[0])[0]]
    fig, axes = plt.subplots(1, 2 + len(probes), figsize=(5 * (2 + len(probes)), 4))
    ax = axes[0]
    ax.plot(*_series(records, "loss"), label="train loss")
    ax.set(title="training loss (masked tokens)", xlabel="step", ylabel="nats / token")
    ax = axes[1]
    ax.plot(*_series(records, "val_residue_loss"), "o-", label="val residue loss")
    if "unigram_entropy" in ref:
        ax.axhline(
            ref["unigram_entropy"],
            color="gray",
            ls="--",
            label=f"unigram entropy {ref['unigram_entropy']:.3f}",
        )
    ax.set(title="held-out masked residues", xlabel="step", ylabel="nats / residue")
    for ax, (metric, panel, ylabel) in zip(axes[2:], probes):
        ax.plot(*_series(records, metric), "o-", label="pretrained (linear probe)")
        for suffix, name, colour in (
            ("_onehot", "one-hot", "gray"),
            ("_random_init", "random init", "tab:red"),
        ):
            if metric + suffix in ref:
                v = ref[metric + suffix]
                ax.axhline(v, color=colour, ls="--", label=f"{name} {v:.3f}")
        ax.set(title=panel, xlabel="step", ylabel=ylabel)
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:  # published whole: a reader (or a re-plot of a live run) never sees half a PNG
        return storage.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)


def plot_panels(
    records: list[dict[str, Any]], path: str, panels: list[tuple[str, str, str]], title: str = ""
) -> str:
    """Another run's curves (``jobs.finetune``): one panel per ``(metric, title, y label)``
    against the step; panels without records are left out. Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = [p for p in panels if _series(records, p[0])[0]] or panels[:1]
    fig, axes = plt.subplots(1, len(drawn), figsize=(5 * len(drawn), 4), squeeze=False)
    for ax, (metric, panel, ylabel) in zip(axes[0], drawn):
        steps, values = _series(records, metric)
        ax.plot(steps, values, "o-" if len(steps) < 30 else "-")
        ax.set(title=panel, xlabel="step", ylabel=ylabel)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        return storage.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    finally:
        plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        "python -m ankh_platform.train.curves",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", help="a run directory (<output>/<name>) with metrics.jsonl")
    p.add_argument("--output", help="PNG to write (default: <run_dir>/curves.png)")
    args = p.parse_args(argv)
    run_dir = args.run_dir.rstrip("/")
    try:
        records = read_metrics(run_dir)
    except FileNotFoundError:
        print(f"error: no metrics.jsonl in {run_dir}", file=sys.stderr)
        return 2
    print(plot(records, args.output or f"{run_dir}/curves.png", title=run_dir.rsplit("/", 1)[-1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
