"""Shared fixtures: real proteins, a real local Ray, a real GCS emulator on loopback.

- ``data_dir``: where real data is, from the one lookup ``ankh_platform.core.samples.data_dir``
  (``ANKH_DATA_DIR``, else ``<repo>/../shared/data`` -- CI clones the repo with shared/ beside
  it -- else the bundled sample ``<repo>/data``; never skips). Module-level helpers call the
  functions of ``ankh_platform.core.samples`` directly.
- ``protein_parquet``: a Parquet file/dir with ``id`` and ``sequence`` columns (real UniProt
  proteins): ``samples.protein_parquet()``. ``bundled_fasta``: the bundled sample as FASTA.gz.
- ``ray_local``: a small local Ray (2 CPUs, 300 MB object store, loopback only, through
  ``ankh_platform.core.runtime.init_ray``), shut down after the module; the one way tests start
  an in-process Ray (multi-node tests use ``tests/raycluster.py``'s real ``ray start``).
- ``gcs_emulator``: ``gcp-storage-emulator`` on a free 127.0.0.1 port for the session, with
  ``STORAGE_EMULATOR_HOST`` set and applied by ``ankh.storage.apply_emulator_env``; yields its
  URL. ``gcs_bucket`` makes a fresh bucket in it and yields ``gs://<name>``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from ankh import storage
from ankh_platform.core import samples

REPO = samples.repo_root()
# gcsfs reads this at import; the emulator has no hierarchical-namespace API. Set before any
# test imports gcsfs or starts Ray (Ray workers inherit the environment).
os.environ.setdefault(storage.HNS_VAR, "false")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return samples.data_dir()


@pytest.fixture(scope="session")
def protein_parquet() -> Path:
    """Real proteins (id, sequence): the shared 5,000-row sample or the bundled shards."""
    return samples.protein_parquet()


@pytest.fixture(scope="session")
def bundled_fasta() -> Path:
    return samples.bundled_fasta()


@pytest.fixture(scope="module")
def ray_local(request):
    """A small local Ray for this module, started on loopback by the platform's ``init_ray``
    (reuses one already running, then leaves it be).

    A test module that needs variables in every Ray worker's environment (Serve replicas read
    their bearer token from it) sets ``RAY_WORKER_ENV = {...}``: they are set before Ray starts
    (workers inherit the driver's environment) and restored after it stops.
    """
    import ray

    from ankh_platform.core.runtime import init_ray

    started = not ray.is_initialized()
    with pytest.MonkeyPatch.context() as mp:  # restores the environment after the module
        for k, v in getattr(request.module, "RAY_WORKER_ENV", {}).items():
            mp.setenv(k, v)
        # init_ray sets this loopback switch in os.environ; undo it after the module, or the
        # extra raylets of tests/raycluster.py (which copy os.environ) would refuse to join.
        loopback = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
        mp.setenv(loopback, os.environ.get(loopback, "0"))
        if started:
            init_ray(
                num_cpus=2,
                object_store_memory=300_000_000,
                log_to_driver=False,
                configure_logging=False,
            )
        try:
            import ray.data

            ray.data.DataContext.get_current().enable_progress_bars = False
            yield ray
        finally:
            if started:
                ray.shutdown()


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gcp-storage-emulator exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"gcp-storage-emulator did not listen on 127.0.0.1:{port} in {timeout}s")


@pytest.fixture(scope="session")
def gcs_emulator():
    """URL of a session-wide in-memory GCS emulator on loopback (env set while it runs)."""
    port = free_port()
    proc = subprocess.Popen(
        # tests/gcs_emulator.py = the emulator with GCS object generations fixed (Orbax needs them)
        [
            sys.executable,
            str(REPO / "tests" / "gcs_emulator.py"),
            "start",
            "--host=127.0.0.1",
            f"--port={port}",
            "--in-memory",
            "-q",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    old = {k: os.environ.get(k) for k in (storage.EMULATOR_VAR, storage.TENSORSTORE_VAR)}
    try:
        _wait_port(port, proc)
        os.environ[storage.EMULATOR_VAR] = url
        storage.apply_emulator_env()
        yield url
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def gcs_bucket(gcs_emulator: str) -> str:
    """A fresh, empty bucket in the emulator: ``gs://<name>``."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    storage.gcs_filesystem().mkdir(name)
    return f"gs://{name}"
