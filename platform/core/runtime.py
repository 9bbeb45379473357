"""Process setup: where the platform's code came from, the one log format, and a local Ray
start with safe defaults."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

from ankh_platform.core import progress

log = logging.getLogger(__name__)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FRAMEWORK_LOGGERS = (
    "ray",
    "orbax",
    "absl",
    "jax",
    "jaxlib",
    "fsspec",
    "gcsfs",
    "urllib3",
    "tensorboardX",
    "filelock",
)
_console_level = logging.INFO  # what the console shows; set by configure_logging (-v / -q)


def configure_logging(level: int = logging.INFO, log_file: str | None = None) -> None:
    """The one log format of every job and Ray Train worker (to stderr; stdout carries results).

    Leaves handlers someone installed first (Ray's, a test runner's) alone, but sets the level.
    ``log_file``: see ``log_to_file``.
    """
    global _console_level
    _console_level = level
    logging.basicConfig(level=level, format=LOG_FORMAT)
    logging.getLogger().setLevel(level)
    if log_file:
        log_to_file(log_file)


def verbose() -> bool:
    """``-v``: the console shows everything, framework internals included."""
    return _console_level <= logging.DEBUG


class _ConsoleFilter(logging.Filter):
    """Console side of a job with a log file: framework records below WARNING stay in the file."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < _console_level:  # the root level may be lower, for the file
            return False
        framework = record.name.split(".", 1)[0] in FRAMEWORK_LOGGERS
        return verbose() or not framework or record.levelno >= logging.WARNING


def log_to_file(path: str) -> str:
    """Also write every record (INFO and up; DEBUG under ``-v``) to the local file ``path``.

    From then on the console shows the framework loggers (Ray, Orbax, absl, JAX) only at
    WARNING and above, unless ``-v``: their INFO chatter is for the file. Replaces the file of
    an earlier call (tests run several jobs in one process). Returns ``path``.
    """
    import ray  # noqa: F401 -- sets up Ray's own "ray" logger (no propagation) to route here

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    root = logging.getLogger()
    for lg in [root] + [logging.getLogger(n) for n in FRAMEWORK_LOGGERS]:
        for old in [h for h in lg.handlers if h.get_name() == "ankh-job-log"]:
            lg.removeHandler(old)
            old.close()
        if lg is root or not lg.propagate:  # Ray's logger has its own console handler
            # one handler per logger: ray.init re-formats the "ray" logger's handlers
            handler = logging.FileHandler(path)
            handler.setFormatter(logging.Formatter(LOG_FORMAT))
            handler.setLevel(logging.DEBUG if verbose() else logging.INFO)
            handler.set_name("ankh-job-log")
            lg.addHandler(handler)
        for h in lg.handlers:  # console handlers only (a test runner's capture handlers differ)
            if type(h).__name__ in ("StreamHandler", "PlainRayHandler") and not any(
                isinstance(f, _ConsoleFilter) for f in h.filters
            ):
                h.addFilter(_ConsoleFilter())
    root.setLevel(min(_console_level, logging.INFO))  # the file gets INFO even under -q
    return path


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


def init_ray(
    address: str | None = None, dashboard: bool = False, start_attempts: int = 3, **kwargs: Any
) -> None:
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
        except Exception as err:
            ray.shutdown()  # ends the half-started local processes before the next try
            if attempt == attempts or not _is_start_timeout(err):
                raise
            log.warning(
                "local Ray start timed out (try %d of %d); retrying: %s", attempt, attempts, err
            )


@contextlib.contextmanager
def worker_output_to(path: str) -> Iterator[None]:
    """While inside: Ray workers' stdout/stderr go to the file ``path`` (with Ray's
    ``(Actor pid=...)`` prefix) instead of this driver's console; lines a worker printed with
    ``progress.console`` still reach the console, unprefixed. Under ``-v`` the console gets
    every line as well. Without a connected driver (or a Ray without this hook) a no-op.
    """
    import ray

    try:
        from ray._private import worker as ray_worker  # the driver's log-line dispatcher

        dispatcher = ray_worker.global_worker_stdstream_dispatcher
    except (ImportError, AttributeError):
        dispatcher = None
    if dispatcher is None or not ray.is_initialized():
        yield
        return
    default = [h for name, h in dispatcher.handlers if name == "ray_print_logs"]
    with open(path, "a", buffering=1) as fh:

        def handle(data: dict) -> None:
            lines = data.get("lines") or []
            who = data.get("actor_name") or data.get("task_name") or ""
            for line in lines:
                if line.startswith(progress.CONSOLE_TAG):
                    # Workers print these to stdout; Ray Train copies a worker's stdout to its
                    # stderr too, so the stderr copy is dropped.
                    if not data.get("is_err"):
                        progress.console(line[len(progress.CONSOLE_TAG) :], sys.stderr)
                else:
                    fh.write(f"({who} pid={data.get('pid')}) {line}\n")
            rest = [ln for ln in lines if not ln.startswith(progress.CONSOLE_TAG)]
            if verbose() and rest and default:
                default[0]({**data, "lines": rest})

        dispatcher.remove_handler("ray_print_logs")
        dispatcher.add_handler("ankh_job_log", handle)
        try:
            yield
        finally:
            dispatcher.remove_handler("ankh_job_log")
            for h in default:
                dispatcher.add_handler("ray_print_logs", h)
