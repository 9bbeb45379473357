"""The encoder-only masked-LM objective and the one-mask-token variant of Ankh's de-masking, on
real UniProt sequences: masking statistics, the same positions as the sentinel objective, the
packed batch's aligned targets, and the encoder-MLM loss against a direct computation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow.parquet as pq
import pytest
from flax import nnx

from ankh.config import PRESETS
from ankh.objective import Objective, ObjectiveConfig
from ankh.packing import PackSpec, build_batch, pack_rows
from ankh.tokenizer import AnkhTokenizer
from ankh.training import build_model, graphdef_of, loss_sums

TOK = AnkhTokenizer()
MASK = TOK.sentinel_id(0)


@pytest.fixture(scope="module")
def real_residues(protein_parquet):
    seqs = pq.read_table(protein_parquet, columns=["sequence"])["sequence"].to_pylist()[:400]
    return [TOK.encode(s, add_eos=False) for s in seqs]


def test_mlm_statistics_and_positions_equal_the_sentinel_objective(real_residues):
    mlm = Objective(ObjectiveConfig(mask_prob=0.15, max_residues=256, kind="mlm"))
    ankh = Objective(ObjectiveConfig(mask_prob=0.15, max_residues=256))
    kinds = np.zeros(3)  # mask token, random residue, kept
    selected = total = 0
    for i, res in enumerate(real_residues):
        enc, tgt = mlm(res, seed=1, epoch=0, example_id=i)
        n = min(len(res), 256)
        assert len(enc) == len(tgt) == n + 1 and enc[-1] == TOK.eos_id and tgt[-1] == TOK.pad_id
        pos = np.flatnonzero(tgt != TOK.pad_id)
        assert len(pos) == max(1, round(0.15 * n))
        # the same crop and the same selected positions as the sentinel objective's draws
        a_enc, _ = ankh(res, seed=1, epoch=0, example_id=i)
        assert np.flatnonzero(a_enc[:-1] >= 28).tolist() == pos.tolist()
        orig = mlm.reconstruct(enc, tgt)
        assert np.array_equal(np.delete(enc[:-1], pos), np.delete(orig, pos))  # rest untouched
        assert np.all((tgt[pos] >= 3) & (tgt[pos] < 28))
        is_mask = enc[pos] == MASK
        kept = ~is_mask & (enc[pos] == tgt[pos])
        kinds += [is_mask.sum(), (~is_mask & ~kept).sum(), kept.sum()]
        selected += len(pos)
        total += n
    frac = kinds / kinds.sum()
    # 80/10/10; a random residue equal to the original counts as kept (~1/25 of the 10 %)
    assert abs(frac[0] - 0.8) < 0.01 and abs(frac[1] - 0.096) < 0.01 and abs(frac[2] - 0.104) < 0.01
    assert abs(selected / total - 0.15) < 0.005


def test_heldout_mlm_masks_every_selected_residue():
    obj = Objective(ObjectiveConfig(mask_prob=0.15, kind="mlm", mlm_random=0.0, mlm_keep=0.0))
    res = TOK.encode("MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ", add_eos=False)
    enc, tgt = obj(res, seed=0, epoch=0, example_id=3)
    pos = np.flatnonzero(tgt != TOK.pad_id)
    assert np.all(enc[pos] == MASK) and np.sum(enc == MASK) == len(pos) == 5
    assert tgt[pos].tolist() == res[pos].tolist()


def test_shared_mask_uses_one_token_and_round_trips(real_residues):
    shared = Objective(ObjectiveConfig(mask_prob=0.2, max_residues=512, shared_mask=True))
    distinct = Objective(ObjectiveConfig(mask_prob=0.2, max_residues=512))
    enc, tgt = shared.mask_at(TOK.encode("ABCDEFG", add_eos=False), np.array([2, 6]))
    assert TOK.decode(enc) == "AB<extra_id_0>DEF<extra_id_0>"
    assert tgt.tolist() == [MASK, TOK.vocab["C"], MASK, TOK.vocab["G"], TOK.eos_id]
    for i, res in enumerate(real_residues[:100]):
        e, t = shared(res, 5, 0, i)
        d_e, d_t = distinct(res, 5, 0, i)
        assert np.array_equal(e >= 28, d_e >= 28) and set(e[e >= 28].tolist()) == {MASK}
        assert np.array_equal(t[1:-1:2], d_t[1:-1:2])  # the same residues to predict
        assert np.array_equal(shared.reconstruct(e, t), distinct.reconstruct(d_e, d_t))
    # long sequences need no more sentinels than the vocabulary has
    Objective(ObjectiveConfig(mask_prob=0.5, max_residues=512, shared_mask=True))


def test_mlm_refuses_span_settings():
    with pytest.raises(ValueError, match="mlm"):
        ObjectiveConfig(kind="mlm", mean_span=3.0)
    with pytest.raises(ValueError, match="mlm_random"):
        ObjectiveConfig(kind="mlm", mlm_random=0.6, mlm_keep=0.6)


def _mlm_batch(real_residues, rows=4, enc_len=136):
    obj = Objective(ObjectiveConfig(mask_prob=0.15, max_residues=64, kind="mlm"))
    pairs = [obj(r, 0, 0, i) for i, r in enumerate(real_residues[:8])]
    spec = PackSpec(rows=rows, enc_len=enc_len, dec_len=enc_len, max_segments=8)
    packed = pack_rows([len(e) for e, _ in pairs], [len(t) for _, t in pairs], spec)
    assert len(packed) <= rows
    b = build_batch(packed, [e for e, _ in pairs], [t for _, t in pairs], list(range(8)), spec)
    return pairs, b


def test_packed_mlm_targets_align_with_the_input(real_residues):
    pairs, b = _mlm_batch(real_residues)
    # same offsets on both sides: each target sits under the input token it was masked from
    assert np.array_equal(b["segment_ids"], b["decoder_segment_ids"])
    sel = b["loss_mask"] > 0
    assert sel.sum() == sum(int((t != TOK.pad_id).sum()) for _, t in pairs)
    assert np.all(b["labels"][~sel] == TOK.pad_id)
    assert np.all(
        (b["input_ids"][sel] == MASK) | ((b["input_ids"][sel] >= 3) & (b["input_ids"][sel] < 28))
    )


def test_encoder_mlm_loss_equals_a_direct_computation(real_residues):
    cfg = PRESETS["tiny"]
    _, b = _mlm_batch(real_residues)
    model = build_model(cfg, seed=0)
    params = nnx.split(model)[1].to_pure_dict()
    graphdef = graphdef_of(cfg)
    batch = {k: jnp.asarray(v) for k, v in b.items() if k != "example_ids"}
    ce, sums = loss_sums(graphdef, params, batch, encoder_only=True)
    # direct: encoder states -> untied head -> log-softmax, CE at the selected positions only
    h = np.asarray(model.encode(batch["input_ids"], batch["segment_ids"], batch["positions"]))
    logits = h.astype(np.float64) @ np.asarray(params["lm_head"], np.float64)
    m = logits.max(-1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
    sel = b["loss_mask"] > 0
    want = -np.take_along_axis(logp, b["labels"][..., None], -1)[..., 0][sel].sum()
    assert float(ce) == pytest.approx(want, rel=1e-5)
    assert float(sums["tokens"]) == sel.sum()
    # the decoder is not read: other decoder inputs, the same loss
    other = dict(batch, decoder_input_ids=jnp.full_like(batch["decoder_input_ids"], 7))
    assert float(loss_sums(graphdef, params, other, encoder_only=True)[0]) == float(ce)
    # and the gradient reaches the encoder and the head, never the decoder
    g = jax.grad(lambda p: loss_sums(graphdef, p, batch, encoder_only=True)[0])(params)
    assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(g["decoder"]))
    assert float(jnp.abs(g["lm_head"]).max()) > 0 and float(jnp.abs(g["shared"]).max()) > 0
