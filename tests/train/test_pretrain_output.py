"""What ``python -m jobs.pretrain`` prints: a compact line per log step, not Ray/Orbax internals.

Before this was fixed the README's main job printed 286 lines for 300 steps, nearly all of them
Ray Train and Orbax internals; a 20-step run printed over 200. Slow: it starts Ray Train.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
SHORT = ["steps=20", "log_every=10", "eval_every=20", "checkpoint.every=20"]
STEP_LINE = re.compile(
    r"step (10|20)/20 \| loss \d+\.\d{3} \| acc \d\.\d{3} \| [\d,]+ tok/s \| ETA \w+"
)
FRAMEWORK = ("Reporting training result", "CheckpointManager", "(TrainController pid=")


def _pretrain(out: Path, *args: str) -> subprocess.CompletedProcess:
    env = os.environ | {"JAX_PLATFORMS": "cpu"}
    res = subprocess.run(
        [sys.executable, "-m", "jobs.pretrain", "--output", str(out), *args, *SHORT],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=800,
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    return res


@pytest.mark.timeout(900)
def test_default_run_prints_progress_lines_and_logs_internals_to_file(tmp_path):
    out = tmp_path / "runs"
    res = _pretrain(out)
    console = (res.stdout + res.stderr).splitlines()
    assert len(console) <= 25, "\n".join(console)
    assert sum(bool(STEP_LINE.fullmatch(line)) for line in console) == 2, res.stderr
    assert any(re.match(r"final step 20 \| val_loss \d", line) for line in console), res.stderr
    assert any(line.startswith("checkpoint step 20 -> ") for line in console), res.stderr
    assert not any(marker in res.stdout + res.stderr for marker in FRAMEWORK), res.stderr
    run_dir = out / "ankh-tiny"
    assert res.stdout.strip().splitlines()[-1] == f"{run_dir}/checkpoints/20"
    log_text = (run_dir / "logs" / "job.log").read_text()
    assert f"{run_dir}/logs/job.log" in res.stderr  # the console says where the log is
    for marker in FRAMEWORK + ("step 10 loss",):  # the worker's full metrics line too
        assert marker in log_text, marker

    # -v: the same (already finished) run again; Ray Train's own lines reach the console.
    res = _pretrain(out, "-v")
    assert "(TrainController pid=" in res.stdout + res.stderr, res.stderr[-4000:]
    assert res.stdout.strip().splitlines()[-1] == f"{run_dir}/checkpoints/20"
