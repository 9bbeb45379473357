"""Helpers for the Serve tests (not a test file): a real local Serve on a random loopback port."""

from __future__ import annotations

import contextlib
import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

# Small shapes: few compiles at replica start, a tiny model, fractional CPUs so that three
# deployments fit a 2-CPU local Ray.
SMALL = {
    "embed": {
        "length_buckets": [64, 128],
        "batch_tokens": 256,
        "row_growth": 4,
        "num_cpus": 0.5,
        "max_batch_size": 16,
        "max_ongoing_requests": 8,
    },
    "generate": {"num_cpus": 0.5, "warmup": False},
    "ingress": {"num_cpus": 0.25},
    "limits": {
        "max_sequences": 16,
        "max_length": 120,
        "max_new_tokens": 32,
        "max_score_residues": 256,
    },
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def proteins(n: int, max_len: int, min_len: int = 8) -> list[str]:
    """Real UniProt sequences (shared data, else the bundled sample), varied lengths."""
    import pyarrow.parquet as pq

    from ankh_platform.core.samples import protein_parquet

    seqs = pq.read_table(protein_parquet(), columns=["sequence"]).column(0).to_pylist()
    out = [
        s for s in seqs if min_len <= len(s) <= max_len and set(s) <= set("ACDEFGHIKLMNPQRSTVWY")
    ]
    return out[:n]


def http(
    method: str,
    url: str,
    body: Any = None,
    raw: bytes | None = None,
    token: str | None = None,
    timeout: float = 120,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict, Any]:
    """(status, headers, parsed JSON or text) -- never raises on an HTTP error status."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("content-type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    if token:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            status, headers, text = r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        status, headers, text = e.code, dict(e.headers), e.read().decode()
    try:
        return status, {k.lower(): v for k, v in headers.items()}, json.loads(text)
    except json.JSONDecodeError:
        return status, {k.lower(): v for k, v in headers.items()}, text


def assert_refused(base: str, route: str, body: Any, status: int, words: str) -> None:
    """A hostile request to ``route`` gets ``status`` with ``words`` in its body, and the app
    stays healthy (nothing else is affected)."""
    got, _, reply = http("POST", f"{base}{route}", body)
    assert got == status and words in str(reply), reply
    assert http("GET", f"{base}/healthz")[0] == 200


@contextlib.contextmanager
def serving(cfg: dict):
    """Serve ``build_app(cfg)`` on a free loopback port of the running Ray; yield the URL.

    Ray itself comes from the ``ray_local`` fixture (a module that needs variables in the
    replicas' environment sets ``RAY_WORKER_ENV``); Serve is shut down on exit.
    """
    import ray
    from ray import serve

    from ankh_platform.serve.app import build_app

    assert ray.is_initialized(), "serving() needs the ray_local fixture"
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(cfg), name="ankh", route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


def wait_healthy(url: str, token: str | None = None, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if http("GET", f"{url}/healthz", token=token, timeout=10)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} not healthy in {timeout}s")


def tiny_hf_dir(tmp_path_factory, name: str, seed: int) -> Path:
    """A random ``tiny`` Ankh saved as an HF directory: the checkpoint a Serve test serves."""
    import ankh

    path = tmp_path_factory.mktemp(name)
    ankh.load("tiny", seed=seed).save_hf(path)
    return path
