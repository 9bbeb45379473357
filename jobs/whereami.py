"""Print (as JSON) where ``ankh``, ``ankh_platform`` and ``jobs`` were imported from.

Used to prove that ``ray job submit --working-dir .`` runs the uploaded code, on the driver and
inside a Ray worker.
"""

import json
import sys

from ankh_platform.core import cli as _cli


def main(argv: list[str] | None = None) -> None:
    _cli.parse_args(_cli.parser("jobs.whereami", __doc__), argv)
    import ray

    from ankh_platform.core.runtime import init_ray, package_origins

    init_ray()
    remote = ray.get(ray.remote(num_cpus=0)(package_origins).remote())
    print(json.dumps({"driver": package_origins(), "worker": remote}))


if __name__ == "__main__":
    sys.exit(_cli.run(main))
