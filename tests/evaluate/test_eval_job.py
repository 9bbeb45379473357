"""``python -m jobs.evaluate`` end to end on small slices of the real PDB data."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from jobs import evaluate as job

REPO = Path(__file__).resolve().parents[2]
SMALL = [
    "limits.train=16",
    "limits.valid=6",
    "limits.test=6",
    "limits.contact_max_length=120",
    "train.max_epochs=2",
    "train.patience=2",
]


@pytest.mark.timeout(600)
def test_onehot_ss3_and_contacts_reports_and_cache(tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    argv = [
        "--model",
        "onehot",
        "--task",
        "ss3",
        "--task",
        "contacts",
        "--head",
        "linear",
        "--output",
        str(out),
        f"cache_dir={cache}",
        *SMALL,
    ]
    report = job.main(argv)
    got = {(r["task"], r["checkpoint"], r["head"]) for r in report["results"]}
    assert got == {("ss3", "onehot", "linear"), ("contacts", "onehot", "linear")}
    data = json.loads((out / "results.json").read_text())
    ss3 = next(r for r in data["results"] if r["task"] == "ss3")
    assert 0.0 < ss3["test"]["q3"] <= 1.0 and len(ss3["test"]["confusion"]) == 3
    assert sum(map(sum, ss3["test"]["confusion"])) == ss3["test"]["residues"]
    assert data["tasks"]["ss3"]["sizes"] == {"train": 16, "valid": 6, "test": 6}
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert {"q3", "p_at_l5_ml", "p_at_l_ml"} <= {r["metric"] for r in rows}
    md = (out / "results.md").read_text()
    assert "| ss3 | linear | q3 |" in md and "| contacts | linear | p_at_l5_ml |" in md
    for png in ("confusion_ss3_linear.png", "contacts_contacts_linear.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    parts = sorted((cache / "onehot").glob("part-*.parquet"))
    assert parts
    # A second run embeds nothing new and reproduces every figure (seeded, cached inputs).
    again = job.main(argv[: -len(SMALL) - 1] + [f"cache_dir={cache}", *SMALL, "plots=false"])
    assert sorted((cache / "onehot").glob("part-*.parquet")) == parts
    assert [r["test"] for r in again["results"]] == [r["test"] for r in report["results"]]


def test_help_and_bad_task_errors(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "jobs.evaluate", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and "--model" in r.stdout and "limits.train" in r.stdout
    with pytest.raises(FileNotFoundError):  # --checkpoint: the old spelling of --model still works
        job.main(
            [
                "--checkpoint",
                "onehot",
                "--task",
                str(tmp_path / "missing.csv"),
                "--output",
                str(tmp_path / "o"),
            ]
        )


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_tiny_model_with_baselines_linear_and_convbert(tmp_path):
    """A real (random-init ``tiny``) Ankh encoder beside both baselines, linear + ConvBERT heads."""
    out = tmp_path / "out"
    small = [
        "limits.train=8",
        "limits.valid=4",
        "limits.test=4",
        "limits.max_length=200",
        "train.max_epochs=1",
    ]
    report = job.main(
        [
            "--model",
            "tiny",
            "--task",
            "ss3",
            "--head",
            "linear",
            "--head",
            "convbert",
            "--output",
            str(out),
            f"cache_dir={tmp_path / 'c'}",
            *small,
        ]
    )
    ckpts = {r["checkpoint"] for r in report["results"]}
    assert ckpts == {"tiny", "random:tiny", "onehot"}
    assert len(report["results"]) == 6
    assert report["embedders"]["random:tiny"]["params"] == report["embedders"]["tiny"]["params"]
    assert report["embedders"]["random:tiny"]["key"] != report["embedders"]["tiny"]["key"]
    table = (out / "results.md").read_text()
    assert "`random:tiny`" in table and "| ss3 | convbert | q3 |" in table
