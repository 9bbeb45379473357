"""The plan table: each model x v4 slice -> fits, HBM per chip, estimated step time, tokens/day.

Each cell is one compile of the pretraining step as the job builds it, in its own process
(``python -m jobs.check_cluster --plan-cell MODEL SLICE``: one JSON line), so a cell that
cannot compile in the time given is cut off and the table says so, with the command that
computes it. The pretraining settings of a cell are the shipped preset file's for ``base`` and
``large`` (``jobs/configs/pretrain-<model>.yaml``: rows per host, mesh, optimizer, remat) and
``pretrain-large.yaml`` with ``model=<name>`` for the others (the same large-model settings);
the slice sets ``scale.topology`` and ``scale.num_workers`` (one worker per host). Results are
appended to a JSON-lines file as they come, so a rerun computes only the missing cells.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MODELS = ("base", "large", "ankh2-large", "ankh3-large", "ankh3-xl")
# v4 slices by name: (topology, hosts); a v4 host has 4 chips.
SLICES = {"v4-8": ("2x2x1", 1), "v4-32": ("2x2x4", 4), "v4-128": ("4x4x4", 16)}


def cell_config(model: str, slice_name: str) -> tuple[str, tuple[str, ...]]:
    """(preset file, overrides) of one cell."""
    topology, hosts = SLICES[slice_name]
    preset = model if model in ("base", "large") else "large"
    over = (f"scale.topology={topology}", f"scale.num_workers={hosts}")
    return preset, over if preset == model else (f"model={model}", *over)


def cell_command(model: str, slice_name: str) -> str:
    return f"python -m jobs.check_cluster --plan-cell {model} {slice_name}"


def plan_cell(model: str, slice_name: str) -> dict[str, Any]:
    """Compile one cell in this process: the JSON row, with this process's wall and CPU
    seconds and peak resident memory (the cost of the plan itself on this machine)."""
    import dataclasses
    import resource
    import time

    t0 = time.perf_counter()

    from ankh_platform.cluster_check import Slice, load_preset
    from ankh_platform.plan.report import plan_slice

    preset, over = cell_config(model, slice_name)
    topology, hosts = SLICES[slice_name]
    cfg = load_preset(preset, over)
    sl = Slice(f"plan:{slice_name}", "v4", topology, hosts, 4, preset)
    row = plan_slice(dataclasses.replace(sl, preset=preset), cfg, "-", search=False)
    use = resource.getrusage(resource.RUSAGE_SELF)
    cost = {
        "process_wall_s": round(time.perf_counter() - t0, 1),
        "process_cpu_s": round(use.ru_utime + use.ru_stime, 1),
        "process_max_rss_mb": round(use.ru_maxrss / 1024),
    }
    return {"model": model, "slice_name": slice_name, "overrides": list(over)} | row | cost


def run_cells(
    models: tuple[str, ...],
    slices: tuple[str, ...],
    out: Path,
    timeout_s: float,
    jobs: int = 1,
    compile_missing: bool = True,
) -> list[dict]:
    """Every cell, each in a child process with ``timeout_s`` (``jobs`` at a time, in order:
    list the cheap ones first); cells already in ``out`` (not timed out) are read from it."""
    from concurrent.futures import ThreadPoolExecutor

    done = {}
    if out.exists():
        for line in out.read_text().splitlines():
            r = json.loads(line)
            done[(r["model"], r["slice_name"])] = r
    cells = [(m, s) for m in models for s in slices]
    todo = [c for c in cells if c not in done or done[c].get("timed_out")]
    if not compile_missing:  # render what ``out`` holds; the rest is marked as not compiled
        return [done.get(c, {"model": c[0], "slice_name": c[1], "missing": True}) for c in cells]

    def one(cell: tuple[str, str]) -> None:
        r = done[cell] = _child(*cell, timeout_s)
        with out.open("a") as f:  # one short write per line: appends do not interleave
            f.write(json.dumps(r) + "\n")

    with ThreadPoolExecutor(max(1, jobs)) as ex:
        list(ex.map(one, todo))
    return [done[c] for c in cells]


def _child(model: str, slice_name: str, timeout_s: float) -> dict:
    cmd = [sys.executable, "-m", "jobs.check_cluster", "--plan-cell", model, slice_name]
    log.info("plan cell %s x %s (timeout %ss)", model, slice_name, timeout_s)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"model": model, "slice_name": slice_name, "timed_out": True, "timeout_s": timeout_s}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode not in (0, 1) or not lines:
        return {
            "model": model,
            "slice_name": slice_name,
            "error": (p.stderr.strip().splitlines() or ["no output"])[-1],
        }
    return json.loads(lines[-1])


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f}"


def _hbm(mem: dict) -> str:
    """GiB per chip; ">= N" where the compiler refused the program and named only its need."""
    return (">= " if "compiler_error" in mem else "") + _gib(mem["total"])


def markdown(rows: list[dict]) -> str:
    """The table as docs/cluster.md shows it."""
    head = (
        "| model | slice | rows/host (global) | mesh | fits | HBM/chip GiB (of 32) "
        "| est step s | est tokens/day |\n|---|---|---|---|---|---|---|---|"
    )
    out = [head]
    for r in rows:
        m, s = r["model"], r["slice_name"]
        if r.get("timed_out") or r.get("missing") or "error" in r or "fits" not in r:
            if r.get("timed_out"):
                why = f"not compiled in {r['timeout_s']:.0f} s here"
            elif r.get("missing"):
                why = "not compiled here yet"
            else:
                why = f"error: {r.get('error') or r.get('problems')}"
            out.append(f"| {m} | {s} | | | {why}: `{cell_command(m, s)}` | | | |")
            continue
        mesh = "x".join(str(v) for v in r["mesh"].values())
        out.append(
            f"| {m} | {s} | {r['rows_per_host']} ({r['global_batch_rows']}) | {mesh} "
            f"| {'yes' if r['fits'] else '**no**'} | {_hbm(r['hbm_bytes_per_chip'])} "
            + (
                f"| {r['est_step_s']:.2f} | {r['est_tokens_per_day'] / 1e9:.1f} B |"
                if r.get("est_step_s")
                else "| - | - |"
            )
        )
    return "\n".join(out)
