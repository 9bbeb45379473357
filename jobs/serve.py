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
import logging
import signal
import sys
import threading


def _flags(ap) -> None:
    ap.add_argument("--checkpoint", help="the default model: preset name, HF directory or our "
                    "run dir (local or gs://)")
    ap.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                    help="another checkpoint served by the same replicas, picked per request "
                    "with \"model\": NAME (repeatable; = models.NAME=PATH)")
    ap.add_argument("--host", help="bind address (default 127.0.0.1)")
    ap.add_argument("--port", type=int, help="HTTP port (default 8000)")
    ap.add_argument("--detach", action="store_true", help="deploy and exit (cluster use)")
    ap.add_argument("--num-cpus", type=float, help="CPUs for a local Ray (default: all)")


def main(argv: list[str] | None = None) -> None:
    from ankh_platform.core.config import parse_cli, to_dict, from_dict
    from ankh_platform.serve.schema import ServeConfig

    cfg, args = parse_cli(ServeConfig, argv, __doc__, extra=_flags)
    over = {k: v for k, v in (("checkpoint", args.checkpoint), ("host", args.host),
                              ("port", args.port)) if v is not None}
    models = dict(cfg.models)
    for item in args.model:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--model {item!r}: expected NAME=PATH")
        models[name.strip()] = path.strip()
    try:
        cfg = from_dict(ServeConfig, {**to_dict(cfg), **over, "models": models})
    except ValueError as e:  # ConfigError (e.g. a bad model name) -> a usage error, not a trace
        raise SystemExit(f"jobs.serve: {e}") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    from ray import serve

    from ankh_platform.core.runtime import init_ray
    from ankh_platform.serve.app import build_app

    init_kw = {"num_cpus": args.num_cpus} if args.num_cpus else {}
    init_ray(**init_kw)
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(build_app(cfg), name=cfg.app_name, route_prefix=cfg.route_prefix)
    url = f"http://{cfg.host}:{cfg.port}{cfg.route_prefix.rstrip('/')}"
    print(json.dumps({"url": url, "app": cfg.app_name, "model": cfg.served_name(),
                      "models": list(cfg.catalog()),
                      "docs": f"{url}/docs", "health": f"{url}/healthz"}), flush=True)
    if args.detach:
        return
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()


if __name__ == "__main__":
    main(sys.argv[1:])
