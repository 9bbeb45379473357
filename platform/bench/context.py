"""``python -m jobs.benchmark context``: how much of a residue its neighbours alone predict.

Count models fit on real training proteins, scored on held-out ones (nats per residue): the
unigram entropy (residue frequencies), the residue given its +-1 neighbours, and given its +-2
neighbours (5-gram counts interpolated with the +-1 model, which also memorises 4-mer contexts
shared by homologues). A masked-token loss that a small model reaches is only as good as what it
learns beyond these: docs/pretraining.md ("Does it learn?") uses them to show how little local
context real proteins carry. Pure NumPy; one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from ankh_platform.core import samples

LETTERS = "ACDEFGHIKLMNPQRSTVWY"  # the 20 standard residues; every other letter is one class
V = len(LETTERS) + 1


def encode(seqs: list[str]) -> list[np.ndarray]:
    table = np.full(256, V - 1, np.int64)
    table[np.frombuffer(LETTERS.encode(), np.uint8)] = np.arange(len(LETTERS))
    return [table[np.frombuffer(s.encode(), np.uint8)] for s in seqs]


def context_losses(train: list[np.ndarray], held: list[np.ndarray], prior: float = 20.0) -> dict:
    """Held-out nats/residue of the unigram, +-1 and +-2 neighbour count models."""
    flat = np.concatenate(train)
    uni = (np.bincount(flat, minlength=V) + 1.0) / (len(flat) + V)
    tri = np.full((V, V, V), 0.5)  # [left, right, centre], add-1/2 smoothing
    five = np.zeros((V**4, V))  # [(l2, l1, r1, r2), centre]
    for s in train:
        if len(s) >= 3:
            np.add.at(tri, (s[:-2], s[2:], s[1:-1]), 1.0)
        if len(s) >= 5:
            np.add.at(five, (((s[:-4] * V + s[1:-3]) * V + s[3:-1]) * V + s[4:], s[2:-2]), 1.0)
    tri /= tri.sum(-1, keepdims=True)
    out = {"unigram": [], "neighbours_1": [], "neighbours_2": []}
    for s in held:
        if len(s) < 5:
            continue
        c = s[2:-2]  # residues with two neighbours on each side: the same set for every model
        out["unigram"].append(-np.log(uni[c]))
        p1 = tri[s[1:-3], s[3:-1]]  # [n, V]
        out["neighbours_1"].append(-np.log(p1[np.arange(len(c)), c]))
        row = five[((s[:-4] * V + s[1:-3]) * V + s[3:-1]) * V + s[4:]]
        n = row.sum(-1, keepdims=True)
        lam = n / (n + prior)  # trust the 5-gram counts as they accumulate
        p2 = lam * row / np.maximum(n, 1.0) + (1 - lam) * p1
        out["neighbours_2"].append(-np.log(p2[np.arange(len(c)), c]))
    return {k: float(np.concatenate(v).mean()) for k, v in out.items()}


def _held_default() -> Path:
    cand = samples.data_dir() / "uniprot_go" / "part-010.parquet"
    return cand if cand.exists() else samples.bundled_validation()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="jobs.benchmark context", description=__doc__)
    ap.add_argument(
        "--train", default=str(samples.protein_shard()), help="Parquet file/dir with sequences"
    )
    ap.add_argument("--held", default=str(_held_default()), help="held-out Parquet file/dir")
    ap.add_argument("--train-n", type=int, default=47_000, help="training proteins used (first N)")
    ap.add_argument("--held-n", type=int, default=512, help="held-out proteins scored (first N)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    read = lambda p, n: pq.read_table(p, columns=["sequence"]).column(0).to_pylist()[:n]  # noqa: E731
    train, held = encode(read(args.train, args.train_n)), encode(read(args.held, args.held_n))
    losses = context_losses(train, held)
    print(
        json.dumps(
            {
                "bench": "context",
                "train": args.train,
                "held": args.held,
                "train_proteins": len(train),
                "held_proteins": len(held),
                "held_residues": int(sum(max(len(s) - 4, 0) for s in held if len(s) >= 5)),
                "nats_per_residue": losses,
                "gain_over_unigram": {k: losses["unigram"] - v for k, v in losses.items()},
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
    )
