"""Shared fixtures: real proteins, a real local Ray, a real GCS emulator on loopback.

- ``shared_data_dir``: ``<repo>/../shared/data`` (CI clones the repo with shared/ beside it),
  falling back to the bundled sample ``<repo>/data`` when absent (never skips).
- ``protein_parquet``: a Parquet file/dir with a ``sequence`` column (real UniProt proteins).
- ``ray_local``: a small local Ray (2 CPUs, 300 MB object store), shut down after the module.
- ``gcs_emulator``: ``gcp-storage-emulator`` on a free 127.0.0.1 port for the session, with
  ``STORAGE_EMULATOR_HOST`` set; yields its URL. ``gcs_bucket`` makes a fresh bucket in it and
  yields ``gs://<name>``.
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

REPO = Path(__file__).resolve().parents[1]
# gcsfs reads this at import; the emulator has no hierarchical-namespace API. Set before any
# test imports gcsfs or starts Ray (Ray workers inherit the environment).
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    shared = REPO.parent / "shared" / "data"
    return shared if (shared / "uniprot_go_sample.parquet").exists() else REPO / "data"


@pytest.fixture(scope="session")
def protein_parquet(shared_data_dir: Path) -> Path:
    """Real proteins with a ``sequence`` column: the shared 5,000-row sample or the bundled one."""
    cand = shared_data_dir / "uniprot_go_sample.parquet"
    return cand if cand.exists() else REPO / "data" / "uniprot_sample" / "train"


@pytest.fixture(scope="session")
def bundled_fasta() -> Path:
    return REPO / "data" / "uniprot_sample.fasta.gz"


@pytest.fixture(scope="module")
def ray_local():
    """A small local Ray for this module (reuses one already running, then leaves it be)."""
    import ray

    started = False
    if not ray.is_initialized():
        for attempt in range(3):  # Ray's 30 s raylet start-up wait can lapse on a loaded machine
            try:
                ray.init(num_cpus=2, object_store_memory=300_000_000, include_dashboard=False,
                         log_to_driver=False, configure_logging=False)
                break
            except Exception:
                ray.shutdown()
                if attempt == 2:
                    raise
        started = True
    try:
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False
    except ImportError:
        pass
    yield ray
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
        [sys.executable, str(REPO / "tests" / "gcs_emulator.py"), "start", "--host=127.0.0.1",
         f"--port={port}", "--in-memory", "-q"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    old = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST",)}
    try:
        _wait_port(port, proc)
        os.environ["STORAGE_EMULATOR_HOST"] = url
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
    from ankh_platform.core.storage import gcs_filesystem

    name = f"test-{uuid.uuid4().hex[:12]}"
    gcs_filesystem().mkdir(name)
    return f"gs://{name}"
