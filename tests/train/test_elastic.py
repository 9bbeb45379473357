"""Elastic training on a real multi-raylet Ray cluster: ``scale.num_workers=1,2`` on two
"hosts" (raylets offering one ``host`` resource each), one host killed for good mid-run, the run
going on with one worker, the host coming back, the run growing back to two -- every step
logged once, and the final parameters those of a run that never lost a host.

Data lanes (``ankh_platform.train.lanes``) make this possible: the run's global batch is always
two lanes, so one worker accumulates two micro-batches where two workers take one each.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.train.helpers import pretrain_config

STEPS = 60  # the one-worker phase must outlast a host's return on a loaded machine
ELASTIC = (
    f"steps={STEPS}",
    "source.kind=local",
    "data.rows=2",
    "data.max_residues=32",
    "checkpoint.every=2",
    "checkpoint.keep=20",
    "scale.num_workers=1,2",
    "scale.cpus_per_worker=0.5",
    "scale.resources={host: 1}",
    "scale.resize_interval_s=5",
    "max_failures=4",
)


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def _kill_for_good(cluster, sid: int) -> None:
    """SIGKILL a raylet and every process of its session (its workers): a host gone with no
    notice (a preemption's SIGTERM would give the run a save first)."""
    from tests.loopback import session_members

    for pid in session_members(sid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while session_members(sid) and time.monotonic() < deadline:
        for p in cluster._procs:
            p.poll()
        time.sleep(0.2)
    # Forget its `ray start` (the cluster's start-up checks would take its exit as a failed
    # start); its session stays listed, so `stop` still sweeps it.
    i = [p.pid for p in cluster._procs].index(sid)
    cluster._procs.pop(i)
    cluster._logs.pop(i)


def _steps_ran(run_dir: Path) -> list[tuple[int, int]]:
    return [(r["step"], r["workers"]) for r in _records(run_dir) if "loss" in r]


class _Host:
    """The test's hand on the cluster, from a thread beside the driver (which must keep the
    main thread: it handles SIGTERM): once step 3 ran on two workers, kill the second host for
    good; once a step ran on one worker, bring a host back."""

    def __init__(self, cluster, sid: int, run_dir: Path):
        self.cluster, self.sid, self.run_dir = cluster, sid, run_dir
        self.done, self.error, self.log = threading.Event(), None, []
        self.thread = threading.Thread(target=self._act, daemon=True)

    def _until(self, pred, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if self.done.is_set() or time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {timeout} s: {_steps_ran(self.run_dir)}")
            time.sleep(0.5)

    def _act(self) -> None:
        try:
            ran = lambda: _steps_ran(self.run_dir)  # noqa: E731
            # Once a checkpoint is final (its manifest written) after a step on two workers.
            saved = lambda: [  # noqa: E731
                int(p.parent.name)
                for p in (self.run_dir / "checkpoints").glob("*/ankh_manifest.json")
            ]
            self._until(
                lambda: any(w == 2 for _, w in ran()) and any(s >= 2 for s in saved()),
                "a final checkpoint on two workers",
                500,
            )
            _kill_for_good(self.cluster, self.sid)
            self.log.append(("killed", max(s for s, _ in ran())))
            self._until(lambda: any(w == 1 for _, w in ran()), "a step on one worker", 400)
            self.cluster.add_node({"host": 1}, num_cpus=1)
            self.log.append(("added", max(s for s, _ in ran())))
        except BaseException as e:  # re-raised by the test
            self.error = e


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_elastic_run_shrinks_to_one_worker_and_grows_back(tmp_path, monkeypatch):
    import ray

    from ankh_platform.train.job import run, run_local_process
    from tests.raycluster import LocalRayCluster
    from tests.train.test_preemption import _assert_same_params

    # A dead raylet is noticed in ~5-15 s instead of ~30-60 s (GCS health checks; not faster:
    # on a loaded machine a slow but live raylet must not be declared dead).
    fast = {
        "RAY_health_check_period_ms": "1000",
        "RAY_health_check_timeout_ms": "3000",
        "RAY_health_check_failure_threshold": "5",
        # The driver's loopback switch (below) must not reach the raylets: it forbids joining.
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",
    }
    for k in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # a loopback-only test cluster
    # The driver joins on loopback: without this Ray rewrites 127.0.0.1 to the machine's IP
    # (tests/raycluster.py's module doc), where the cluster does not listen.
    from ray._private import ray_constants

    monkeypatch.setenv(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, "0")
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)
    run_dir = tmp_path / "elastic"
    cfg = pretrain_config(tmp_path, "elastic", *ELASTIC)
    with LocalRayCluster(num_cpus=1, token_auth=False, dashboard=False, extra_env=fast) as c:
        c.start_head()
        c.add_node({"host": 1}, num_cpus=1)
        c.add_node({"host": 1}, num_cpus=1)
        host = _Host(c, c.sids[-1], run_dir)  # the second host's session
        host.thread.start()
        try:
            summary = run(cfg, ray_address=c.gcs_address)
        finally:
            host.done.set()
            host.thread.join(60)
            ray.shutdown()
    if host.error is not None:
        raise host.error
    assert summary["step"] == STEPS and [a for a, _ in host.log] == ["killed", "added"]

    ran = _steps_ran(run_dir)
    assert [s for s, _ in ran] == list(range(1, STEPS + 1)), ran  # every step logged once
    workers = [w for _, w in ran]
    first_one, last_one = workers.index(1), len(workers) - 1 - workers[::-1].index(1)
    assert set(workers[:first_one]) == {2} and set(workers[first_one : last_one + 1]) == {1}
    assert set(workers[last_one + 1 :]) == {2}, ran
    resumed = [r for r in _records(run_dir) if r.get("event") == "resumed"]
    assert [r["workers"] for r in resumed] == [1, 2], resumed
    assert [r["accum_factor"] for r in resumed] == [2, 1]

    # The uninterrupted reference: the same run's global batches in one process (both lanes,
    # two micro-batches a step); a two-worker run equals it within data-parallel tolerance
    # (tests/train/test_pretrain_ray.py).
    ref = run_local_process(pretrain_config(tmp_path, "ref", *ELASTIC))
    losses = {r["step"]: r["loss"] for r in _records(run_dir) if "loss" in r}
    ref_losses = {r["step"]: r["loss"] for r in _records(Path(ref["run_dir"])) if "loss" in r}
    np.testing.assert_allclose(
        [losses[s] for s in range(1, STEPS + 1)],
        [ref_losses[s] for s in range(1, STEPS + 1)],
        rtol=1e-4,
    )  # a continuous loss curve: the one a run that never lost a host draws
    _assert_same_params(summary["checkpoint_dir"], ref["checkpoint_dir"], 2e-5)
