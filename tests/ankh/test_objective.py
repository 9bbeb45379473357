"""Ankh's 1-gram span partial de-masking on real UniProt sequences."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from ankh.objective import Objective, ObjectiveConfig
from ankh.tokenizer import AnkhTokenizer

TOK = AnkhTokenizer()


@pytest.fixture(scope="module")
def real_residues(protein_parquet):
    seqs = pq.read_table(protein_parquet, columns=["sequence"])["sequence"].to_pylist()[:600]
    return [TOK.encode(s, add_eos=False) for s in seqs]


def test_issue_example_exactly():
    obj = Objective()
    enc, tgt = obj.mask_at(TOK.encode("ABCDEFG", add_eos=False), np.array([2, 6]))
    assert TOK.decode(enc) == "AB<extra_id_0>DEF<extra_id_1>"
    assert enc.tolist() == TOK.encode("AB<extra_id_0>DEF<extra_id_1>").tolist()
    assert tgt.tolist() == [143, TOK.vocab["C"], 142, TOK.vocab["G"], 1]  # <x0> C <x1> G </s>


def test_masking_statistics_on_real_sequences(real_residues):
    obj = Objective(ObjectiveConfig(mask_prob=0.2, max_residues=512))
    masked = total = 0
    for i, res in enumerate(real_residues):
        enc, tgt = obj(res, seed=3, epoch=0, example_id=i)
        n = len(enc) - 1
        assert n == min(len(res), 512) and enc[-1] == TOK.eos_id and tgt[-1] == TOK.eos_id
        sentinels = enc[enc >= 28]
        k = len(sentinels)
        assert k == max(1, round(0.2 * n))
        # Sentinels count down from <extra_id_0> = 143 in order of position.
        assert sentinels.tolist() == list(range(143, 143 - k, -1))
        # Target: <x_j> residue, alternating, then </s>.
        assert len(tgt) == 2 * k + 1
        assert tgt[0:-1:2].tolist() == sentinels.tolist()
        assert np.all((tgt[1:-1:2] >= 3) & (tgt[1:-1:2] < 28))
        # De-masking restores a contiguous window of the original sequence.
        rec = TOK.decode(obj.reconstruct(enc, tgt))
        orig = TOK.decode(res)
        assert rec == orig if len(res) <= 512 else rec in orig
        masked += k
        total += n
    assert abs(masked / total - 0.20) < 0.005, masked / total


def test_randomness_is_per_seed_epoch_example(real_residues):
    obj = Objective()
    long_ = next(r for r in real_residues if len(r) > 900)
    a = obj(long_, 0, 0, 7)
    assert all(np.array_equal(x, y) for x, y in zip(a, obj(long_, 0, 0, 7)))
    crops = set()
    for epoch in range(6):
        enc, tgt = obj(long_, 0, epoch, 7)
        rec = TOK.decode(obj.reconstruct(enc, tgt))
        crops.add(TOK.decode(long_).index(rec))  # crop start
    assert len(crops) > 3  # the crop is re-drawn every epoch
    assert not np.array_equal(obj(long_, 1, 0, 7)[0], a[0])  # and depends on the seed


def test_full_reconstruction_target(real_residues):
    obj = Objective(ObjectiveConfig(full_reconstruction=True))
    res = real_residues[0][:300]
    enc, tgt = obj(res, 0, 0, 0)
    assert tgt.tolist() == res.tolist() + [1]
    assert np.sum(enc >= 28) == round(0.2 * len(res))
    assert TOK.decode(obj.reconstruct(enc, tgt)) == TOK.decode(res)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="sentinels"):
        Objective(ObjectiveConfig(mask_prob=0.5, max_residues=512))
    with pytest.raises(ValueError, match="mask_prob"):
        ObjectiveConfig(mask_prob=0.0)
    with pytest.raises(ValueError, match="empty"):
        Objective().apply(np.zeros(0, np.int32), np.random.default_rng(0))


def test_span_example_exactly():
    obj = Objective(ObjectiveConfig(mean_span=3.0))
    enc, tgt = obj.mask_runs(TOK.encode("ABCDEFG", add_eos=False), np.array([[1, 3], [6, 1]]))
    assert TOK.decode(enc) == "A<extra_id_0>EF<extra_id_1>"
    assert tgt.tolist() == [143, *TOK.encode("BCD", add_eos=False).tolist(), 142, TOK.vocab["G"], 1]
    assert TOK.decode(obj.reconstruct(enc, tgt)) == "ABCDEFG"


@pytest.mark.parametrize("mean_span", [2.0, 3.0, 8.0])
def test_span_masking_on_real_sequences(real_residues, mean_span):
    cfg = ObjectiveConfig(mask_prob=0.2, max_residues=512, mean_span=mean_span)
    obj = Objective(cfg)
    masked = total = runs = 0
    for i, res in enumerate(real_residues[:300]):
        enc, tgt = obj(res, seed=3, epoch=0, example_id=i)
        n = min(len(res), 512)
        k, s = cfg.num_masked(n), cfg.num_spans(n)
        sentinels = enc[enc >= 28]
        assert sentinels.tolist() == list(range(143, 143 - s, -1))  # one per run, in order
        assert len(enc) == n - k + s + 1 and len(tgt) == k + s + 1 <= cfg.max_decoder_tokens()
        assert tgt[-1] == TOK.eos_id and enc[-1] == TOK.eos_id
        rec = TOK.decode(obj.reconstruct(enc, tgt))
        assert rec == TOK.decode(res) if len(res) <= 512 else rec in TOK.decode(res)
        assert not np.any((enc[:-2] >= 28) & (enc[1:-1] >= 28))  # runs never touch
        masked, total, runs = masked + k, total + n, runs + s
    assert abs(masked / total - 0.20) < 0.005
    assert abs(masked / runs - mean_span) < 0.1 * mean_span, masked / runs  # the mean run length


def test_span_edge_cases():
    from ankh.objective import random_runs

    rng = np.random.default_rng(0)
    for n, k, s in [(1, 1, 1), (5, 5, 1), (5, 3, 2), (9, 5, 5), (40, 8, 3)]:
        runs = random_runs(n, k, s, rng)
        assert runs[:, 1].sum() == k and len(runs) == s and (runs[:, 1] >= 1).all()
        ends = runs[:, 0] + runs[:, 1]
        assert runs[0, 0] >= 0 and ends[-1] <= n and (runs[1:, 0] > ends[:-1]).all()
    with pytest.raises(ValueError, match="runs"):
        random_runs(5, 4, 3, rng)  # 3 runs of 4 masked need 2 separators: only 1 unmasked
    with pytest.raises(ValueError, match="mean_span"):
        ObjectiveConfig(mean_span=0.5)
