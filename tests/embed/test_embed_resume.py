"""``jobs.embed`` killed in the middle of a shard (one FASTA file) resumes where it stopped:
finished part files survive, the re-run embeds only the remaining rows, and the merged shard
holds exactly one row per id, equal to an uninterrupted run's."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from ankh_platform.data.fasta import read_fasta
from ankh_platform.embed import outputs
from ankh_platform.embed.job import EmbedJobConfig, run

REPO = Path(__file__).resolve().parents[2]
ARGS = [
    "max_length=256",
    "window_overlap=32",
    "batch_tokens=1024",
    "group_rows=16",
    "write_rows=16",
    "block_bytes=20000",
]


def _fasta(path: Path, bundled_fasta: Path, n: int) -> list[str]:
    """A single FASTA of ``n`` real proteins plus a duplicate id and a bad record; its ids."""
    recs = list(read_fasta(str(bundled_fasta)))[:n]
    recs += [(recs[3][0], recs[4][1]), ("BAD1", "MKTJJQ")]
    path.write_text("".join(f">{i} desc\n{s}\n" for i, s in recs))
    return [i for i, _ in recs]


def _table(out: Path) -> dict:
    t = pq.read_table(out / "single.parquet").to_pydict()
    return dict(zip(t["id"], t["embedding"]))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_killed_mid_shard_resumes_only_the_remainder(tmp_path, bundled_fasta, ray_local):
    inp, out = tmp_path / "single.fasta", tmp_path / "out"
    ids = _fasta(inp, bundled_fasta, 240)
    env = dict(os.environ, RAY_ADDRESS=ray_local.get_runtime_context().gcs_address)
    parts = out / outputs.PARTS / "single"
    with open(tmp_path / "driver.log", "wb") as log:
        driver = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jobs.embed",
                "--model",
                "tiny",
                "--input",
                str(inp),
                "--output",
                str(out),
                *ARGS,
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.time() + 600
            while (
                len(list(parts.glob("rows-*.parquet"))) < 3
                and driver.poll() is None
                and time.time() < deadline
            ):
                time.sleep(0.05)
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            driver.send_signal(signal.SIGKILL)  # mid-shard: some parts written, no merge
        finally:
            driver.kill()
            driver.wait()
    assert not (out / "single.parquet").exists() and not (out / "_summary.json").exists()
    time.sleep(2)  # a write task of the killed driver may still land; it only adds done rows
    done = outputs.done_rows(str(out), "single")
    assert 0 < len(done) < len(ids), f"kill did not land mid-shard: {len(done)} rows done"

    cfg = dataclasses.replace(
        EmbedJobConfig(checkpoint="tiny", input=str(inp), output=str(out)),
        max_length=256,
        window_overlap=32,
        batch_tokens=1024,
        group_rows=16,
        write_rows=16,
        block_bytes=20000,
    )
    s = run(cfg)
    # every input row exactly once: resumed from parts, or computed by this run -- never both
    assert s["rows_resumed"] >= len(done) and s["rows_resumed"] + s["rows_this_run"] == len(ids)
    assert s["rows_this_run"] < len(ids)
    assert not (out / outputs.PARTS).exists()
    got = _table(out)
    assert sorted(got) == sorted(set(ids) - {"BAD1"})  # one row per id
    summary = json.loads((out / "_summary.json").read_text())
    reasons = {x["id"]: x["reason"] for x in summary["invalid"]}
    assert set(reasons) == {"BAD1", ids[3]} and "duplicate id" in reasons[ids[3]]
    assert len(got) + len(reasons) == len(ids)

    clean = run(dataclasses.replace(cfg, output=str(tmp_path / "clean")))
    assert clean["rows_resumed"] == 0 and clean["rows_this_run"] == len(ids)
    want = _table(tmp_path / "clean")
    assert sorted(want) == sorted(got)
    worst = max(float(np.abs(np.asarray(got[i]) - np.asarray(want[i])).max()) for i in got)
    assert worst < 1e-5, worst
