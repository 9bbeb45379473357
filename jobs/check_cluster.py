"""Check that pretraining presets fit the TPU slices of cluster files.

    python -m jobs.check_cluster                          # every shipped cluster/**/*.yaml
    python -m jobs.check_cluster cluster/gcp-tpu-v4.yaml --preset large

For each TPU slice: topology, chips, hosts, the preset it runs and the resolved
``data x fsdp x tensor`` mesh, or what disagrees. Exit status 1 if anything disagrees.
"""

from __future__ import annotations

import json
import sys

from ankh_platform.core import cli as _cli


def main(argv: list[str] | None = None) -> int:
    from ankh_platform.cluster_check import check_file, shipped_cluster_files

    ap = _cli.parser("jobs.check_cluster", __doc__)
    ap.add_argument("files", nargs="*", help="cluster YAML files (default: all shipped ones)")
    ap.add_argument(
        "--preset",
        help="check this preset (name or YAML path) instead of the one each file declares",
    )
    ap.add_argument("--json", action="store_true", help="one JSON line per slice")
    args = _cli.parse_args(ap, argv)
    files = args.files or shipped_cluster_files()
    bad = 0
    for path in files:
        for r in check_file(path, args.preset):
            sl = r.slice
            row = {
                "slice": sl.where,
                "accelerator": sl.accelerator_type,
                "topology": sl.topology,
                "chips": sl.chips,
                "hosts": sl.hosts,
                "preset": sl.preset,
                "mesh": r.mesh,
                "ok": r.ok,
                "problems": r.problems,
            }
            bad += not r.ok
            if args.json:
                print(json.dumps(row))
            else:
                status = "ok " if r.ok else "BAD"
                print(
                    f"{status} {sl.where}: {sl.accelerator_type} ({sl.topology}, {sl.chips} chips, "
                    f"{sl.hosts} hosts) preset={sl.preset} mesh={r.mesh}"
                )
                for p in r.problems:
                    print(f"    - {p}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(_cli.run(main))
