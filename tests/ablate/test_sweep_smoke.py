"""The smoke sweep end to end (slow: four tiny pretraining runs as Ray Tune trials, minutes on
2 cores): the table, equal parameter counts, one winner per group, the winner carried into the
next group -- then the same command again restores the sweep and trains nothing."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ankh.config import PRESETS
from ankh.resolve import resolve
from ankh_platform.ablate.params import param_count

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _ablate(out: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"JAX_PLATFORMS": "cpu"}
    res = subprocess.run(
        [sys.executable, "-m", "jobs.ablate", "--config", "smoke", "--output", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    return res


def _starts(sweep: Path) -> dict[str, int]:
    return {
        d.name: len((d / "ablate-starts.jsonl").read_text().splitlines())
        for d in sorted((sweep / "runs").iterdir())
    }


@pytest.mark.timeout(3000)
def test_smoke_sweep_table_winners_and_restore(tmp_path):
    res = _ablate(tmp_path)
    sweep = tmp_path / "smoke"
    assert res.stdout.strip().splitlines()[-1] == str(sweep)
    rows = list(csv.DictReader(open(sweep / "results.csv")))
    assert len(rows) == 4 and [r["group"] for r in rows] == ["0", "0", "1", "1"]
    target = param_count(PRESETS["tiny"])
    for r in rows:
        assert abs(int(r["params"]) - target) <= 0.02 * target, r
        assert 0.0 < float(r["ss3_q3"]) < 1.0 and float(r["eval_loss"]) > 0, r
    for g in ("0", "1"):
        assert sum(r["selected"] == "True" for r in rows if r["group"] == g) == 1
    data = json.loads((sweep / "results.json").read_text())
    g0, g1 = data["groups"]
    winner = next(t for t in g0["trials"] if t["selected"])
    assert all(t["config"]["data"]["mask_prob"] == winner["value"] for t in g1["trials"])
    assert all(len(t["curve"]["train"]) >= 2 for g in data["groups"] for t in g["trials"])
    # the split trial trained the solved shape (its checkpoint records it)
    split = g1["trials"][1]
    shape = resolve(split["run_dir"]).config
    assert (shape.num_layers, shape.num_decoder_layers, shape.d_ff) == (
        3,
        1,
        split["config"]["model_overrides"]["d_ff"],
    )
    # the split group's first value is group 0's winner: its run is reused, not trained again
    assert g1["trials"][0]["same_run_as"] == winner["id"]
    starts = _starts(sweep)
    assert len(starts) == 3 and set(starts.values()) == {1}, starts
    for name in ("results.md", "group-0.png", "group-1.png", "curves.png"):
        assert (sweep / name).stat().st_size > 500, name
    assert (sweep / "results.md").read_text().count("**winner**") == 2
    before = (sweep / "results.csv").read_text()

    res = _ablate(tmp_path)  # the same command: restored, nothing trains again
    assert _starts(sweep) == starts
    assert "(earlier run)" in res.stderr and res.stdout.strip().splitlines()[-1] == str(sweep)
    assert (sweep / "results.csv").read_text() == before
