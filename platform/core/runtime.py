"""Process setup: where the platform's code came from, the one log format, and a local Ray
start with safe defaults."""

from __future__ import annotations

import importlib
import logging
import os
from typing import Any

log = logging.getLogger(__name__)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: int = logging.INFO) -> None:
    """The one log format of every job and Ray Train worker (to stderr; stdout carries results).

    Leaves handlers someone installed first (Ray's, a test runner's) alone, but sets the level.
    """
    logging.basicConfig(level=level, format=LOG_FORMAT)
    logging.getLogger().setLevel(level)


def package_origins() -> dict[str, str]:
    """Directory each of the project's packages was imported from (used to prove uploads work)."""
    out = {}
    for name in ("ankh", "ankh_platform", "jobs"):
        mod = importlib.import_module(name)
        paths = list(getattr(mod, "__path__", []))
        out[name] = os.path.realpath(paths[0]) if paths else os.path.realpath(mod.__file__)
    import platform as stdlib_platform

    out["platform"] = os.path.realpath(stdlib_platform.__file__)
    return out


def init_ray(address: str | None = None, dashboard: bool = False, start_attempts: int = 3,
             **kwargs: Any) -> None:
    """Connect to a cluster (``address``/``RAY_ADDRESS``) or start a local one on loopback.

    ``dashboard`` starts the local dashboard on 127.0.0.1 (Ray Train's metrics and its
    state-API watchdog need it); a local run without it starts no dashboard port at all.
    A local start that times out is retried up to ``start_attempts`` times in all: Ray waits a
    fixed 30 s for its raylet, which a loaded machine can miss.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **kwargs)
    else:
        kwargs.setdefault("include_dashboard", dashboard)
        if dashboard:
            kwargs.setdefault("dashboard_host", "127.0.0.1")
        # Ray picks the host's routable IP as node IP and binds GCS/raylet/worker gRPC to all
        # interfaces; with this flag a local instance takes 127.0.0.1 and binds loopback only
        # (``_node_ip_address`` alone does not change the bind address in Ray 2.60).
        if os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0") == "0":
            from ray._private import ray_constants  # ray may have read the env at import time

            ray_constants.ENABLE_RAY_CLUSTER = False
        _start_local(kwargs, max(1, start_attempts))
    log.info("ray resources: %s", ray.cluster_resources())


def _is_start_timeout(err: BaseException) -> bool:
    # Ray 2.60 raises a bare Exception("The current node timed out during startup ...") for the
    # raylet wait and TimeoutError for its other start-up waits.
    return isinstance(err, TimeoutError) or "timed out" in str(err).lower()


def _start_local(kwargs: dict[str, Any], attempts: int) -> None:
    import ray

    for attempt in range(1, attempts + 1):
        try:
            ray.init(**kwargs)
            return
        except Exception as err:  # noqa: BLE001 -- Ray raises a bare Exception on this timeout
            ray.shutdown()  # ends the half-started local processes before the next try
            if attempt == attempts or not _is_start_timeout(err):
                raise
            log.warning("local Ray start timed out (try %d of %d); retrying: %s",
                        attempt, attempts, err)
