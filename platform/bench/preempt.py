"""``python -m jobs.benchmark preempt``: the time from SIGTERM to a saved checkpoint.

    python -m jobs.benchmark preempt [--preset tiny] [--at-step 20] [key.path=value ...]

Runs ``python -m jobs.pretrain --in-process`` (the default Ray Data stream source: Ray starts
inside the run, as for a user) on the bundled sample in a temporary directory, sends it SIGTERM
once ``--at-step`` steps are logged, and times, from the signal: the checkpoint's manifest
appearing (the save is final: what a resume needs), and the process exiting. Prints one JSON
line with both, the step it stopped at, the run's own ``checkpoint_s`` (save + wait, from its
``preempted`` record) and the checkpoint's size. ``key.path=value`` settings go to the run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="jobs.benchmark preempt",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--preset", default="tiny", help="model preset (default tiny)")
    ap.add_argument("--at-step", type=int, default=20, help="signal once this step is logged")
    ap.add_argument("overrides", nargs="*", help="key.path=value settings for the run")
    return ap


def _steps(metrics: Path) -> list[dict]:
    if not metrics.exists():
        return []
    return [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ankh-preempt-") as tmp:
        run = Path(tmp, "pre")
        cmd = [sys.executable, "-m", "jobs.pretrain", "--in-process", "--output", tmp]
        cmd += ["--name", "pre", f"model={args.preset}", "steps=100000", "log_every=1"]
        cmd += ["checkpoint.every=100000", "eval.probe=false", *args.overrides]
        env = os.environ | {"JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
        log = open(Path(tmp, "run.log"), "w+")  # a file: a pipe nobody reads would fill up
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        while not any(r.get("step", 0) >= args.at_step for r in _steps(run / "metrics.jsonl")):
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the run ended first: {Path(tmp, 'run.log').read_text()[-3000:]}"
                )
            time.sleep(0.05)
        t0 = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        saved = None
        while proc.poll() is None or saved is None:
            if saved is None and list(run.glob("checkpoints/*/ankh_manifest.json")):
                saved = time.perf_counter() - t0
            if proc.poll() is not None and saved is None:
                break
            time.sleep(0.01)
        exited = time.perf_counter() - t0
        stop = next((r for r in _steps(run / "metrics.jsonl") if r.get("event") == "preempted"), {})
        step_dir = run / "checkpoints" / str(stop.get("step"))
        size = sum(p.stat().st_size for p in step_dir.rglob("*") if p.is_file())
        log.close()
    out = {
        "benchmark": "preempt",
        "preset": args.preset,
        "stopped_at_step": stop.get("step"),
        "sigterm_to_saved_s": None if saved is None else round(saved, 2),
        "sigterm_to_exit_s": round(exited, 2),
        "checkpoint_s": stop.get("checkpoint_s"),
        "checkpoint_saved": stop.get("checkpoint_saved"),
        "checkpoint_mb": round(size / 1e6, 1),
        "exit_code": proc.returncode,
    }
    print(json.dumps(out))
    return out
