"""A local Ray started by the platform listens on loopback only (secure local default)."""

import os
import subprocess
import sys

import pytest

PROBE = """
import ray
from ankh_platform.core.runtime import init_ray
init_ray(num_cpus=1, object_store_memory=100_000_000)
print("GCS", ray.get_runtime_context().gcs_address)
print("NODE", ray.util.get_node_ip_address())
ray.shutdown()
"""


@pytest.mark.timeout(240)
def test_local_ray_binds_loopback():
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    }
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        env=env,
        timeout=200,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = dict(
        line.split(" ", 1) for line in out.stdout.splitlines() if line[:4] in ("GCS ", "NODE")
    )
    assert lines["GCS"].startswith("127.0.0.1:"), out.stdout
    assert lines["NODE"] == "127.0.0.1", out.stdout


def _fake_ray(monkeypatch, failures: list[BaseException]) -> list[dict]:
    """Patch ray.init to raise ``failures`` in turn, then succeed; returns the calls' kwargs."""
    import ray
    from ray._private import ray_constants

    calls: list[dict] = []

    def fake_init(**kw):
        calls.append(kw)
        if failures:
            raise failures.pop(0)

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {})
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", ray_constants.ENABLE_RAY_CLUSTER)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    return calls


def test_local_start_timeout_is_retried(monkeypatch):
    from ankh_platform.core.runtime import init_ray

    timeout = Exception("The current node timed out during startup. This could happen ...")
    calls = _fake_ray(monkeypatch, [timeout, TimeoutError("gcs")])
    init_ray(num_cpus=1)
    assert len(calls) == 3 and all(c["num_cpus"] == 1 for c in calls)
    assert all(c["include_dashboard"] is False for c in calls)  # loopback: no dashboard port

    calls = _fake_ray(monkeypatch, [timeout] * 3)
    with pytest.raises(Exception, match="timed out during startup"):
        init_ray(num_cpus=1, start_attempts=3)
    assert len(calls) == 3


def test_other_start_errors_are_not_retried(monkeypatch):
    from ankh_platform.core.runtime import init_ray

    calls = _fake_ray(monkeypatch, [ValueError("bad object_store_memory")])
    with pytest.raises(ValueError):
        init_ray(object_store_memory=-1)
    assert len(calls) == 1
