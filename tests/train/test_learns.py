"""Does the pretraining loop learn from context at all? A task with a known answer.

Real proteins give a tiny model almost nothing to learn in a few hundred steps (held-out residue
loss sits at the unigram entropy for thousands of steps: docs/pretraining.md), so a broken
objective, a decoder that cannot find its sentinel in the encoder, a wrong loss mask or
cross-segment attention would look exactly like "still learning". Here each sequence repeats a
short random motif (periods 2-5), so every masked residue is predictable from its neighbours:
a working loop drives the held-out residue loss far below the unigram entropy quickly, through
the same objective, packing, train step and evaluation the pretraining run uses.
"""

from __future__ import annotations

import numpy as np

from ankh import sharding
from ankh.config import PRESETS
from ankh.tokenizer import AMINO_ACIDS, AnkhTokenizer
from ankh.training import OptimConfig, Trainer
from ankh_platform.train.probe import residue_unigram

RESIDUES = np.array(sorted(set(AMINO_ACIDS) - set("XUZBO")))


def periodic_proteins(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        motif = RESIDUES[rng.integers(0, len(RESIDUES), rng.integers(2, 6))]
        out.append("".join(np.resize(motif, rng.integers(24, 64))))
    return out


def packed_batches(seqs: list[str], epoch: int, spec) -> list[dict]:
    """The stream's own masking + packing (several proteins per row, per-segment positions)."""
    from ankh.objective import Objective, ObjectiveConfig
    from ankh.tokenizer import AnkhTokenizer
    from ankh_platform.data.pipeline import make_batches

    objective = Objective(ObjectiveConfig(mask_prob=0.2, max_residues=64))
    return make_batches(
        seqs, np.arange(len(seqs)), objective, spec, seed=0, epoch=epoch, tokenizer=AnkhTokenizer()
    )


def test_tiny_model_learns_context():
    from ankh.packing import PackSpec

    spec = PackSpec(rows=8, enc_len=136, dec_len=64, max_segments=8)
    train = [b for e in range(4) for b in packed_batches(periodic_proteins(2000, 0), e, spec)]
    held = packed_batches(periodic_proteins(200, 1), 0, spec)[:4]
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    trainer = Trainer(
        PRESETS["tiny"], OptimConfig(peak_lr=0.004, warmup_steps=30, total_steps=300), mesh, seed=0
    )
    state = trainer.init_state()

    def residue_loss(params) -> float:
        sums = [jax_sums(trainer, params, b, mesh) for b in held]
        return sum(s["res_ce"] for s in sums) / sum(s["res_tokens"] for s in sums)

    before = residue_loss(state["params"])
    assert len(train) >= 300
    for b in train[:300]:
        state, _ = trainer.step(state, sharding.global_batch(b, mesh))
    after = residue_loss(state["params"])
    assert np.concatenate([b["segment_ids"] for b in held]).max(axis=1).mean() > 2  # packed rows
    unigram = residue_unigram(held, AnkhTokenizer().residue_table())  # the run's own baseline
    assert before > unigram  # an untrained model is worse than residue frequencies
    # Measured: ~1.3 nats after 300 steps vs unigram ~2.9 (a frequency-only model stays at 2.9).
    assert after < 0.7 * unigram, (before, after, unigram)


def jax_sums(trainer: Trainer, params, batch, mesh) -> dict[str, float]:
    import jax

    out = jax.device_get(trainer.evaluate(params, sharding.global_batch(batch, mesh)))
    return {k: float(v) for k, v in out.items()}
