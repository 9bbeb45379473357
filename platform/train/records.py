"""What a pretraining run writes about itself, beside its checkpoints: the metrics records
(``<run>/metrics.jsonl``, TensorBoard when available), their console lines, and at the end
``<run>/summary.json`` and ``<run>/curves.png`` -- local or gs://, all through ``ankh.storage``.

``summary.json`` and ``curves.png`` are published whole (``storage.atomic_write``): a reader
(``job.run``, a dashboard, a re-plot) never sees half a file, and a write that fails part-way
leaves the previous one. ``metrics.jsonl`` grows by appends on local disk; object stores
cannot append, so there each record re-publishes the (small) file whole.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

from ankh import storage
from ankh_platform.core import progress
from ankh_platform.train.config import PROBE_METRICS
from ankh_platform.train.curves import plot, plot_panels, read_metrics

log = logging.getLogger(__name__)


def console_lines(rec: dict[str, Any], total: int) -> list[str]:
    """The people-facing lines of one metrics record (the run log has the full record):
    ``step 120/300 | loss 2.810 | acc 0.140 | 1,930 tok/s | ETA 1m12s``, then eval results."""
    out = []
    step = rec.get("step", 0)
    if "loss" in rec:
        eta = rec["step_time_s"] * max(total - step, 0)
        out.append(
            f"step {step}/{total} | loss {rec['loss']:.3f} | acc {rec['accuracy']:.3f} | "
            f"{rec['tokens_per_s']:,.0f} tok/s | ETA {progress.format_duration(eta)}"
        )
    if "val_loss" in rec:
        kind = "final" if rec.get("event") == "final" else "eval"
        unigram = f" (unigram {rec['unigram_entropy']:.3f})" if "unigram_entropy" in rec else ""
        probes = "".join(f" | {m} {rec[m]:.3f}" for m in PROBE_METRICS.values() if m in rec)
        out.append(
            f"{kind} step {step} | val_loss {rec['val_loss']:.3f} | val_acc "
            f"{rec['val_accuracy']:.3f} | val_residue_loss {rec['val_residue_loss']:.3f}"
            f"{unigram}{probes}"
        )
    if rec.get("event") == "reference":
        parts = [
            f"{name} {rec[k]:.3f}"
            for k, name in (
                ("unigram_entropy", "unigram entropy (held-out residues)"),
                ("ss3_q3_onehot", "SS3 Q3 one-hot"),
                ("ss3_q3_random_init", "random init"),
                ("ss8_q8_onehot", "SS8 Q8 one-hot"),
                ("ss8_q8_random_init", "SS8 random init"),
            )
            if k in rec
        ]
        out.append("reference | " + " | ".join(parts))
    return out


class MetricsWriter:
    """JSONL (and TensorBoard, when tensorboardX is installed and the run dir is local)."""

    def __init__(self, run_dir: str, enabled: bool):
        self.enabled = enabled
        self.path = f"{run_dir}/metrics.jsonl"
        self.lines: list[str] = []
        self.tb = None
        if enabled:
            fs, root = storage.filesystem(run_dir)
            fs.makedirs(root, exist_ok=True)
            self.local = storage.is_local(fs)
            if fs.exists(f"{root}/metrics.jsonl") and not self.local:
                self.lines = fs.cat(f"{root}/metrics.jsonl").decode().splitlines(keepends=True)
            try:
                from tensorboardX import SummaryWriter

                self.tb = SummaryWriter(f"{run_dir}/tensorboard") if self.local else None
            except ImportError:
                self.tb = None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        line = json.dumps(record) + "\n"
        if self.local:
            with storage.open_file(self.path, "a") as fh:
                fh.write(line)
        else:  # object stores cannot append: re-publish the (small) file whole
            self.lines.append(line)
            storage.atomic_write(self.path, lambda tmp: Path(tmp).write_text("".join(self.lines)))
        if self.tb is not None and "step" in record:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(k, v, record["step"])
            self.tb.flush()

    def discard_after(self, step: int) -> int:
        """Drop the training records past ``step`` (work lost with the workers that did it:
        a resume from ``step`` trains those steps again), so every step is logged once;
        events stay. Returns how many were dropped."""
        if not self.enabled:
            return 0
        fs, root = storage.filesystem(self.path)
        if not fs.exists(root):
            return 0
        lines = fs.cat(root).decode().splitlines(keepends=True)
        keep = [
            l
            for l in lines
            if not l.strip() or "event" in (r := json.loads(l)) or r.get("step", 0) <= step
        ]
        if len(keep) < len(lines):
            storage.atomic_write(self.path, lambda tmp: Path(tmp).write_text("".join(keep)))
            self.lines = keep
        return len(lines) - len(keep)


def log_examples(run_dir: str, rank: int, step: int, ids: list[int]) -> None:
    """Append what process ``rank`` trains on at ``step`` (0-based: the step about to run) to
    ``<run>/examples/rank<rank>.jsonl`` (``log_example_ids``: exactly-once checks)."""
    line = json.dumps({"step": step, "ids": ids}) + "\n"
    storage.append_text(f"{run_dir}/examples/rank{rank}.jsonl", line)


def discard_examples_after(run_dir: str, step: int, rank: int, world: int) -> int:
    """On a resume from ``step``: drop the example records of the steps from ``step`` on (work
    lost with the workers that did it, about to be trained again), so every step is recorded
    once. Each process cleans its own file; process 0 also those of ranks ``>= world``, written
    by a larger group before it shrank (nobody writes them now). Returns the records dropped."""
    fs, root = storage.filesystem(f"{run_dir}/examples")
    if not fs.exists(root):
        return 0
    dropped = 0
    for path in fs.ls(root, detail=False):
        m = re.fullmatch(r"rank(\d+)\.jsonl", path.rsplit("/", 1)[-1])
        if m is None or not (int(m[1]) == rank or (rank == 0 and int(m[1]) >= world)):
            continue
        lines = fs.cat(path).decode().splitlines(keepends=True)
        keep = [l for l in lines if l.strip() and json.loads(l)["step"] < step]
        if len(keep) < len(lines):
            text = "".join(keep)
            target = f"{run_dir}/examples/{path.rsplit('/', 1)[-1]}"
            storage.atomic_write(target, lambda tmp, text=text: Path(tmp).write_text(text))
            dropped += len(lines) - len(keep)
    return dropped


def write_summary(run_dir: str, summary: dict[str, Any]) -> str:
    """Publish ``<run_dir>/summary.json`` whole (the old one stays if this write fails)."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            json.dump(summary, fh)

    return storage.atomic_write(f"{run_dir}/summary.json", write)


def write_curves(
    run_dir: str, title: str, panels: list[tuple[str, str, str]] | None = None
) -> str | None:
    """``<run_dir>/curves.png`` from the run's metrics file (``panels``: another run's metrics,
    ``curves.plot_panels``); a plotting failure only warns."""
    path = f"{run_dir}/curves.png"
    try:
        records = read_metrics(run_dir)
        if panels:
            return plot_panels(records, path, panels, title=title)
        return plot(records, path, title=title)
    except Exception as e:
        log.warning("could not write %s: %s", path, e)
        return None
