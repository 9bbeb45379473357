"""Check that pretraining presets fit the TPU slices of cluster files.

    python -m jobs.check_cluster                          # every shipped cluster/**/*.yaml
    python -m jobs.check_cluster cluster/gcp-tpu-v4.yaml --preset large
    python -m jobs.check_cluster --compile                # compile for each slice (tpu-compile extra)

For each TPU slice: topology, chips, hosts, the preset it runs and the resolved
``data x fsdp x tensor`` mesh, or what disagrees. Exit status 1 if anything disagrees.

--compile compiles the pretraining step exactly as the job builds it for the slice's TPU
topology, without a TPU (libtpu describes the slice; no weights are made), and prints one JSON
line per slice: HBM per chip (arguments/outputs/temporaries) against the chip's capacity, FLOPs
per step (XLA's and the ankh.flops formula's), the collectives of the compiled program, an
estimated step time and tokens/s (data-sheet peak and interconnect, an assumed MFU; marked
"estimate": true), and Ray Train's ScalingConfig against the compiled mesh. A step that does not
fit exits 1 and names the largest per-host batch that does (found by compiling).
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
    ap.add_argument(
        "--compile",
        action="store_true",
        help="compile the train step for each slice's TPU topology (needs the tpu-compile "
        "extra; minutes per large preset on a small machine) and print one JSON line each",
    )
    ap.add_argument(
        "--no-search",
        action="store_true",
        help="with --compile: do not search for the largest fitting batch when a step does not fit",
    )
    args = _cli.parse_args(ap, argv)
    files = args.files or shipped_cluster_files()
    if args.compile:
        return compile_files(files, args.preset, search=not args.no_search)
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


def compile_files(files: list, preset: str | None, search: bool) -> int:
    from ankh_platform.plan.libtpu import INSTALL_HINT, libtpu_available
    from ankh_platform.plan.report import compile_file

    if not libtpu_available():
        print(f"error: {INSTALL_HINT}", file=sys.stderr)
        return 2
    bad = 0
    for path in files:
        for row in compile_file(path, preset, search=search):
            bad += not row["ok"]
            print(json.dumps(row), flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(_cli.run(main))
