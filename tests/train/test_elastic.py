"""Elastic pretraining end to end: a run loses a host for good, goes on, and grows back.

A real three-raylet Ray cluster on this machine (``tests/raycluster.py``): a head that runs the
driver and Ray Train's controller, and two "hosts", each offering one ``host_slot`` (what a TPU
host's chips are to Ray: one worker per host). ``python -m jobs.pretrain`` with
``scale.num_workers=1,2`` and the default source (the Ray Data stream, run by the workers on the
same cluster) trains 8 steps of global batches of 4 rows (2 data lanes of 2 rows):

1. 2 workers train steps 1-4 and hold at 4 (``fault.hold_steps``: checkpoint 4 final);
2. one host is SIGKILLed (its raylet and workers: no notice), never to return: Ray Train
   restarts the group with the 1 worker left, which resumes from step 4 with accum_factor 2
   (both lanes' streams restored from the checkpoint's positions);
3. it trains steps 5-6 and holds at 6; a new host joins: Ray Train's resize monitor grows the
   group back to 2, which resume from step 6 and train to 8.

The holds make the steps at which hosts go and come known, instead of racing a run that would
otherwise end first; they say nothing about how long Ray takes (printed, never asserted).
The reference is the uninterrupted run on the same stream: one process with the same 2 lanes
(``scale.num_workers=2``, accum_factor 2 throughout). Every step is logged once with the worker
count that trained it; every step trains on the reference's examples (``log_example_ids``), none
twice; the data positions the run resumed from are the reference's at those steps; the loss at
every step equals the reference's, and so do the final parameters within the data-parallel
tolerance.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from ankh.checkpoint import MANIFEST, read_meta
from tests.raycluster import LOOPBACK_ALIAS, LocalRayCluster
from tests.train.helpers import assert_same_params, pretrain_args, run_events, step_examples

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
HOST = {"host_slot": 1}
RUN = (  # the default source: the Ray Data stream
    "steps=8",
    "data.rows=2",
    # Windows of 16 examples (about 4 batches of a lane): the resumes land past the first
    # window, so a restored stream skips rows already packed, not only batches of its window.
    "data.window=16",
    "checkpoint.every=2",
    "checkpoint.keep=5",
    "checkpoint.async_save=false",
    # No held-out batches: each would be one more Ray Data read per lane at every (re)start;
    # the held-out set's independence of the worker count is test_lanes.py's.
    "source.eval_batches=0",
    "eval.curves=false",
    "log_example_ids=true",  # <run>/examples/rank<r>.jsonl: what each step trained on
)
# Ray Train knobs our config does not carry, read by the driver and passed on to its
# controller: a worker group whose placement group cannot be placed (its host just died, the
# cluster view not yet updated) is given up after 10 s, not 60 (a retry that does not count
# against max_failures).
DRIVER_ENV = {"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "10"}
# The GCS marks a node whose raylet stopped answering dead after 3 failed health checks 1 s
# apart instead of 5 checks 3 s apart (Ray's defaults); a check of a live but busy raylet still
# has 10 s to answer. Ray Train only shrinks once the node is dead.
CLUSTER_ENV = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}


def _wait(what: str, cond, driver: subprocess.Popen, logs: list[Path], timeout: float = 420):
    """Poll ``cond`` until it returns something truthy; fail with the logs' tails if the
    driver exits first or ``timeout`` passes (a hang guard, not a measured bound)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if got := cond():
            return got
        if driver.poll() is not None:
            pytest.fail(f"the run ended (rc {driver.returncode}) before {what}:\n{_tails(logs)}")
        time.sleep(0.5)
    pytest.fail(f"no {what} after {timeout}s:\n{_tails(logs)}")


def _tails(paths: list[Path], n: int = 5000) -> str:
    return "\n".join(f"--- {p}\n" + p.read_text(errors="replace")[-n:] for p in paths if p.exists())


def _resumed(run_dir: Path, workers: int, step: int) -> dict | None:
    if not (run_dir / "metrics.jsonl").exists():
        return None
    return next(
        (
            e
            for e in run_events(str(run_dir))
            if e.get("event") == "resumed" and e["workers"] == workers and e["step"] == step
        ),
        None,
    )


def _pretrain(args: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    with open(log, "wb") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "jobs.pretrain", *args],
            cwd=REPO,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


@pytest.mark.timeout(900)
def test_run_shrinks_on_a_lost_host_and_grows_back_when_one_returns(tmp_path):
    run_dir = tmp_path / "elastic"
    run_dir.mkdir()
    for step in (4, 6):
        (run_dir / f"hold-{step}").touch()
    args = pretrain_args(
        tmp_path,
        "elastic",
        *RUN,
        "scale.num_workers=1,2",
        "scale.resources={host_slot: 1}",
        "scale.resize_interval_s=2",
        "max_failures=1",  # the lost host; growing back is not a failure
        "fault.hold_steps=[4,6]",
    )
    logs = [tmp_path / "driver.log", run_dir / "logs" / "job.log"]
    ckpt = lambda s: (run_dir / "checkpoints" / str(s) / MANIFEST).exists()  # noqa: E731
    t_start = time.monotonic()
    # A host's CPU is its worker's; the workers' Ray Data reads run on the head's 2, one
    # lane's beside the other's.
    with LocalRayCluster(
        num_cpus=2, dashboard=False, token_auth=False, extra_env=CLUSTER_ENV
    ) as cluster:
        cluster.start_head()
        cluster.add_node(HOST)
        cluster.add_node(HOST)
        env = cluster.node_env() | DRIVER_ENV | {"PYTHONPATH": str(REPO)}
        address = f"--address={LOOPBACK_ALIAS}:{cluster.gcs_port}"
        driver = _pretrain([address, *args], logs[0], env)
        straight = None
        try:
            _wait("checkpoint 4 of 2 workers", lambda: ckpt(4), driver, logs)
            t0 = time.monotonic()
            first_s = t0 - t_start
            cluster.kill_node(2)  # a host gone for good, with no notice
            # The uninterrupted reference, one process with the same 2 lanes (its own local
            # Ray for the stream), while the cluster notices the loss (idle CPUs).
            ref_args = pretrain_args(tmp_path, "straight", *RUN, "scale.num_workers=2")
            straight = _pretrain(["--in-process", *ref_args], tmp_path / "straight.log")
            _wait("a resume with 1 worker", lambda: _resumed(run_dir, 1, 4), driver, logs)
            shrink_s = time.monotonic() - t0
            (run_dir / "hold-4").unlink()
            _wait("checkpoint 6 of 1 worker", lambda: ckpt(6), driver, logs)
            t0 = time.monotonic()
            cluster.add_node(HOST)  # a host returns (a new one: same resources)
            joined_s = time.monotonic() - t0
            _wait("a resume with 2 workers", lambda: _resumed(run_dir, 2, 6), driver, logs)
            grow_s = time.monotonic() - t0
            (run_dir / "hold-6").unlink()
            rc = driver.wait(timeout=420)
            run_s = time.monotonic() - t_start
            ref_rc = straight.wait(timeout=420)
        finally:
            for p in (driver, straight):
                if p is not None and p.poll() is None:
                    p.kill()
                    p.wait()
    print(
        f"\nshared machine: cluster start to checkpoint 4 {first_s:.0f} s; kill -> resumed with 1 worker {shrink_s:.0f} s; add_node -> joined "
        f"{joined_s:.0f} s -> resumed with 2 workers {grow_s:.0f} s; cluster up to run end "
        f"{run_s:.0f} s"
    )
    assert rc == 0, _tails(logs)
    assert ref_rc == 0, _tails([tmp_path / "straight.log"])

    events = run_events(str(run_dir))
    steps = [e for e in events if "event" not in e]
    assert [e["step"] for e in steps] == list(range(1, 9)), steps  # every step once
    assert [e["workers"] for e in steps] == [2, 2, 2, 2, 1, 1, 2, 2], steps
    resumed = [e for e in events if e.get("event") == "resumed"]
    got = [(e["step"], e["workers"], e["accum_factor"]) for e in resumed]
    assert got == [(4, 1, 2), (6, 2, 1)], got
    ref = tmp_path / "straight"
    for e in resumed:  # each lane's stream restarted where the uninterrupted run was then
        assert e["data"] == read_meta(str(ref / "checkpoints" / str(e["step"])))["data"], e
    _assert_same_examples(run_dir, ref)
    want = {e["step"]: e["loss"] for e in run_events(str(ref)) if "event" not in e}
    for e in steps:  # the loss curve goes on where it was, whatever the worker count
        assert abs(e["loss"] - want[e["step"]]) < 1e-4, (e["step"], e["loss"], want[e["step"]])
    assert_same_params(str(run_dir / "checkpoints" / "8"), str(ref / "checkpoints" / "8"))


def _assert_same_examples(run_dir: Path, ref: Path) -> None:
    """Across the resizes every step trained on the uninterrupted run's examples (as a set: a
    step's rows are ordered by worker, then lane), and no example twice (8 steps of 4 packed
    rows are well within the first epoch)."""
    got, want = step_examples(run_dir), step_examples(ref)
    assert sorted(got) == sorted(want) == list(range(8)), (sorted(got), sorted(want))
    for step in range(8):
        assert want[step] and sorted(got[step]) == sorted(want[step]), step
    flat = [i for ids in got.values() for i in ids]
    assert len(flat) == len(set(flat)), "an example trained twice"
