"""``python -m jobs.benchmark fasta``: embedding a real FASTA end to end, our batch job from the
command line vs HF ``transformers`` ``T5EncoderModel`` (one JSON line).

What a user runs over a protein database, timed the way they would time it:

- **ours**: ``python -m jobs.embed --model MODEL --input X.fasta --output OUT`` in a fresh
  process, wall time from launch to exit: interpreter and imports, the local Ray start, reading,
  packing, the replica's start (load, compile), embedding, writing, merging, the summary;
- **HF, one sequence at a time** (``hf_b1``): the official ``ankh`` extract -- ``T5EncoderModel``
  called per protein, the final hidden states averaged over the residues (``</s>`` dropped);
- **HF, batches of 8 in file order** (``hf_b8``): padded to the longest of each 8, attention mask.

HF runs in this process after its model is loaded; its imports and loading are *not* timed (in
HF's favour). Same weights (``--model``; default the ``d512x8`` shape with random weights,
written once as an HF directory that both sides load), same proteins: the first ``--sequences``
of at most ``--max-residues`` residues of a real UniProt shard, in file order, written as FASTA. The length mix is an option: ``--min-residues``/``--max-residues`` and
``--data`` (another shard) or ``--fasta`` (your own file), e.g. the longer mix
``--data .../uniprot_go/part-001.parquet --min-residues 120``.

``ratio_vs_best_hf`` = the faster HF time / our end-to-end time (goal >= 2); ``max_abs_diff``:
the largest difference between our pooled vector and HF's b1 vector, over all proteins and
dimensions (goal <= 1e-4), matched by id.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from ankh.resolve import resolve
from ankh_platform.core import cli as _cli  # the --model / --output flags every job shares

log = logging.getLogger("bench_fasta")


def pick_proteins(
    data: str | None, fasta: str | None, n: int, min_residues: int, max_residues: int
) -> dict[str, str]:
    """The first ``n`` proteins (file order) of ``min_residues..max_residues`` residues, from a
    Parquet shard (``data``; default the shared ``uniprot_go`` part-000) or a FASTA file: the
    length mix a run measures."""
    if fasta:
        from ankh_platform.data.fasta import read_records

        pairs = ((i, s) for i, s in read_records(fasta) if i)
        src = fasta
    else:
        from ankh_platform.core.samples import protein_shard

        src = Path(data) if data else protein_shard()
        t = pq.read_table(src, columns=["id", "sequence"]).to_pydict()
        pairs = zip(t["id"], t["sequence"])
    picked: dict[str, str] = {}
    for i, s in pairs:
        if min_residues <= len(s) <= max_residues and i not in picked:
            picked[i] = s
            if len(picked) == n:
                break
    if len(picked) < n:
        log.warning(
            "only %d proteins of %d..%d residues in %s",
            len(picked),
            min_residues,
            max_residues,
            src,
        )
    if not picked:
        raise SystemExit(f"no protein of {min_residues}..{max_residues} residues in {src}")
    return picked


def write_fasta(path: str, proteins: dict[str, str]) -> None:
    with open(path, "w") as fh:
        for i, s in proteins.items():
            fh.write(f">{i}\n" + "\n".join(s[k : k + 60] for k in range(0, len(s), 60)) + "\n")


def add_mix_flags(ap: argparse.ArgumentParser) -> None:
    """The length-mix flags (shared with ``jobs.benchmark packed``)."""
    src = ap.add_mutually_exclusive_group()
    src.add_argument(
        "--data", help="Parquet shard with id, sequence (default: shared uniprot_go part-000)"
    )
    src.add_argument("--fasta", help="a FASTA[.gz] file instead of a Parquet shard")
    ap.add_argument("--sequences", type=int, default=600, help="proteins (default 600)")
    ap.add_argument("--min-residues", type=int, default=1, help="shortest protein taken")
    ap.add_argument("--max-residues", type=int, default=1000, help="longest protein taken")


def model_dir(checkpoint: str, tmp: str) -> str:
    """An HF directory both sides load: a shape name or preset gets random weights (seed 0)."""
    from ankh.api import Ankh
    from ankh.config import PRESETS
    from ankh_platform.bench.generate import SHAPES, bench_config

    if checkpoint not in SHAPES and checkpoint not in PRESETS:
        return checkpoint
    out = f"{tmp}/model"
    Ankh.random(bench_config(checkpoint), seed=0).save_hf(out)
    return out


def run_ours(model: str, fasta: str, out: str, extra: list[str]) -> dict:
    """``jobs.embed`` as a user runs it: a fresh process, wall clock from launch to exit."""
    cmd = [
        sys.executable,
        "-m",
        "jobs.embed",
        "--model",
        model,
        "--input",
        fasta,
        "--output",
        out,
        "-q",
        *extra,
    ]
    repo = Path(__file__).resolve().parents[2]  # jobs/ lives at the repository root
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")])),
    )
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=repo)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    summary = json.loads(Path(out, "_summary.json").read_text())
    vectors = {}
    for f in sorted(Path(out).glob("*.parquet")):
        t = pq.read_table(f, columns=["id", "embedding"]).to_pydict()
        vectors.update({i: np.asarray(v, np.float64) for i, v in zip(t["id"], t["embedding"])})
    timing = {
        f"ours_{k}": v for k, v in summary.get("timing", {}).items() if isinstance(v, (int, float))
    }
    return {
        "ours_s": wall,
        "ours_tokens": summary.get("tokens"),
        "ours_job_wall_s": summary.get("wall_s"),
        "ours_padding_waste": summary.get("padding_waste"),
        **timing,
        "_vectors": vectors,
    }


def hf_model(model: str):
    import torch
    from transformers import T5EncoderModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the decoder weights in the file are "unexpected" here

    return T5EncoderModel.from_pretrained(model, torch_dtype=torch.float32).eval()


def run_hf(
    ref, tokenizer, proteins: dict[str, str], batch: int
) -> tuple[float, dict[str, np.ndarray]]:
    """HF in file order, ``batch`` proteins per call; mean over residues (``</s>`` dropped)."""
    import torch

    ids, out = list(proteins), {}
    t0 = time.perf_counter()
    with torch.inference_mode():
        for k in range(0, len(ids), batch):
            chunk = ids[k : k + batch]
            tok, mask = tokenizer.batch_encode([proteins[i] for i in chunk])
            h = ref(
                input_ids=torch.from_numpy(tok).long(), attention_mask=torch.from_numpy(mask).long()
            ).last_hidden_state
            for r, i in enumerate(chunk):
                n = len(proteins[i])  # residues; </s> follows them
                out[i] = h[r, :n].double().mean(0).numpy()
    return time.perf_counter() - t0, out


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m jobs.benchmark fasta",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _cli.add(
        ap,
        "--model",
        _cli.model_flag(
            None,
            "or d512x8 (random weights; the default); a preset has random weights",
            aliases=("--checkpoint",),
        ),
        default="d512x8",
    )
    add_mix_flags(ap)
    ap.add_argument("--hf", default="b1,b8", help="HF modes: b1 (one at a time), b8 (batches of 8)")
    ap.add_argument("--torch-threads", type=int, default=0, help="0: torch's default (all cores)")
    ap.add_argument(
        "--peak-seconds",
        type=float,
        default=2.0,
        help="time spent measuring the float32 matmul peak (0: skip)",
    )
    ap.add_argument("job_args", nargs="*", help="extra jobs.embed arguments (key=value overrides)")
    return ap


def main(argv: list[str] | None = None) -> dict:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    modes = [m for m in args.hf.split(",") if m]
    if any(m not in ("b1", "b8") for m in modes):
        raise SystemExit(f"--hf: b1 and/or b8, got {args.hf!r}")
    with tempfile.TemporaryDirectory() as tmp:
        fasta = f"{tmp}/proteins.fasta"
        proteins = pick_proteins(
            args.data, args.fasta, args.sequences, args.min_residues, args.max_residues
        )
        write_fasta(fasta, proteins)
        model = model_dir(args.model, tmp)
        lengths = np.array([len(s) for s in proteins.values()])
        out = {
            "benchmark": "fasta",
            "checkpoint": args.model,
            "sequences": len(proteins),
            "residues": int(lengths.sum()),
            "length_p50": int(np.median(lengths)),
            "length_mean": float(lengths.mean()),
            "length_min": int(lengths.min()),
            "length_max": int(lengths.max()),
            "cores": os.cpu_count(),
        }
        log.info("ours: jobs.embed on %d proteins (%d residues) ...", len(proteins), lengths.sum())
        ours = run_ours(model, fasta, f"{tmp}/out", args.job_args)
        vectors = ours.pop("_vectors")
        out.update(ours)
        out.update(_compare_hf(model, proteins, vectors, modes, args.torch_threads))
        cfg = resolve(model).config
    best = min((out[f"hf_{m}_s"] for m in modes), default=None)
    if best is not None:
        out["ratio_vs_best_hf"] = best / out["ours_s"]
        out["ratio_vs_best_hf_model_only"] = (
            best / out["ours_model_s"] if out.get("ours_model_s") else None
        )
    out.update(_efficiency(cfg, lengths, out, modes, args.peak_seconds))
    out["targets"] = {"ratio_vs_best_hf": ">= 2.0", "max_abs_diff": "<= 1e-4"}
    out = {
        k: v if k.startswith("max_abs_diff") or not isinstance(v, float) else float(f"{v:.5g}")
        for k, v in out.items()
    }
    print(json.dumps(out))
    return out


def _efficiency(cfg, lengths: np.ndarray, out: dict, modes: list[str], seconds: float) -> dict:
    """Useful encoder GFLOP/s of each side (the real tokens' FLOPs, padding not counted) against
    this machine's float32 matmul peak measured now: how far any float32 code could go."""
    if seconds <= 0:
        return {}
    from ankh.flops import encoder_flops, measure_matmul_peak

    useful = float(sum(encoder_flops(cfg, 1, int(n) + 1) for n in lengths))  # + </s>
    peak = measure_matmul_peak("float32", seconds=seconds)
    res = {
        "useful_gflop": useful / 1e9,
        "matmul_peak_gflops": peak / 1e9,
        # at the peak, with zero fixed cost: the most any float32 implementation could reach
        "ceiling_ratio_vs_best_hf": min(out[f"hf_{m}_s"] for m in modes) / (useful / peak)
        if modes
        else None,
    }
    for name, key in [
        ("ours_e2e", "ours_s"),
        ("ours_model", "ours_model_s"),
        *[(f"hf_{m}", f"hf_{m}_s") for m in modes],
    ]:
        if out.get(key):
            res[f"{name}_fraction_of_peak"] = useful / out[key] / peak
    return res


def _compare_hf(
    model: str, proteins: dict[str, str], vectors: dict, modes: list[str], threads: int
) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    described = resolve(model)
    if described.config.task_prefixes:  # ankh3: the job puts [NLU] first, the HF loop here does not
        raise SystemExit(
            "the fasta benchmark's HF loop has no task-prefix ([NLU]) handling: "
            "use an Ankh / Ankh2 vocabulary checkpoint"
        )
    ref, tok = hf_model(model), described.tokenizer
    res: dict = {
        "torch_threads": torch.get_num_threads(),
        "ids_equal": set(vectors) == set(proteins),
    }
    for m in modes:
        log.info("HF %s ...", m)
        secs, hf = run_hf(ref, tok, proteins, 1 if m == "b1" else 8)
        res[f"hf_{m}_s"] = secs
        common = [i for i in proteins if i in vectors]
        if common:
            res[f"max_abs_diff_{m}"] = float(max(np.abs(vectors[i] - hf[i]).max() for i in common))
    if modes:
        res["max_abs_diff"] = max(
            (v for k, v in res.items() if k.startswith("max_abs_diff_")), default=None
        )  # None: no id came back
    return res


if __name__ == "__main__":
    main()
