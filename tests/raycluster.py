"""A real local Ray cluster started with the ``ray`` CLI, for tests (a helper, not a test file).

``LocalRayCluster`` runs ``ray start --head`` (and optionally more raylets with
``ray start --address ...``) on loopback only, with token authentication on, random free
ports and a private ``--temp-dir``; ``submit`` runs ``ray job submit --working-dir ...``;
``stop`` ends every process the cluster started and nothing else.

Loopback on Linux needs two Ray-specific moves (ray-project/ray#59110):
- Ray's CLI rewrites a literal ``127.0.0.1`` node IP / ``--address`` to the machine's routable
  IP, and its gRPC servers then listen on all interfaces. The head therefore runs with
  ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, which makes Ray pick the loopback IP as node IP
  (Ray then binds GCS/raylet/worker gRPC to 127.0.0.1 only).
- That variable also forbids ``ray start --address`` (the multi-node path), so extra raylets
  join through ``127.1:<gcs port>`` -- the same loopback address, spelled so that Ray does not
  rewrite it -- with ``GRPC_DNS_RESOLVER=native`` so gRPC resolves it with getaddrinfo. Their
  node IP is then 127.0.0.1 too, so they bind to loopback as well.

Processes: each ``ray start`` runs in a session of its own, and ``stop`` signals exactly the
members of those sessions (``tests/loopback.py``, with the free-port helpers).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.loopback import (
    LOOPBACK,
    die_with_parent,
    free_port_range,
    free_ports,
    session_members,
)

log = logging.getLogger(__name__)
LOOPBACK_ALIAS = "127.1"  # == 127.0.0.1, but not rewritten by Ray's address canonicalisation
_AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
RAY_BIN = (
    str(Path(sys.executable).with_name("ray"))
    if Path(sys.executable).with_name("ray").exists()
    else (shutil.which("ray") or "ray")
)


class StartExited(RuntimeError):
    """A `ray start` process exited before its node came up."""


@dataclass
class SubmitResult:
    returncode: int
    output: str  # stdout + stderr of `ray job submit` (includes the job's logs)

    @property
    def succeeded(self) -> bool:
        return self.returncode == 0 and "succeeded" in self.output


@dataclass
class LocalRayCluster:
    """A head node (plus optional raylets) on 127.0.0.1 with token auth; use as a context manager."""

    num_cpus: int = 1
    object_store_memory: int = 80_000_000
    resources: Mapping[str, float] = field(default_factory=dict)
    token_auth: bool = True
    extra_env: Mapping[str, str] = field(default_factory=dict)
    # False: no dashboard (lighter on a loaded machine; no `ray job`, nodes read from the GCS).
    dashboard: bool = True
    root: Path = field(init=False)
    token: str = field(init=False)
    gcs_port: int = field(init=False, default=0)
    dashboard_port: int = field(init=False, default=0)
    _procs: list[subprocess.Popen] = field(init=False, default_factory=list)
    _logs: list[Path] = field(init=False, default_factory=list)
    sids: list[int] = field(init=False, default_factory=list)  # one session per `ray start`

    def __post_init__(self) -> None:
        # Short path: Ray's unix sockets live under it (108-byte limit on socket paths).
        self.root = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))
        self.token = secrets.token_hex(24)
        atexit.register(self.stop)

    # -- environment -----------------------------------------------------------------------
    def _clean_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _AUTH_VARS and k != "RAY_ADDRESS"}
        env.update(RAY_USAGE_STATS_ENABLED="0", GRPC_DNS_RESOLVER="native", PYTHONUNBUFFERED="1")
        return env

    def node_env(self) -> dict[str, str]:
        env = self._clean_env()
        if self.token_auth:
            # The token lives only in these processes' environment: highest precedence in Ray,
            # and nothing is written to the shared ~/.ray/auth_token.
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token)
        else:
            env["RAY_AUTH_MODE"] = "disabled"
        autoscaler_metrics, dashboard_metrics = free_ports(2)
        env.update(
            AUTOSCALER_METRIC_PORT=str(autoscaler_metrics),
            DASHBOARD_METRIC_PORT=str(dashboard_metrics),
        )
        env.update(self.extra_env)
        return env

    def client_env(self, token: bool | str | None = True) -> dict[str, str]:
        """Env for a CLI client: ``True`` = the cluster's token, ``None`` = none, str = that one."""
        env = self._clean_env()
        if token is None:
            env["RAY_AUTH_MODE"] = "disabled"
        else:
            env.update(
                RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token if token is True else str(token)
            )
        return env

    @property
    def dashboard_url(self) -> str:
        return f"http://{LOOPBACK}:{self.dashboard_port}"

    # -- start -----------------------------------------------------------------------------
    def _ports_args(self) -> list[str]:
        nm, om, rte, agent_http, agent_grpc, metrics = free_ports(6)
        lo, hi = free_port_range()
        return [
            f"--node-manager-port={nm}",
            f"--object-manager-port={om}",
            f"--runtime-env-agent-port={rte}",
            f"--dashboard-agent-listen-port={agent_http}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--metrics-export-port={metrics}",
            f"--min-worker-port={lo}",
            f"--max-worker-port={hi}",
        ]

    def _launch(
        self,
        name: str,
        args: list[str],
        env: dict[str, str],
        resources: Mapping[str, float],
        num_cpus: int,
    ) -> None:
        temp_dir = self.root / name
        temp_dir.mkdir()
        log = self.root / f"{name}.log"
        cmd = [
            RAY_BIN,
            "start",
            "--block",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
            f"--num-cpus={num_cpus}",
            f"--object-store-memory={self.object_store_memory}",
            f"--resources={json.dumps(dict(resources))}",
            *args,
            *self._ports_args(),
        ]
        with open(log, "wb") as fh:
            proc = subprocess.Popen(
                cmd,
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.root,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        self._procs.append(proc)
        self._logs.append(log)
        self.sids.append(proc.pid)  # start_new_session: session id == pid of `ray start`

    def start_head(self, timeout: float = 300) -> LocalRayCluster:
        def make() -> tuple[list[str], dict[str, str]]:
            self.gcs_port, self.dashboard_port, client_port = free_ports(3)
            env = self.node_env()
            env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # node IP := loopback (module doc)
            return [
                "--head",
                f"--port={self.gcs_port}",
                f"--include-dashboard={str(self.dashboard).lower()}",
                f"--dashboard-host={LOOPBACK}",
                f"--dashboard-port={self.dashboard_port}",
                f"--ray-client-server-port={client_port}",
            ], env

        self._start("head", make, self.resources, self.num_cpus, 1, timeout)
        return self

    def add_node(
        self, resources: Mapping[str, float], num_cpus: int = 1, timeout: float = 300
    ) -> None:
        """Start one more raylet (``ray start --address``) that joins this head."""
        n = len(self._procs)  # nodes up now (a test may have forgotten one it killed)
        make = lambda: ([f"--address={LOOPBACK_ALIAS}:{self.gcs_port}"], self.node_env())  # noqa: E731
        self._start(f"node{len(self.sids)}", make, resources, num_cpus, n + 1, timeout)

    def _start(
        self,
        name: str,
        make,
        resources: Mapping[str, float],
        num_cpus: int,
        n_nodes: int,
        timeout: float,
        attempts: int = 3,
    ) -> None:
        """Launch and wait for ``n_nodes`` alive. Retried because ``ray start`` gives a raylet a
        hard-coded 30 s to register, which a heavily loaded machine can exceed."""
        for attempt in range(1, attempts + 1):
            args, env = make()
            self._launch(
                name if attempt == 1 else f"{name}-try{attempt}", args, env, resources, num_cpus
            )
            try:
                self.wait_for_nodes(n_nodes, timeout)
                return
            except StartExited as e:
                if attempt == attempts:
                    raise
                log.warning(
                    "`ray start` for %s exited during startup, retrying: %s", name, str(e)[-300:]
                )
                self._kill_sessions([self.sids[-1]])
                self._procs.pop().poll()
                self._logs.pop()

    # -- queries ---------------------------------------------------------------------------
    def api_get(self, path: str, token: bool | str | None = True) -> tuple[int, str]:
        """GET a dashboard path; returns (HTTP status, body)."""
        req = urllib.request.Request(self.dashboard_url + path)
        if token is not None:
            req.add_header("Authorization", f"Bearer {self.token if token is True else token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    @property
    def gcs_address(self) -> str:
        return f"{LOOPBACK}:{self.gcs_port}"

    def nodes(self) -> list[dict]:
        if not self.dashboard:  # straight from the GCS: [{"state": "ALIVE" | "DEAD", ...}]
            from ray._private.services import _get_gcs_client_options
            from ray._private.state import GlobalState
            from ray.exceptions import RaySystemError

            state = GlobalState()
            try:
                state._initialize_global_state(_get_gcs_client_options(self.gcs_address))
                return [
                    {"state": "ALIVE" if n["Alive"] else "DEAD", **n} for n in state.node_table()
                ]
            except RaySystemError as e:  # the GCS is not up (yet)
                raise RuntimeError(str(e)) from e
            finally:
                state.disconnect()
        status, body = self.api_get("/api/v0/nodes?detail=1")
        if status != 200:
            raise RuntimeError(f"/api/v0/nodes -> {status}: {body[:200]}")
        return json.loads(body)["data"]["result"]["result"]

    def wait_for_nodes(self, n: int, timeout: float) -> list[dict]:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            for proc, log in zip(self._procs, self._logs):
                if proc.poll() is not None:
                    raise StartExited(
                        f"`ray start` exited ({proc.returncode}):\n{self.log_tail(log)}"
                    )
            try:
                alive = [x for x in self.nodes() if x["state"] == "ALIVE"]
                if len(alive) >= n:
                    return alive
            except (OSError, RuntimeError, KeyError, ValueError) as e:
                last = e
            time.sleep(1.0)
        raise TimeoutError(
            f"{n} Ray node(s) not alive after {timeout}s ({last}):\n"
            + "\n".join(self.log_tail(p) for p in self._logs)
        )

    @staticmethod
    def log_tail(path: Path, n: int = 3000) -> str:
        try:
            return path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    # -- jobs ------------------------------------------------------------------------------
    def submit(
        self,
        working_dir: str | os.PathLike,
        entrypoint: Sequence[str],
        env: Mapping[str, str] | None = None,
        token: bool | str | None = True,
        timeout: float = 600,
        cwd: str | os.PathLike | None = None,
    ) -> SubmitResult:
        """``ray job submit --working-dir <dir> -- <entrypoint>`` (run in ``cwd``, so ``"."``
        works); waits for the job to end. ``token`` as in ``client_env``."""
        cmd = [
            RAY_BIN,
            "job",
            "submit",
            f"--address={self.dashboard_url}",
            f"--working-dir={working_dir}",
        ]
        if env:
            cmd.append(f"--runtime-env-json={json.dumps({'env_vars': dict(env)})}")
        cmd += ["--", *entrypoint]
        proc = subprocess.run(
            cmd,
            env=self.client_env(token),
            cwd=cwd or self.root,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        return SubmitResult(proc.returncode, proc.stdout)

    # -- stop ------------------------------------------------------------------------------
    def stop(self, grace: float = 8.0) -> None:
        """SIGTERM then SIGKILL every process in the sessions we created; remove the temp dir."""
        self._kill_sessions(list(self.sids), grace)
        for p in self._procs:
            p.poll()
        self._procs.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    def _kill_sessions(self, sids: list[int], grace: float = 8.0) -> None:
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            for pid in [m for sid in reversed(sids) for m in session_members(sid)]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and any(session_members(s) for s in sids):
                for p in self._procs:
                    p.poll()  # reap our direct children
                time.sleep(0.2)

    def kill_node(self, index: int) -> None:
        """SIGKILL every process of node ``index`` (0 = head, in start order): a host lost with
        no notice. The node is forgotten (``add_node`` then starts a new one beside the rest)."""
        sid = self.sids[index]
        proc = next(p for p in self._procs if p.pid == sid)
        self._kill_sessions([sid], grace=0.0)
        proc.wait(timeout=30)
        i = self._procs.index(proc)
        del self._procs[i], self._logs[i]

    def alive_pids(self) -> list[int]:
        """Live processes this cluster started (empty after ``stop``)."""
        return [m for sid in self.sids for m in session_members(sid)]

    def listening(self) -> list[tuple[int, str, int]]:
        """(pid, ip, port) of every TCP socket our processes listen on."""
        import psutil

        out = []
        for pid in self.alive_pids():
            try:
                conns = psutil.Process(pid).net_connections(kind="inet")
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            out += [
                (pid, c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN
            ]
        return out

    def __enter__(self) -> LocalRayCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
