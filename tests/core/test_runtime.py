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
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env,
                         timeout=200, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert out.returncode == 0, out.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines() if line[:4] in ("GCS ", "NODE"))
    assert lines["GCS"].startswith("127.0.0.1:"), out.stdout
    assert lines["NODE"] == "127.0.0.1", out.stdout
