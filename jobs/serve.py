"""Serve a checkpoint over HTTP (and DeploymentHandles): ``python -m jobs.serve --checkpoint PATH``.

Starts Ray Serve locally (or on the cluster in ``RAY_ADDRESS``) with the embedding and
generation deployments behind a FastAPI ingress, prints the URL and serves until Ctrl-C
(``--detach``: deploy and exit, leaving it running on the cluster). Binds 127.0.0.1 unless
``--host`` says otherwise. Every ServeConfig field is settable as ``key.path=value`` or in a
``--config`` YAML holding a ServeConfig mapping (what ``args:`` holds in ``cluster/serve-*.yaml``,
the same apps as Serve config files for ``serve run`` / ``serve deploy``). ``--model NAME=PATH``
(repeatable) adds checkpoints that the same replicas serve on request (``"model": NAME``).
"""

from __future__ import annotations

import json
import signal
import sys
import threading

from jobs import _cli

FLAGS = {
    "--checkpoint": _cli.flag(
        "checkpoint",
        "the default model: preset name, HF directory, our "
        "run dir (local or gs://) or hub id (org/name[@revision])",
    ),
    "--model": _cli.flag(
        "models",
        "another checkpoint served by the same replicas, picked per "
        'request with "model": NAME (repeatable; = models.NAME=PATH)',
        action="append",
        metavar="NAME=PATH",
        value=_cli.named_paths,
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
