"""Run a script in a fresh interpreter with ``n`` simulated CPU devices: JAX reads
``JAX_NUM_CPU_DEVICES`` once, when it starts, so a test that needs a mesh of several devices
cannot get one inside the pytest process. The script prints one ``RESULT <json>`` line."""

import json
import os
import subprocess
import sys

from ankh_platform.core.samples import repo_root


def run_on_devices(script: str, n: int, *args: str, timeout: float) -> dict:
    """The script's ``RESULT`` object; its stderr's tail if it failed."""
    env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(n), JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([str(repo_root()), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=repo_root(),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])
