"""``python -m jobs.benchmark embed-job``: the batch-embedding job vs the raw encoder (one JSON line).

Same model, same machine, same run, real proteins:

- ``raw``: the replica's compiled encoder called back to back on the job's own packed batches,
  already in memory (no Ray, no I/O): ``raw_tokens_per_s`` counts every slot (the ceiling of
  that encoder on full batches), ``raw_real_tokens_per_s`` only the real tokens;
- ``offline``: ``ankh.load(...).embed(sequences)`` (the offline API) on the same sequences;
- ``job``: ``jobs.embed`` end to end (read Parquet shards, pack, actor pool, write, merge) on a
  local Ray; ``job_tokens_per_s`` over the whole pipeline (replica start-up and compilation
  included) and ``job_steady_tokens_per_s`` after the first batch came back.

Ratios: ``job_steady_tokens_per_s / raw_tokens_per_s`` (target >= 0.85) and the job's padding
waste (target <= 0.05).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent


def _sequences(path: str | None, n: int) -> "pq.Table":
    cands = [Path(path)] if path else [REPO.parent / "shared" / "data" / "uniprot_go" / "part-000.parquet",
                                       REPO / "data" / "uniprot_sample" / "train"]
    src = next((c for c in cands if c.exists()), None)
    if src is None:
        raise FileNotFoundError(f"no protein data at {[str(c) for c in cands]}")
    return pq.read_table(src, columns=["id", "sequence"]).slice(0, n)


def _raw(checkpoint: str, spec, table, repeats: int) -> dict:
    import jax

    from ankh.tokenizer import AnkhTokenizer
    from ankh_platform.embed_job import Embedder
    from ankh_platform.embed_pack import layout, pack, prepare

    t = table.to_pydict()
    prep = prepare(t["id"], t["sequence"], ["b"] * len(t["id"]), AnkhTokenizer(), spec)
    lens, nwin = np.asarray(prep.seq_len), np.asarray(prep.seq_nwin)
    batches = [(b["ids"], *layout(b["ids"], b["pieces"], lens, nwin, spec.max_length,
                                  spec.window_overlap)) for b in pack(prep, spec)]
    rep = Embedder(checkpoint, spec, per_residue=False, layer=0, compute_dtype="float32")
    batches = [tuple(jax.device_put(x) for x in b) for b in batches]
    slots = sum(b[0].size for b in batches)
    real = sum(int((np.asarray(b[1]) > 0).sum()) for b in batches)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        outs = [rep.fn(rep.model.params, *b)[0] for b in batches]
        jax.block_until_ready(outs)
        best = min(best, time.perf_counter() - t0)
    return {"raw_tokens_per_s": slots / best, "raw_real_tokens_per_s": real / best,
            "raw_padding_waste": 1 - real / slots, "raw_batches": len(batches)}


def _offline(checkpoint: str, table, batch_tokens: int) -> dict:
    import ankh

    m = ankh.load(checkpoint)
    # The offline API refuses sequences over max_length (the job windows them): skip those here.
    seqs = [s for s in table["sequence"].to_pylist() if len(s) <= m.config.max_length]
    m.embed(seqs, batch_tokens=batch_tokens)  # compile every shape first
    t0 = time.perf_counter()
    m.embed(seqs, batch_tokens=batch_tokens)
    dt = time.perf_counter() - t0
    return {"offline_tokens_per_s": sum(len(s) + 1 for s in seqs) / dt}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="jobs.benchmark embed-job", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default="small", help="preset or checkpoint (default: small)")
    ap.add_argument("--data", help="Parquet with id, sequence (default: shared uniprot_go part-000)")
    ap.add_argument("--sequences", type=int, default=2000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--batch-tokens", type=int, default=8192)
    ap.add_argument("--max-length", type=int, default=1024, help="residues per call (windows beyond)")
    ap.add_argument("--repeats", type=int, default=2, help="raw timing: best of N passes")
    ap.add_argument("--replicas", type=int, default=1)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from ankh_platform.embed_job import EmbedJobConfig, run
    from ankh_platform.embed_pack import PackSpec

    table = _sequences(args.data, args.sequences)
    cfg = EmbedJobConfig(checkpoint=args.checkpoint, batch_tokens=args.batch_tokens,
                         max_length=args.max_length, replicas=args.replicas, write_rows=32)
    spec = PackSpec(max_length=args.max_length, batch_tokens=args.batch_tokens,
                    min_row_tokens=cfg.min_row_tokens, max_segments=cfg.max_segments,
                    window_overlap=cfg.window_overlap)
    out = {"benchmark": "embed-job", "checkpoint": args.checkpoint, "sequences": table.num_rows,
           "batch_tokens": args.batch_tokens, "max_length": args.max_length,
           "shapes": spec.shapes()}
    log = logging.getLogger("bench_embed_job")
    log.info("raw encoder on the job's packed batches ...")
    out.update(_raw(args.checkpoint, spec, table, args.repeats))
    log.info("offline API ...")
    out.update(_offline(args.checkpoint, table, args.batch_tokens))
    log.info("the job ...")
    with tempfile.TemporaryDirectory() as tmp:
        per = -(-table.num_rows // args.shards)
        for k in range(args.shards):
            pq.write_table(table.slice(k * per, per), f"{tmp}/part-{k:03d}.parquet")
        from ankh_platform.runtime import init_ray

        init_ray(include_dashboard=False, log_to_driver=False, object_store_memory=500_000_000)
        import dataclasses

        summary = run(dataclasses.replace(cfg, input=tmp, output=f"{tmp}/out"))
    out.update({"job_tokens_per_s": summary["tokens_per_s"],
                "job_steady_tokens_per_s": summary["steady_tokens_per_s"],
                "job_padding_waste": summary["padding_waste"], "job_wall_s": summary["wall_s"],
                "job_sequences": summary["sequences"]})
    out["ratio_job_steady_vs_raw"] = out["job_steady_tokens_per_s"] / out["raw_tokens_per_s"]
    out["ratio_job_vs_raw"] = out["job_tokens_per_s"] / out["raw_tokens_per_s"]
    out["ratio_job_steady_vs_offline_api"] = out["job_steady_tokens_per_s"] / out["offline_tokens_per_s"]
    out["targets"] = {"ratio_job_steady_vs_raw": ">= 0.85", "job_padding_waste": "<= 0.05"}
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}))


if __name__ == "__main__":
    main()
