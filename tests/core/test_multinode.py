"""A real two-node Ray cluster on this machine: token auth, loopback only, pretraining across both.

Head (``ray start --head``) and a second raylet (``ray start --address``), each with one CPU and
its own custom resource; ``ray job submit --working-dir .`` runs ``python -m jobs.pretrain`` with
two Ray Train workers of one CPU each, so one worker must run on each node (checked through the
state API). The same submission without the token -- or with a wrong one -- is refused.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from tests.raycluster import LocalRayCluster

REPO = Path(__file__).resolve().parents[2]
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


def _pretrain_cmd(out: Path) -> list[str]:
    return [
        "python",
        "-m",
        "jobs.pretrain",
        "--config",
        "tiny",
        f"output={out}",
        "name=two-node",
        "steps=4",
        "scale.num_workers=2",
        "scale.cpus_per_worker=1",
        "scale.devices_per_worker=1",
        "source.kind=local",
        "source.eval_batches=1",
        "checkpoint.every=2",
        "checkpoint.async_save=false",
        "eval_every=0",
        "log_every=1",
        "compile_cache=",
    ]


class _ListenerWatch(threading.Thread):
    """Samples the cluster's listening sockets (training processes included) until stopped."""

    def __init__(self, cluster: LocalRayCluster) -> None:
        super().__init__(daemon=True)
        self.cluster, self.seen, self.stop = cluster, set(), threading.Event()

    def run(self) -> None:
        while not self.stop.wait(2.0):
            self.seen |= {ip for _, ip, _ in self.cluster.listening()}


def _train_worker_nodes(cluster: LocalRayCluster) -> list[str]:
    status, body = cluster.api_get("/api/v0/actors?detail=1&limit=1000")
    assert status == 200, body[:300]
    actors = json.loads(body)["data"]["result"]["result"]
    return [a["node_id"] for a in actors if a.get("class_name") == "RayTrainWorker"]


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_two_node_pretraining_with_token_auth(tmp_path):
    out = tmp_path / "runs"
    cluster = LocalRayCluster(num_cpus=1, resources={"ankh_node_a": 1})
    with cluster:
        cluster.start_head()
        cluster.add_node({"ankh_node_b": 1}, num_cpus=1)
        nodes = cluster.nodes()
        assert len(nodes) == 2 and {n["node_ip"] for n in nodes} == {"127.0.0.1"}
        custom = [n["resources_total"] for n in nodes]
        assert any("ankh_node_a" in r for r in custom) and any("ankh_node_b" in r for r in custom)
        open_ports = cluster.listening()
        assert open_ports and all(ip in LOOPBACK for _, ip, _ in open_ports), open_ports

        for token in (None, "not-the-token"):  # refused before anything runs
            denied = cluster.submit(".", _pretrain_cmd(out), token=token, cwd=REPO, timeout=180)
            assert denied.returncode != 0, denied.output[-2000:]
            assert "Authentication" in denied.output or "Forbidden" in denied.output
        assert cluster.api_get("/api/jobs/", token=None)[0] == 401
        status, jobs = cluster.api_get("/api/jobs/")
        assert status == 200 and json.loads(jobs) == []  # no job was created
        assert not out.exists()

        watch = _ListenerWatch(cluster)
        watch.start()
        try:
            res = cluster.submit(".", _pretrain_cmd(out), cwd=REPO, timeout=1000)
        finally:
            watch.stop.set()
            watch.join()
        assert res.succeeded, res.output[-5000:]
        assert watch.seen and watch.seen <= LOOPBACK, watch.seen  # JAX/Gloo/workers too
        worker_nodes = _train_worker_nodes(cluster)
        assert len(worker_nodes) == 2, worker_nodes
        assert set(worker_nodes) == {n["node_id"] for n in nodes}  # one worker on each node

    # jobs.pretrain prints the checkpoint directory as its last line (inside the job's logs).
    printed = [x.strip() for x in res.output.splitlines() if x.strip().startswith(str(out))]
    assert printed, res.output[-3000:]
    ckpt = Path(printed[-1])
    assert ckpt.is_dir(), ckpt
    assert any(p.is_file() and p.stat().st_size > 0 for p in ckpt.rglob("*"))
    assert cluster.alive_pids() == []  # every process we started is gone
