"""Serve models over HTTP (and DeploymentHandles): ``python -m jobs.serve --model MODEL``.

Starts Ray Serve locally (or on the cluster in ``RAY_ADDRESS``) with the embedding and
generation deployments behind a FastAPI ingress, prints the URL and serves until Ctrl-C
(``--detach``: deploy and exit, leaving it running on the cluster). Binds 127.0.0.1 unless
``--host`` says otherwise. Every ServeConfig field is settable as ``key.path=value`` or in a
``--config`` YAML holding a ServeConfig mapping (what ``args:`` holds in ``cluster/serve-*.yaml``,
the same apps as Serve config files for ``serve run`` / ``serve deploy``).

Several models per replica: ``--model`` is repeatable. A bare ``--model MODEL`` is the default
model (``checkpoint=``; at most one); ``--model NAME=MODEL`` adds a model that the same replicas
serve on request (``"model": NAME``; ``models.NAME=``)::

    python -m jobs.serve --model /runs/base --model ft=/runs/base-ft --model v2=gs://b/runs/v2

``--checkpoint MODEL`` is the old spelling of a bare ``--model MODEL``.

Fine-tuned runs (``jobs.finetune`` output directories) are served by ``POST /v1/predict``:
``--task NAME=RUN`` is repeatable (``tasks.NAME=``); a request names its task (``"task": NAME``,
default the first), several tasks per replica like models (``max_tasks_per_replica``)::

    python -m jobs.serve --model tiny --task ss3=runs/ss3 --task go=runs/go_mf
"""

from __future__ import annotations

import json
import re
import signal
import sys
import threading

from ankh_platform.core import cli as _cli
from ankh_platform.core.config import ConfigError

# NAME in ``--model NAME=MODEL``: the served id's characters (ServeConfig checks the full rule).
# A path or URL before its first "=" has a "/" and so stays one bare model reference.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+-]*")


def models(items: list[str]) -> dict:
    """``--model`` values -> ``{"checkpoint": bare one, "models": {NAME: MODEL}}`` (those given)."""
    bare, named = [], {}
    for item in items:
        name, sep, ref = item.partition("=")
        if sep and _NAME.fullmatch(name.strip()):
            if not ref.strip():
                raise ConfigError(f"{item!r}: expected NAME=MODEL")
            named[name.strip()] = ref.strip()
        else:
            bare.append(item.strip())
    if len(bare) > 1:
        raise ConfigError(f"{bare}: one default model (name the others: --model NAME=MODEL)")
    out = {"checkpoint": bare[0]} if bare else {}
    return out | ({"models": named} if named else {})


def tasks(items: list[str]) -> dict[str, str]:
    """``--task`` values (``NAME=RUN``) -> ``{NAME: RUN}``."""
    out = {}
    for item in items:
        name, sep, run = item.partition("=")
        if not (sep and _NAME.fullmatch(name.strip()) and run.strip()):
            raise ConfigError(f"{item!r}: expected NAME=RUN (a jobs.finetune output directory)")
        out[name.strip()] = run.strip()
    return out


FLAGS = {
    "--model": _cli.model_flag(
        ("checkpoint", "models"),
        "repeatable: a bare MODEL is the default model, NAME=MODEL another one "
        'served by the same replicas, picked per request with "model": NAME',
        action="append",
        metavar="[NAME=]MODEL",
        value=models,
        aliases=("--checkpoint",),
    ),
    "--task": _cli.flag(
        "tasks",
        "repeatable: NAME=RUN serves a jobs.finetune run on POST /v1/predict, "
        'picked per request with "task": NAME (default: the first)',
        action="append",
        metavar="NAME=RUN",
        value=tasks,
    ),
    "--host": _cli.flag("host", "bind address (default 127.0.0.1)"),
    "--port": _cli.flag("port", "HTTP port (default 8000)", type=int),
    "--detach": _cli.flag(None, "deploy and exit (cluster use)", action="store_true"),
    "--num-cpus": _cli.flag(None, "CPUs for a local Ray (default: all)", type=float),
}


def main(argv: list[str] | None = None) -> None:
    from ankh_platform.serve.schema import ServeConfig

    cfg, args = _cli.parse(ServeConfig, argv, __doc__, "jobs.serve", FLAGS)
    from ray import serve

    from ankh_platform.core.runtime import init_ray
    from ankh_platform.serve.app import build_app

    init_ray(**({"num_cpus": args.num_cpus} if args.num_cpus else {}))
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(build_app(cfg), name=cfg.app_name, route_prefix=cfg.route_prefix)
    url = f"http://{cfg.host}:{cfg.port}{cfg.route_prefix.rstrip('/')}"
    print(
        json.dumps(
            {
                "url": url,
                "app": cfg.app_name,
                "model": cfg.served_name(),
                "models": list(cfg.catalog()),
                "tasks": list(cfg.tasks),
                "docs": f"{url}/docs",
                "health": f"{url}/healthz",
            }
        ),
        flush=True,
    )
    if args.detach:
        return
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()


if __name__ == "__main__":
    sys.exit(_cli.run(main))
