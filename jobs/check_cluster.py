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
fit exits 1 and names the largest per-host batch that does (found by compiling). It also
compiles, for one chip of a v4 host (and of a v5e and a v6e host), what Serve and the batch-
embedding job run there: the encoder at their largest batch shapes and one decode step at the
Serve request limits' worst case ("inference"); the slice's own generation must fit.
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
    ap.add_argument(
        "--no-inference",
        action="store_true",
        help="with --compile: skip the Serve / batch-embedding / decode-step programs per host",
    )
    ap.add_argument(
        "--inference-generations",
        default="v4,v5e,v6e",
        help="with --compile: TPU generations whose one-host inference plan is compiled "
        "(the slice's own always; default v4,v5e,v6e)",
    )
    ap.add_argument(
        "--serve-model",
        default="base",
        help="with --compile: the preset a Serve file's checkpoint is planned as when it cannot "
        "be read here (a gs:// run directory)",
    )
    ap.add_argument(
        "--plan-table",
        action="store_true",
        help="compile every --models x --slices cell (v4) and print the JSON lines and the "
        "markdown plan table of docs/cluster.md; each cell in its own process",
    )
    ap.add_argument("--models", default="base,large,ankh2-large,ankh3-large,ankh3-xl")
    ap.add_argument("--slices", default="v4-8,v4-32,v4-128")
    ap.add_argument("--cell-timeout", type=float, default=1800, help="seconds per plan-table cell")
    ap.add_argument(
        "--plan-out",
        default="plan-table.jsonl",
        help="JSON lines of the plan table's cells (a rerun computes only the missing ones)",
    )
    ap.add_argument(
        "--table-only",
        action="store_true",
        help="with --plan-table: print the table from --plan-out without compiling missing cells",
    )
    ap.add_argument("--jobs", type=int, default=1, help="plan-table cells compiled at once")
    ap.add_argument(
        "--plan-cell", nargs=2, metavar=("MODEL", "SLICE"), help="compile one plan-table cell"
    )
    args = _cli.parse_args(ap, argv)
    if args.plan_cell or args.plan_table:
        return plan_table(args)
    files = args.files or shipped_cluster_files()
    if args.compile:
        gens = None if args.no_inference else tuple(args.inference_generations.split(","))
        return compile_files(files, args.preset, not args.no_search, gens, args.serve_model)
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


def compile_files(
    files: list,
    preset: str | None,
    search: bool,
    inference: tuple[str, ...] | None = None,
    serve_model: str = "base",
) -> int:
    from ankh_platform.plan.libtpu import INSTALL_HINT, libtpu_available
    from ankh_platform.plan.report import compile_file

    if not libtpu_available():
        print(f"error: {INSTALL_HINT}", file=sys.stderr)
        return 2
    bad = 0
    for path in files:
        for row in compile_file(path, preset, search, inference, serve_model):
            bad += not row["ok"]
            print(json.dumps(row), flush=True)
    return 1 if bad else 0


def plan_table(args) -> int:
    from pathlib import Path

    from ankh_platform.plan import table
    from ankh_platform.plan.libtpu import INSTALL_HINT, libtpu_available

    if not libtpu_available():
        print(f"error: {INSTALL_HINT}", file=sys.stderr)
        return 2
    if args.plan_cell:
        print(json.dumps(table.plan_cell(*args.plan_cell)), flush=True)
        return 0
    models, slices = tuple(args.models.split(",")), tuple(args.slices.split(","))
    rows = table.run_cells(
        models, slices, Path(args.plan_out), args.cell_timeout, args.jobs, not args.table_only
    )
    for r in rows:
        print(json.dumps(r))
    print(table.markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(_cli.run(main))
