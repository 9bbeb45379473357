"""``python -m jobs.benchmark device`` starts, names the device and runs its parts (tiny shapes
on CPU; on an accelerator the same command at ``base`` is the suite)."""

import json
import subprocess
import sys

import pytest

from ankh_platform.bench import device


def _suite(*args: str, timeout: float = 600) -> list[dict]:
    p = subprocess.run(
        [sys.executable, "-m", "jobs.benchmark", "device", "--preset", "tiny", "--quick", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    return [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]


def test_suite_names_the_device_and_runs_the_encoder_part():
    head, enc = _suite("--parts", "embed", "--budget-s", "200")
    assert head["benchmark"] == "device" and head["platform"] == "cpu"
    assert head["parts"] == ["embed"]
    assert enc["benchmark"] == "embed" and enc["device_kind"] == head["device_kind"]
    assert enc["dtype"] == "float32"  # the CPU default of ankh.accelerator
    assert enc["ours_tokens_per_s"] > 0 and "error" not in enc


def test_a_part_over_its_budget_reports_an_error_line():
    out, err = device._run(["embed", "--model", "tiny", "--reference", "none"], timeout=1)
    assert out is None and err.startswith("timed out")


def test_unknown_part_is_refused():
    with pytest.raises(SystemExit, match="unknown part"):
        device.main(["--parts", "embed,nope"])


@pytest.mark.slow
def test_whole_suite_at_tiny_shapes():
    lines = _suite("--budget-s", "400")
    assert [x["benchmark"] for x in lines] == ["device", "embed", "train", "generate", "embed-job"]
    assert all("error" not in x for x in lines), lines


@pytest.mark.slow
def test_learn_part_is_opt_in_and_reports_where_the_run_ended():
    # --quick caps the run at 100 steps, so the budget is slack for a loaded machine, not a length
    head, part = _suite("--parts", "learn", "--budget-s", "400")
    assert head["parts"] == ["learn"] and "learn" not in device.DEFAULT_PARTS
    assert "error" not in part, part
    assert part["benchmark"] == "learn" and 1 <= part["steps"] <= 100
    assert "below_unigram_nats" in part and "ss3_q3_vs_best_baseline" in part
