"""End-to-end pretraining proofs with real Ray Train workers (real JAX processes, gloo on CPU).

All slow: each run compiles and trains a (tiny) model. Runs share shapes, so the persistent XLA
cache (``compile_cache``) makes the later ones cheaper.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

import ankh
from tests.train.helpers import (
    assert_same_params,
    local_source,
    pretrain_config,
    run_events,
    step_examples,
)

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process, no Ray: 8 steps of global batches of 4, checkpoints at 4 and 8."""
    from ankh_platform.train.job import run_local_process

    tmp = tmp_path_factory.mktemp("ref")
    cfg = pretrain_config(
        tmp,
        "ref",
        "source.kind=local",
        "steps=8",
        "checkpoint.every=4",
        "checkpoint.keep=5",
        "log_example_ids=true",
        "data.rows=4",
    )
    return run_local_process(cfg)


@pytest.mark.timeout(900)
def test_two_workers_data_parallel_equal_one_process(tmp_path, reference, ray_local):
    from ankh_platform.train.job import run

    # Stops at step 4 of the reference's 8-step schedule: the same LR at every step (with the
    # run-length default, total_steps=0, a 4-step run would decay twice as fast).
    cfg = pretrain_config(
        tmp_path,
        "dp",
        "source.kind=local",
        "steps=4",
        "checkpoint.every=4",
        "scale.num_workers=2",
        "data.rows=2",
        "optim.total_steps=8",
    )
    summary = run(cfg)
    assert summary["step"] == 4
    assert_same_params(summary["checkpoint_dir"], f"{reference['run_dir']}/checkpoints/4")


@pytest.mark.timeout(900)
def test_killed_worker_recovers_exactly_once(tmp_path, reference, ray_local):
    from ankh_platform.train.job import run

    cfg = pretrain_config(
        tmp_path,
        "fault",
        "source.kind=local",
        "steps=8",
        "checkpoint.every=3",
        "scale.num_workers=2",
        "data.rows=2",
        "log_example_ids=true",
        "fault.kill_at_step=7",
        "fault.rank=1",
        "max_failures=2",
    )
    summary = run(cfg)
    run_dir = summary["run_dir"]
    assert Path(run_dir, "fault-injected-7").exists()  # the worker really was killed
    resumed = [e for e in run_events(run_dir) if e.get("event") == "resumed"]
    assert [e["step"] for e in resumed] in ([6], [3]), resumed
    assert_same_params(summary["checkpoint_dir"], f"{reference['run_dir']}/checkpoints/8")
    got, want = step_examples(run_dir), step_examples(reference["run_dir"])
    assert sorted(got) == list(range(8))
    for step in range(8):  # the same examples, step by step: none repeated, none skipped
        assert sorted(got[step]) == sorted(want[step]), step
    flat = [i for ids in got.values() for i in ids]
    assert len(flat) == len(set(flat)) == 8 * 4


@pytest.mark.timeout(1200)
def test_driver_restart_resumes_and_truncated_checkpoint_falls_back(tmp_path, ray_local, caplog):
    """Ray Data stream source: stop after 4 steps, restart to 6 == an uninterrupted 6-step run."""
    from ankh_platform.train.job import run, run_local_process

    args = (
        "scale.cpus_per_worker=1",
        "checkpoint.every=2",
        "checkpoint.keep=5",
        "optim.total_steps=6",
    )
    first = run(pretrain_config(tmp_path, "resume", "steps=4", *args))
    assert first["step"] == 4
    second = run(pretrain_config(tmp_path, "resume", "steps=6", *args))
    resumed = [e for e in run_events(second["run_dir"]) if e.get("event") == "resumed"]
    assert [e["step"] for e in resumed] == [4]
    straight = run_local_process(pretrain_config(tmp_path, "straight", "steps=6", *args))
    assert_same_params(second["checkpoint_dir"], straight["checkpoint_dir"])

    # Truncate a file of the newest checkpoint (6): the next run names it and resumes from 4.
    step6 = Path(second["run_dir"], "checkpoints", "6")
    victim = max(
        (p for p in (step6 / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
    )
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    third = run_local_process(pretrain_config(tmp_path, "resume", "steps=6", *args))
    resumed = [e for e in run_events(third["run_dir"]) if e.get("event") == "resumed"]
    assert [e["step"] for e in resumed][-1] == 4
    assert [p.name.split("-")[0] for p in Path(third["run_dir"], "corrupt").iterdir()] == ["6"]
    assert_same_params(third["checkpoint_dir"], straight["checkpoint_dir"])


@pytest.mark.timeout(900)
def test_ray_job_submit_trains_and_loss_falls(tmp_path):
    from tests.raycluster import LocalRayCluster

    out = tmp_path / "runs"
    with LocalRayCluster(num_cpus=2) as cluster:
        cluster.start_head()
        res = cluster.submit(
            REPO,
            [
                sys.executable,
                "-m",
                "jobs.pretrain",
                "--output",
                str(out),
                "steps=40",
                "log_every=5",
                "eval_every=0",
                "source.eval_batches=1",
                "checkpoint.every=20",
            ],
            timeout=840,
        )
    assert res.succeeded, res.output[-4000:]
    losses = [float(x) for x in re.findall(r"step \d+/40 \| loss ([0-9.]+)", res.output)]
    assert len(losses) >= 4 and losses[-1] < losses[0] - 0.5, losses
    # The job's last line names the checkpoint (ray job submit adds its own status lines after).
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", res.output)  # Ray's progress-bar cursor moves
    job_lines = [
        l.strip() for l in text.splitlines() if l.strip() and not l.startswith(("-", "Job "))
    ]
    ckpt = next(l for l in reversed(job_lines) if re.fullmatch(r"\S+/checkpoints/\d+", l))
    assert ckpt.startswith(str(out)) and ckpt.endswith("/checkpoints/40")
    assert ankh.load(ckpt).config.d_model == 64
    assert cluster.alive_pids() == []


@pytest.mark.timeout(1200)
def test_tiny_model_beats_unigram_baseline(tmp_path):
    """A few hundred steps on the bundled real proteins, validation loss vs token frequencies."""
    from ankh_platform.train.job import run_local_process

    cfg = pretrain_config(
        tmp_path,
        "quality",
        "source.kind=local",
        "steps=300",
        "data.rows=8",
        "log_every=50",
        "checkpoint.every=300",
        "source.eval_batches=8",
        "optim.warmup_steps=30",
    )
    summary = run_local_process(cfg)
    # Unigram baselines: target-token (and residue-only) frequencies of training batches,
    # scored on the same validation targets the model was scored on.
    src = local_source(rows=8, max_residues=64, eval_batches=8)
    train = [src.batch_at(k) for k in range(100)]
    counts = (
        np.bincount(np.concatenate([b["labels"][b["loss_mask"] > 0] for b in train]), minlength=144)
        + 0.5
    )
    p = counts / counts.sum()
    res = np.zeros_like(counts)
    res[3:28] = counts[3:28]
    pr = res / res.sum()
    val = src.eval_batches()
    labs = np.concatenate([b["labels"][b["loss_mask"] > 0] for b in val])
    unigram = float(-np.log(p[labs]).mean())
    rlabs = labs[(labs >= 3) & (labs <= 27)]
    unigram_res = float(-np.log(pr[rlabs]).mean())
    print(
        f"\nval_loss {summary['val_loss']:.3f} vs unigram {unigram:.3f}; residues only: "
        f"{summary['val_residue_loss']:.3f} vs amino-acid frequency {unigram_res:.3f}"
    )
    assert summary["val_loss"] < 0.75 * unigram
