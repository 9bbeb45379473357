"""SIGTERM (a TPU maintenance / preemption notice) mid-run: a checkpoint at the current step, a
clean stop, and a resume that ends with the params of a run that never stopped -- with the
default Ray Data streaming source, whose Ray start-up installs SIGTERM handlers of its own
(``ray.init``'s exit handler, absl's failure-signal handler) after ours.

The end-to-end cases are slow: each trains the tiny model (real JAX, real Orbax, real Ray Data;
the Ray cases real Ray Train workers).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import ankh
from ankh import checkpoint as ackpt
from tests.train.helpers import pretrain_args, pretrain_config

REPO = Path(__file__).resolve().parents[2]
STEPS = 16
# The default (Ray Data stream) source; a periodic save at 5, 10, 15: the kill lands after 7.
STREAM = (f"steps={STEPS}", "checkpoint.every=5", "checkpoint.keep=5")


def _events(run_dir: Path) -> list[dict]:
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _assert_same_params(a: str, b: str, atol: float = 0.0) -> None:
    pa, pb = ankh.load(a).flat_params(), ankh.load(b).flat_params()
    assert pa.keys() == pb.keys()
    worst = max(float(np.max(np.abs(pa[k] - pb[k]))) for k in pa)
    assert worst <= atol, f"max |diff| {worst} between {a} and {b}"


def _pretrain(tmp: Path, *overrides: str, name: str = "pre") -> subprocess.Popen:
    """``python -m jobs.pretrain --in-process`` (its own process, so it can be signalled; its
    stream source starts a local Ray inside it, as the command does for a user)."""
    argv = [
        sys.executable,
        "-m",
        "jobs.pretrain",
        "--in-process",
        *pretrain_args(tmp, name, *overrides),
    ]
    env = os.environ | {"JAX_PLATFORMS": "cpu"}
    return subprocess.Popen(
        argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait_for_step(proc: subprocess.Popen, metrics: Path, step: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()[-4000:]
        if metrics.exists() and any(
            json.loads(l).get("step", 0) >= step
            for l in metrics.read_text().splitlines()
            if l.strip()
        ):
            return
        time.sleep(0.05)
    raise AssertionError(f"no step {step} within {timeout} s")


def test_sigterm_notice_sets_the_flag_and_restores_the_handler():
    from ankh_platform.train import preemption

    before = signal.getsignal(signal.SIGTERM)
    for _ in range(2):  # a second run in the same process starts with the flag cleared
        with preemption.sigterm_notice():
            assert not preemption.requested()
            os.kill(os.getpid(), signal.SIGTERM)  # a real signal: the process must survive it
            deadline = time.monotonic() + 5
            while not preemption.requested() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert preemption.requested()
        assert signal.getsignal(signal.SIGTERM) is before


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> str:
    """The uninterrupted run's final checkpoint (in-process, stream source): what a preempted and
    resumed run must end with (a one-worker Ray Train run equals it bit for bit)."""
    tmp = tmp_path_factory.mktemp("straight")
    proc = _pretrain(tmp, *STREAM, name="straight")
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    return str(tmp / "straight" / "checkpoints" / str(STEPS))


def _wait_flag() -> bool:
    from ankh_platform.train import preemption

    deadline = time.monotonic() + 5
    while not preemption.requested() and time.monotonic() < deadline:
        time.sleep(0.01)
    return preemption.requested()


def test_handler_taken_over_by_a_library_is_put_back():
    """What Ray does when it starts inside a run, done here directly: ``ray.init`` sets a Python
    handler that exits; Ray's core worker sets a native one with ``sigaction`` (absl's
    failure-signal handler; here SIG_IGN, so that a lost handler fails the test, not the
    process). ``ensure`` puts ours back at both levels and a real SIGTERM sets the flag."""
    import ctypes

    from ankh_platform.train import preemption

    def ray_like_exit(signum, frame):
        raise SystemExit(signum)

    with preemption.sigterm_notice():
        signal.signal(signal.SIGTERM, ray_like_exit)
        preemption.ensure()
        assert signal.getsignal(signal.SIGTERM) is preemption._on_sigterm
        os.kill(os.getpid(), signal.SIGTERM)
        assert _wait_flag()

    with preemption.sigterm_notice():
        ignore = ctypes.create_string_buffer(256)  # sa_handler = SIG_IGN (1), no flags
        ctypes.memmove(ignore, ctypes.byref(ctypes.c_void_p(1)), ctypes.sizeof(ctypes.c_void_p))
        assert preemption._libc().sigaction(signal.SIGTERM, ignore, None) == 0
        os.kill(os.getpid(), signal.SIGTERM)  # ignored: the native handler is not ours
        assert not _wait_flag()
        preemption.ensure()
        os.kill(os.getpid(), signal.SIGTERM)
        assert _wait_flag()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigterm_to_the_driver_reaches_a_worker_process(ray_local):
    """``driver_notice`` (what ``job.run`` wraps ``trainer.fit()`` in): a real SIGTERM to the
    driver process sets the named board, and a worker in another process sees a notice that
    came from the driver (so the run ends instead of restarting)."""
    import ray

    from ankh_platform.train import preemption

    class Worker:
        """Stands in for a Ray Train worker: watches the driver's board in a process of its own."""

        def flag_after_notice(self, board: str, timeout: float) -> tuple[bool, bool]:
            from ankh_platform.train import preemption

            os.environ[preemption.NOTICE_ENV] = board
            with preemption.watch_driver():
                deadline = time.monotonic() + timeout
                while not preemption._SIGTERM.is_set() and time.monotonic() < deadline:
                    time.sleep(0.05)
            return preemption._SIGTERM.is_set(), preemption._FROM_DRIVER.is_set()

    worker = ray_local.remote(num_cpus=0)(Worker).remote()
    with preemption.driver_notice("test-board"):
        pending = worker.flag_after_notice.remote("test-board", 60)
        time.sleep(2 * preemption.POLL_S)  # time for the worker to start watching
        os.kill(os.getpid(), signal.SIGTERM)
        assert ray.get(pending, timeout=120) == (True, True)
    assert signal.getsignal(signal.SIGTERM) is not preemption._on_sigterm  # restored after


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigterm_with_the_stream_source_saves_and_resume_equals_straight_run(tmp_path, straight):
    """The issue's command: ``--in-process`` with the default stream source (Ray starts inside
    the run), SIGTERM from outside after step 7 -- between the periodic saves at 5 and 10."""
    proc = _pretrain(tmp_path, *STREAM)
    run_dir = tmp_path / "pre"
    _wait_for_step(proc, run_dir / "metrics.jsonl", 7)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-4000:]  # a clean stop, not absl's stack trace and exit
    assert "SIGTERM received at time" not in out
    stops = [e for e in _events(run_dir) if e.get("event") == "preempted"]
    assert len(stops) == 1 and stops[0]["checkpoint_saved"] is True, stops
    at = stops[0]["step"]
    assert 7 <= at < STEPS
    last_trained = max(e["step"] for e in _events(run_dir) if "loss" in e)
    assert at == last_trained  # the step it was at, not the older periodic one
    assert ackpt.list_steps(str(run_dir / "checkpoints")) == sorted(
        {5, at} | ({10} if at >= 10 else set())
    )
    assert ackpt.verify(str(run_dir / "checkpoints" / str(at))) is None
    assert "preemption checkpoint" in out and f"/checkpoints/{at} written in" in out
    assert json.loads((run_dir / "summary.json").read_text())["preempted"] is True

    # The same command again: resumes at that step and ends where the straight run ended.
    proc = _pretrain(tmp_path, *STREAM)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    assert [e["step"] for e in _events(run_dir) if e.get("event") == "resumed"] == [at]
    assert out.strip().splitlines()[-1] == f"{run_dir}/checkpoints/{STEPS}"
    _assert_same_params(str(run_dir / "checkpoints" / str(STEPS)), straight)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # two two-worker Ray Train runs (one restarted): slow on 2 cores
def test_sigterm_to_a_ray_train_worker_saves_and_run_recovers(tmp_path, ray_local):
    """Two Ray Train workers on the stream source; rank 1 gets SIGTERM at step 4 (no periodic
    save before 100): both stop at one step, save it, the worker group restarts (FailureConfig)
    and the run ends with the params of an uninterrupted two-worker run."""
    from ankh_platform.train.job import run

    # Half a CPU each: the other one runs the Ray Data reads of both workers' streams.
    steps = (
        "steps=10",
        "checkpoint.every=100",
        "scale.num_workers=2",
        "scale.cpus_per_worker=0.5",
        "data.rows=2",
    )
    reference = run(pretrain_config(tmp_path, "ref", *steps))
    summary = run(
        pretrain_config(
            tmp_path,
            "ray",
            *steps,
            "fault.kill_at_step=4",
            "fault.rank=1",
            "fault.signal=SIGTERM",
            "max_failures=1",
        )
    )
    run_dir = Path(summary["run_dir"])
    assert (run_dir / "fault-injected-4").exists()
    stops = [e for e in _events(run_dir) if e.get("event") == "preempted"]
    assert len(stops) == 1 and stops[0]["checkpoint_saved"] is True, stops
    at = stops[0]["step"]
    assert 4 < at < 10  # after the signalled step (the handler runs on the actor's main thread)
    assert [e["step"] for e in _events(run_dir) if e.get("event") == "resumed"] == [at]
    assert summary["step"] == 10 and not summary.get("preempted")
    _assert_same_params(summary["checkpoint_dir"], reference["checkpoint_dir"], atol=2e-5)


def _job(cluster, *args: str, timeout: float = 120) -> str:
    """``ray job <args>`` against ``cluster`` (its token, its dashboard); returns the output."""
    from tests.raycluster import RAY_BIN

    out = subprocess.run(
        [RAY_BIN, "job", args[0], f"--address={cluster.dashboard_url}", *args[1:]],
        env=cluster.client_env(),
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    return out.stdout + out.stderr


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_ray_job_stop_saves_the_current_step_and_resubmit_resumes(tmp_path, straight):
    """``ray job stop`` (SIGTERM to the driver of ``ray job submit``) after step 7: the driver
    tells the workers, they save that step and the job ends (no Ray Train restart); the same
    command submitted again resumes there and ends with the uninterrupted run's params."""
    from tests.raycluster import LocalRayCluster

    entry = [sys.executable, "-m", "jobs.pretrain", *pretrain_args(tmp_path, "pre", *STREAM)]
    # The supervisor's SIGKILL comes RAY_JOB_STOP_WAIT_TIME_S after the SIGTERM (default 3 s).
    env = json.dumps({"env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": "120"}})
    run_dir = tmp_path / "pre"
    with LocalRayCluster(num_cpus=2) as cluster:
        cluster.start_head()
        _job(
            cluster,
            "submit",
            "--no-wait",
            "--submission-id=pre1",
            f"--runtime-env-json={env}",
            f"--working-dir={REPO}",
            "--",
            *entry,
        )
        deadline = time.monotonic() + 600
        while not (run_dir / "metrics.jsonl").exists() or not any(
            json.loads(l).get("step", 0) >= 7
            for l in (run_dir / "metrics.jsonl").read_text().splitlines()
            if l.strip()
        ):
            assert time.monotonic() < deadline, _job(cluster, "logs", "pre1")[-4000:]
            time.sleep(0.2)
        _job(cluster, "stop", "pre1", timeout=300)
        logs = _job(cluster, "logs", "pre1")
        assert "stopped" in _job(cluster, "status", "pre1").lower()
        stops = [e for e in _events(run_dir) if e.get("event") == "preempted"]
        assert len(stops) == 1 and stops[0]["checkpoint_saved"] is True, (stops, logs[-4000:])
        at = stops[0]["step"]
        assert 7 <= at < STEPS
        assert at == max(e["step"] for e in _events(run_dir) if "loss" in e)
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["preempted"] is True and summary["notice"] == "driver"
        assert ackpt.verify(str(run_dir / "checkpoints" / str(at))) is None

        res = cluster.submit(REPO, entry, timeout=600)
    assert res.succeeded, res.output[-4000:]
    assert [e["step"] for e in _events(run_dir) if e.get("event") == "resumed"] == [at]
    _assert_same_params(str(run_dir / "checkpoints" / str(STEPS)), straight)
