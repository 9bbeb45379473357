"""Scoring vs a direct computation with HF T5ForConditionalGeneration on the same weights."""

from __future__ import annotations

import numpy as np
import pytest

from tests.ankh._genutil import real_sequences, tiny_pair

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return tiny_pair(tmp_path_factory.mktemp("hf_tiny_score"), seed=2)


@pytest.fixture(scope="module")
def seqs():
    return real_sequences(3, max_len=30, start=10)


def _hf_logp(hf, enc_ids, labels):
    """log_softmax of HF logits for the given encoder ids and decoder labels (numpy in/out)."""
    with torch.no_grad():
        out = hf(
            input_ids=torch.tensor(np.asarray(enc_ids)).long(),
            labels=torch.tensor(np.asarray(labels)).long(),
        )
    return torch.log_softmax(out.logits, -1).numpy()


def _hf_masked_marginals(hf, tok, seq):
    """Row i: HF log-probs of the residue after <extra_id_0>, with residue i masked."""
    ids = tok.encode(seq)
    s0 = tok.sentinel_id(0)
    enc = np.repeat(ids[None], len(seq), 0)
    enc[np.arange(len(seq)), np.arange(len(seq))] = s0
    labels = np.stack([[s0, ids[i], tok.eos_id] for i in range(len(seq))])
    return _hf_logp(hf, enc, labels)[:, 1]  # [L, vocab]


@pytest.mark.timeout(300)
def test_log_likelihood_matches_hf(pair, seqs):
    model, hf = pair
    ours = model.token_log_probs(seqs)
    for s, o in zip(seqs, ours):
        ids = model.tokenizer.encode(s)
        ref = _hf_logp(hf, ids[None], ids[None])[0]
        ref = ref[np.arange(len(ids)), ids]
        assert o.shape == (len(s) + 1,)
        np.testing.assert_allclose(o, ref, atol=1e-4)
    np.testing.assert_allclose(model.log_likelihood(seqs), [o.sum() for o in ours], rtol=1e-6)


@pytest.mark.timeout(300)
def test_pseudo_log_likelihood_matches_hf(pair, seqs):
    model, hf = pair
    res = model.score(seqs)
    mm = model.masked_marginals(seqs)
    for s, r, m in zip(seqs, res, mm):
        ref = _hf_masked_marginals(hf, model.tokenizer, s)
        np.testing.assert_allclose(m, ref, atol=1e-4)
        ids = model.tokenizer.encode(s)[:-1]
        ref_res = ref[np.arange(len(s)), ids]
        np.testing.assert_allclose(r["per_residue_log_probs"], ref_res, atol=1e-4)
        assert abs(r["pseudo_log_likelihood"] - ref_res.sum()) < 1e-3
        assert r["length"] == len(s) and r["sequence"] == s
        assert np.isclose(r["pseudo_perplexity"], np.exp(-ref_res.sum() / len(s)), rtol=1e-4)
    # Batching: a sequence scored alone gets the same PLL as inside the batch.
    alone = model.pseudo_log_likelihood(seqs[1:2])
    assert abs(alone[0] - res[1]["pseudo_log_likelihood"]) < 1e-4


@pytest.mark.timeout(300)
def test_mutation_scores_match_hf(pair, seqs):
    model, hf = pair
    wt = seqs[0]
    p1, p2 = 3, 11
    a1 = "W" if wt[p1] != "W" else "A"
    a2 = "C" if wt[p2] != "C" else "G"
    full = wt[:p1] + a1 + wt[p1 + 1 : p2] + a2 + wt[p2 + 1 :]
    mutants = [f"{wt[p1]}{p1 + 1}{a1}", f"{wt[p1]}{p1 + 1}{a1}:{wt[p2]}{p2 + 1}{a2}", full, wt]
    ours = model.mutation_scores(wt, mutants)
    ref_mm = _hf_masked_marginals(hf, model.tokenizer, wt)
    v = model.tokenizer.vocab
    d1 = ref_mm[p1, v[a1]] - ref_mm[p1, v[wt[p1]]]
    d2 = ref_mm[p2, v[a2]] - ref_mm[p2, v[wt[p2]]]
    np.testing.assert_allclose(ours, [d1, d1 + d2, d1 + d2, 0.0], atol=1e-4)
    assert ours[0] != 0.0


def test_mutation_errors(pair, seqs):
    model, _ = pair
    wt = seqs[0]
    wrong = "W" if wt[0] != "W" else "A"
    with pytest.raises(ValueError, match="wild type has"):
        model.mutation_scores(wt, [f"{wrong}1G"])
    with pytest.raises(ValueError, match="outside"):
        model.mutation_scores(wt, [f"{wt[0]}{len(wt) + 5}G"])
    with pytest.raises(ValueError, match="neither"):
        model.mutation_scores(wt, ["garbage!"])
    with pytest.raises(ValueError, match="sequence 0"):
        model.score(["MKJ"])
