"""Slow Serve proofs: bounded concurrent load, a replica killed under load, the CLI job (with a
second model), and generation/scoring over HTTP equal to the offline API, for the default and a
multiplexed model. Real local Serve, real HTTP, loopback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import numpy as np
import pytest

from tests.serve.helpers import (
    REPO,
    SMALL,
    free_port,
    http,
    merge,
    proteins,
    serving,
    tiny_hf_dir,
    wait_healthy,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return tiny_hf_dir(tmp_path_factory, "tiny_hf", seed=5)


@pytest.fixture(scope="module")
def b_run(tmp_path_factory):
    """A second, different model (``save_model`` layout) served on request as ``b``."""
    import ankh
    from ankh.checkpoint import save_model

    path = tmp_path_factory.mktemp("mux") / "b_run"
    save_model(ankh.load("tiny", seed=4), str(path))
    return path


@pytest.fixture(scope="module")
def server(ray_local, hf_dir, b_run):
    # Local defaults (auth off); two embedding replicas so one can be killed under load.
    cfg = merge(
        SMALL,
        {
            "checkpoint": str(hf_dir),
            "models": {"b": str(b_run)},
            "embed": {
                "num_replicas": 2,
                "max_ongoing_requests": 16,
                "max_queued_requests": 64,
                "num_cpus": 0.25,
            },
            "generate": {"num_cpus": 0.25},
        },
    )
    with serving(cfg) as url:
        yield url


def run_load(url: str, clients: int, seconds: float, during=None) -> Counter:
    """``clients`` threads posting embed requests back to back; returns status counts."""
    seqs = proteins(64, 120)
    stop_at = time.time() + seconds
    counts: Counter = Counter()
    lock = threading.Lock()

    def client(k: int) -> None:
        i = k
        while time.time() < stop_at:
            batch = [seqs[(i + j) % len(seqs)] for j in range(1 + i % 6)]
            i += 7
            try:
                status = http("POST", f"{url}/v1/embed", {"sequences": batch}, timeout=120)[0]
            except OSError as e:  # a connection-level failure is a failure, counted as such
                status = f"conn:{type(e).__name__}"
            with lock:
                counts[status] += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    if during:
        during()
    for t in threads:
        t.join(seconds + 300)
    assert not any(t.is_alive() for t in threads), "a client hung"
    print(f"load {clients} clients x {seconds}s: {dict(counts)}")  # shown with -s
    return counts


def test_bounded_concurrent_load_has_no_5xx_but_intended_503(server):
    counts = run_load(server, clients=32, seconds=30)
    assert counts[200] > 0, counts
    assert set(counts) <= {200, 503}, counts  # 503 only as back-pressure (with Retry-After)
    wait_healthy(server)


def _replicas(deployment: str) -> list[str]:
    import ray

    return sorted(
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith(f"SERVE_REPLICA::ankh#{deployment}#")
    )


def test_killed_replica_is_replaced_and_clients_see_only_transient_errors(server):
    import ray
    from ray import serve

    before = _replicas("Embedder")
    assert len(before) == 2, before
    victim = ray.get_actor(before[0], namespace="serve")
    pid = ray.get(victim.__ray_call__.remote(lambda self: os.getpid()))

    def kill_midway() -> None:
        time.sleep(5)
        os.kill(pid, signal.SIGKILL)  # the replica's worker process, not a Ray API call

    counts = run_load(server, clients=16, seconds=25, during=kill_midway)
    assert counts[200] > 0, counts
    assert set(counts) <= {200, 503}, counts  # in-flight requests on the dead replica: 503
    deadline = time.time() + 600
    while time.time() < deadline:
        now = _replicas("Embedder")
        dep = serve.status().applications["ankh"].deployments["Embedder"]
        if len(now) == 2 and before[0] not in now and dep.status == "HEALTHY":
            break
        time.sleep(2)
    else:
        raise AssertionError(f"Embedder not replaced: {_replicas('Embedder')}")
    wait_healthy(server)
    counts = run_load(server, clients=4, seconds=5)
    assert set(counts) == {200}, counts


def test_generation_and_scores_over_http_equal_offline(server, hf_dir):
    import ankh

    model = ankh.load(str(hf_dir))
    prompts = ["MKTAYIAK<extra_id_0>QISFVKSHFSRQ", "GSHMLEDPVDAFQ"]
    kw = dict(
        do_sample=True,
        temperature=1.0,
        top_k=20,
        max_new_tokens=12,
        seed=11,
        num_return_sequences=2,
    )
    status, _, body = http("POST", f"{server}/v1/generate", {"sequences": prompts, **kw})
    assert status == 200, body
    assert body["outputs"] == model.generate(prompts, **kw)
    wt = "MKTAYIAKQRQISFVKSHFSRQ"
    status, _, body = http(
        "POST",
        f"{server}/v1/score",
        {"sequences": [wt], "wild_type": wt, "mutants": ["K2R", "A4G:Y5F"]},
    )
    assert status == 200, body
    np.testing.assert_allclose(
        body["mutation_scores"], model.mutation_scores(wt, ["K2R", "A4G:Y5F"]), rtol=1e-4, atol=1e-4
    )
    (s,) = body["scores"]
    (want,) = model.score([wt])
    assert s["length"] == want["length"]
    np.testing.assert_allclose(s["pseudo_log_likelihood"], want["pseudo_log_likelihood"], rtol=1e-4)
    np.testing.assert_allclose(s["log_likelihood"], want["log_likelihood"], rtol=1e-4)


def test_multiplexed_generation_and_scores_use_the_requested_model(server, hf_dir, b_run):
    from ray import serve

    import ankh

    model = ankh.load(str(b_run))
    prompts = ["MKTAYIAK<extra_id_0>QISFVKSHFSRQ"]
    kw = dict(do_sample=True, top_k=20, max_new_tokens=12, seed=11)
    status, _, body = http(
        "POST", f"{server}/v1/generate", {"sequences": prompts, "model": "b", **kw}
    )
    assert status == 200 and body["model"] == "b", body
    assert body["outputs"] == model.generate(prompts, **kw)
    gen = serve.get_deployment_handle("Generator", app_name="ankh")
    out = gen.options(multiplexed_model_id="b").generate.remote(prompts, **kw).result()
    assert out == body["outputs"]
    wt = "MKTAYIAKQRQISFVKSHFSRQ"
    status, _, body = http(
        "POST",
        f"{server}/v1/score",
        {"sequences": [wt], "wild_type": wt, "mutants": ["K2R"], "model": "b"},
    )
    assert status == 200, body
    np.testing.assert_allclose(
        body["mutation_scores"], model.mutation_scores(wt, ["K2R"]), rtol=1e-4, atol=1e-4
    )
    (want,) = model.score([wt])
    np.testing.assert_allclose(
        body["scores"][0]["log_likelihood"], want["log_likelihood"], rtol=1e-4
    )
    loaded = gen.loaded_models.remote().result()
    assert loaded == [hf_dir.name, "b"], loaded


def test_jobs_serve_cli_binds_loopback_and_serves(hf_dir, b_run):
    import ankh

    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "jobs.serve",
        "--checkpoint",
        str(hf_dir),
        "--port",
        str(port),
        "--model",
        f"b={b_run}",
        "--num-cpus",
        "2",
        "generate.enabled=false",
        "embed.length_buckets=[64]",
        "embed.batch_tokens=128",
        "embed.num_cpus=0.5",
        "limits.max_length=60",
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        line = ""
        deadline = time.time() + 600
        while time.time() < deadline and not line.startswith("{"):
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "jobs.serve exited before printing its URL"
        info = json.loads(line)
        assert info["url"] == f"http://127.0.0.1:{port}"
        wait_healthy(info["url"])
        status, _, body = http("POST", f"{info['url']}/v1/embed", {"sequences": ["MKTAYIAK"]})
        assert status == 200 and len(body["embeddings"][0]) == 64  # no token needed locally
        status, _, body = http("POST", f"{info['url']}/v1/generate", {"sequences": ["MKT"]})
        assert status == 404 and "generate.enabled" in body["detail"]
        assert info["models"] == [hf_dir.name, "b"]  # --model b=PATH: chosen per request
        status, _, body = http(
            "POST", f"{info['url']}/v1/embed", {"sequences": ["MKTAYIAK"], "model": "b"}
        )
        assert status == 200 and body["model"] == "b", body
        np.testing.assert_allclose(
            body["embeddings"], ankh.load(str(b_run)).embed(["MKTAYIAK"]), rtol=1e-5, atol=1e-5
        )
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0
