"""``python -m jobs.benchmark device``: the accelerator suite, within a time budget.

Runs the encoder (``embed``, ours only), train-step (``train``: MFU), generation
(``generate``, ours only) and batch-embedding job (``embed-job``) benchmarks at ``--preset``
(default ``base``) on whatever accelerator this host has, each in its own process (a fresh JAX
that holds the device alone) with a share of ``--budget-s`` (default 480 s: the suite fits in
8 minutes; time a part leaves unused goes to the next). Prints one JSON line first naming the
device, then one per part with the device added; a part over its time prints its error instead.
Compute dtype: ``auto`` (bfloat16 on GPU/TPU, float32 on CPU; ``ankh.accelerator``).

``--parts learn`` (opt-in, not in the default list) runs ``jobs.benchmark learn --config
learn-gpu`` for the part's share of the budget: what pretraining reaches on this device in that
time (held-out loss vs unigram, SS3 probe vs baselines; the shared UniProt data must be
reachable, e.g. ``ANKH_DATA_DIR``). ``--quick`` shrinks every shape to a smoke test (for CPU
tests, with ``--preset tiny``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

# part -> (share of the budget, argv at full size, argv with --quick); {p} = the preset
PARTS: dict[str, tuple[float, list[str], list[str]]] = {
    "embed": (
        0.2,
        [
            "--model",
            "{p}",
            "--batch",
            "8",
            "--length",
            "512",
            "--repeats",
            "3",
            "--reference",
            "none",
        ],
        [
            "--model",
            "{p}",
            "--batch",
            "2",
            "--length",
            "64",
            "--repeats",
            "1",
            "--reference",
            "none",
        ],
    ),
    "train": (
        0.25,
        [
            "--preset",
            "{p}",
            "--steps",
            "5",
            "--rows",
            "8",
            "--max-residues",
            "256",
            "--matmul-n",
            "4096",
        ],
        [
            "--preset",
            "{p}",
            "--steps",
            "1",
            "--rows",
            "2",
            "--max-residues",
            "32",
            "--matmul-n",
            "256",
        ],
    ),
    "generate": (
        0.25,
        [
            "--preset",
            "{p}",
            "--batch",
            "8",
            "--input-len",
            "200",
            "--max-new-tokens",
            "64",
            "--strategies",
            "greedy,sample,beam4",
            "--repeats",
            "2",
            "--reference",
            "none",
        ],
        [
            "--preset",
            "{p}",
            "--batch",
            "2",
            "--input-len",
            "16",
            "--max-new-tokens",
            "4",
            "--strategies",
            "greedy",
            "--repeats",
            "1",
            "--reference",
            "none",
        ],
    ),
    "embed-job": (
        0.3,
        ["--model", "{p}", "--sequences", "400", "--shards", "2", "--raw-after", "0"],
        [
            "--model",
            "{p}",
            "--sequences",
            "16",
            "--shards",
            "1",
            "--raw-after",
            "0",
            "--max-length",
            "256",
            "--batch-tokens",
            "1024",
        ],
    ),
    # Opt-in (``--parts learn``): what pretraining reaches in the part's time (issue 14).
    "learn": (
        1.0,
        ["--config", "learn-gpu", "--budget-s", "{s}"],
        [
            "--config",
            "tiny",
            "--budget-s",
            "{s}",
            "--calibrate-steps",
            "4",
            "--max-steps",
            "100",
            "source.kind=local",
            "data.max_residues=64",
            "eval.probe_train_chains=40",
            "eval.probe_test_chains=20",
            "eval.probe_steps=20",
            "eval.curves=false",
        ],
    ),
}
DEFAULT_PARTS = ["embed", "train", "generate", "embed-job"]

_PROBE = (
    "import jax, json; d = jax.devices()[0]; print(json.dumps({'platform': d.platform, "
    "'device_kind': d.device_kind, 'device_count': jax.device_count(), "
    "'backend': jax.default_backend()}))"
)


def _last_json(text: str) -> dict | None:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def _run(argv: list[str], timeout: float) -> tuple[dict | None, str]:
    """Run ``python -m jobs.benchmark <argv>``; its JSON line (or None) and an error text."""
    try:
        p = subprocess.run(
            [sys.executable, "-m", "jobs.benchmark", *argv],
            capture_output=True,
            text=True,
            timeout=max(timeout, 1.0),
            env=os.environ.copy(),
        )
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s"
    out = _last_json(p.stdout)
    if p.returncode != 0 or out is None:
        return None, f"exit {p.returncode}: {p.stderr.strip().splitlines()[-1:] or ['no output']}"
    return out, ""


def device_info(timeout: float = 120.0) -> dict:
    """What accelerator a fresh JAX process sees here (probed in a child, so this process never
    holds the device the benchmarks need)."""
    p = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=timeout
    )
    info = _last_json(p.stdout)
    if info is None:
        raise RuntimeError(f"could not start JAX: {p.stderr.strip()[-500:]}")
    return info


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m jobs.benchmark device",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--preset", default="base", help="model preset (random weights)")
    ap.add_argument("--budget-s", type=float, default=480.0, help="whole suite, seconds")
    ap.add_argument(
        "--parts",
        default=",".join(DEFAULT_PARTS),
        help=f"comma list of {', '.join(PARTS)} (default: all but learn)",
    )
    ap.add_argument("--quick", action="store_true", help="smoke-test shapes (tests, CPU)")
    args = ap.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise SystemExit(f"unknown part(s) {unknown}; one of {list(PARTS)}")

    start = time.perf_counter()
    dev = device_info()
    print(
        json.dumps(
            {
                "benchmark": "device",
                **dev,
                "preset": args.preset,
                "parts": parts,
                "budget_s": args.budget_s,
            }
        ),
        flush=True,
    )
    total = sum(PARTS[p][0] for p in parts)
    for i, name in enumerate(parts):
        left = args.budget_s - (time.perf_counter() - start)
        # this part's share of what is left (unused time of earlier parts carries over)
        share = left * PARTS[name][0] / sum(PARTS[p][0] for p in parts[i:]) if total else left
        # {s}: the seconds a part may plan for itself (its share less the child's own start)
        argv_part = [
            a.format(p=args.preset, s=max(int(share * 0.85) - 10, 1))
            for a in PARTS[name][2 if args.quick else 1]
        ]
        t0 = time.perf_counter()
        out, err = _run([name, *argv_part], share)
        line = {
            **(out or {"error": err}),
            "benchmark": name,
            "device_kind": dev["device_kind"],
            "platform": dev["platform"],
            "part_wall_s": round(time.perf_counter() - t0, 1),
        }
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
