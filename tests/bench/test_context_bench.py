"""``jobs.benchmark context``: the count models behind docs/pretraining.md's local-context floor."""

from __future__ import annotations

import json

import numpy as np

from ankh_platform.bench.context import context_losses, encode, main


def test_neighbours_predict_a_repeated_motif():
    rng = np.random.default_rng(0)
    seqs = [
        "".join(np.resize(list("ACDEFGHIKL"[rng.integers(0, 10)] + "MNPQ"), 60)) for _ in range(300)
    ]
    out = context_losses(encode(seqs[:250]), encode(seqs[250:]))
    # 4 of every 5 residues are fixed by their neighbours; the 5th is 1 of 10 letters (ln 10 / 5)
    assert out["neighbours_1"] < 0.6 < 1.2 < out["unigram"]


def test_real_proteins_json(capsys):
    main(["--train-n", "2000", "--held-n", "100"])
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    nats = got["nats_per_residue"]
    assert 2.6 < nats["unigram"] < 3.1 and got["held_residues"] > 10_000
    # Counts from 2,000 proteins: the +-1 model is near unigram, never far below it.
    assert abs(nats["neighbours_1"] - nats["unigram"]) < 0.15
