"""Soak: sustained mixed load (embed, generate, score, invalid) from several clients for
minutes, one Embedder replica killed midway. No 5xx but the intended 503 + Retry-After, every
200 equal to the offline API, every invalid request a 4xx, replica memory flat (RSS within
10 % between the first sample and the end); latency percentiles printed as one JSON line.

    python -m pytest tests/serve/test_soak.py -q -s -m slow      # ANKH_SOAK_S=360 by default
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections import Counter, defaultdict

import numpy as np
import pytest

from tests.serve.helpers import SMALL, http, merge, proteins, serving, wait_healthy

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
SECONDS = float(os.environ.get("ANKH_SOAK_S", "360"))
CLIENTS = 4  # a 2-core machine: enough to keep both embed replicas and the generator busy
INVALID = [
    {"sequences": []},
    {"sequences": ["MKTJ"]},
    {"sequences": ["M" * 500]},
    {"sequences": ["MKT"], "pooling": "max"},
    {"sequences": "MKT"},
]


@pytest.fixture(scope="module")
def server(ray_local):
    cfg = merge(
        SMALL,
        {
            "checkpoint": "tiny",
            "embed": {"num_replicas": 2, "num_cpus": 0.25, "max_queued_requests": 64},
            "generate": {"num_cpus": 0.25},
        },
    )
    with serving(cfg) as url:
        wait_healthy(url)
        yield url


def _requests():
    """(route, body, expected) from the offline API of the same model (``tiny``, seed 0)."""
    import ankh

    model, seqs = ankh.load("tiny"), proteins(24, 100)
    out = []
    for k in range(8):
        batch = seqs[k * 3 : k * 3 + 1 + k % 3]
        out.append(("/v1/embed", {"sequences": batch}, model.embed(batch)))
    for k in range(3):
        prompt = [seqs[k][:20] + "<extra_id_0>" + seqs[k][30:40]]
        kw = {"max_new_tokens": 6, "do_sample": True, "seed": k}
        out.append(("/v1/generate", {"sequences": prompt, **kw}, model.generate(prompt, **kw)))
        out.append(("/v1/score", {"sequences": [seqs[k][:40]]}, model.score([seqs[k][:40]])))
    return out


def _check(route: str, body: dict, want) -> None:
    if route == "/v1/embed":
        np.testing.assert_allclose(
            np.asarray(body["embeddings"], np.float32), want, rtol=1e-5, atol=1e-6
        )
    elif route == "/v1/generate":
        assert body["outputs"] == want
    else:
        got, exp = body["scores"][0], want[0]
        np.testing.assert_allclose(got["log_likelihood"], exp["log_likelihood"], rtol=1e-4)


def _replica_pids(deployment: str) -> dict[str, int]:
    import ray

    names = [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith(f"SERVE_REPLICA::ankh#{deployment}#")
    ]
    return {
        n: ray.get(
            ray.get_actor(n, namespace="serve").__ray_call__.remote(lambda self: os.getpid())
        )
        for n in names
    }


def _rss(pids: dict[str, int]) -> dict[str, int]:
    import psutil

    return {n: psutil.Process(p).memory_info().rss for n, p in pids.items()}


def test_soak_mixed_load_with_a_replica_killed(server):
    reqs, stop_at = _requests(), time.time() + SECONDS
    lat: dict[str, list[float]] = defaultdict(list)
    counts: Counter = Counter()
    failures: list[str] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        rng = random.Random(k)
        while time.time() < stop_at:
            bad = rng.random() < 0.2
            route, body, want = (
                ("/v1/embed", rng.choice(INVALID), None) if bad else rng.choice(reqs)
            )
            t0 = time.perf_counter()
            try:
                status, headers, got = http("POST", f"{server}{route}", body, timeout=300)
            except OSError as e:  # a connection-level failure is a failure
                status, headers, got = f"conn:{type(e).__name__}", {}, None
            dt = time.perf_counter() - t0
            try:
                if bad:
                    assert isinstance(status, int) and 400 <= status < 500 and got["detail"]
                elif status == 200:
                    _check(route, got, want)
                else:
                    assert status == 503 and "retry-after" in headers, (status, got)
            except AssertionError as e:
                with lock:
                    failures.append(f"{route} {body}: {status} {str(e)[:300]}")
            with lock:
                counts[(route if not bad else "invalid", status)] += 1
                lat["invalid" if bad else route].append(dt)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    time.sleep(min(120, SECONDS / 4))  # warm: every shape compiled, caches filled
    pids = _replica_pids("Embedder") | _replica_pids("Generator")
    first = _rss(pids)
    time.sleep(max(0.0, stop_at - time.time()) / 2)
    victim = sorted(n for n in pids if "Embedder" in n)[0]
    os.kill(pids.pop(victim), signal.SIGKILL)  # the replica's worker process
    for t in threads:
        t.join(SECONDS + 600)
    assert not any(t.is_alive() for t in threads), "a client hung"
    last = _rss(pids)  # the surviving replicas
    report = {
        "seconds": SECONDS,
        "clients": CLIENTS,
        "counts": {f"{r} {s}": n for (r, s), n in sorted(counts.items(), key=str)},
        "rss_mb": {
            n.split("#", 1)[1]: [round(first[n] / 2**20), round(last[n] / 2**20)] for n in pids
        },
        "latency_ms": {
            r: {f"p{q}": round(float(np.percentile(v, q)) * 1e3, 1) for q in (50, 90, 99)}
            for r, v in sorted(lat.items())
        },
    }
    print("SOAK " + json.dumps(report))
    assert not failures, failures[:10]
    assert all(counts[(r, 200)] > 0 for r in ("/v1/embed", "/v1/generate", "/v1/score")), counts
    for n in pids:  # no growth: a leak shows as RSS rising with requests served
        assert last[n] <= first[n] * 1.10, (n, first[n], last[n])
    wait_healthy(server)
