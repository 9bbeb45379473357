"""Packing: every example once, the batch format, and packed == alone through the model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pyarrow.parquet as pq
import pytest
from flax import nnx

from ankh.config import get_preset
from ankh.model import AnkhModel
from ankh.objective import Objective, ObjectiveConfig
from ankh.packing import PackSpec, build_batch, pack_rows, padding_waste, unpack
from ankh.tokenizer import AnkhTokenizer

TOK = AnkhTokenizer()


@pytest.fixture(scope="module")
def pairs(protein_parquet):
    seqs = pq.read_table(protein_parquet, columns=["sequence"])["sequence"].to_pylist()[:400]
    obj = Objective()
    return [obj(TOK.encode(s, add_eos=False), 0, 0, i) for i, s in enumerate(seqs)]


def test_pack_rows_each_item_once_within_limits(pairs):
    spec = PackSpec(rows=4, enc_len=1040, dec_len=440, max_segments=6)
    el = [len(e) for e, _ in pairs]
    dl = [len(t) for _, t in pairs]
    rows = pack_rows(el, dl, spec)
    flat = sorted(i for r in rows for i in r)
    assert flat == list(range(len(pairs)))
    for r in rows:
        assert sum(el[i] for i in r) <= spec.enc_len and sum(dl[i] for i in r) <= spec.dec_len
        assert len(r) <= spec.max_segments
    fill = sum(el) / (len(rows) * spec.enc_len)
    assert fill > 0.9, fill  # first-fit decreasing packs real lengths tightly
    with pytest.raises(ValueError, match="does not fit"):
        pack_rows([2000], [10], spec)


def test_batch_format_matches_interface(pairs):
    spec = PackSpec(rows=8, enc_len=1040, dec_len=440, max_segments=32)
    encs, tgts = [p[0] for p in pairs[:40]], [p[1] for p in pairs[:40]]
    ids = np.arange(1000, 1040)
    rows = pack_rows([len(e) for e in encs], [len(t) for t in tgts], spec)[:8]
    b = build_batch(rows, encs, tgts, ids, spec)
    shapes = {
        "input_ids": (8, 1040),
        "segment_ids": (8, 1040),
        "positions": (8, 1040),
        "decoder_input_ids": (8, 440),
        "decoder_segment_ids": (8, 440),
        "decoder_positions": (8, 440),
        "labels": (8, 440),
        "loss_mask": (8, 440),
        "example_ids": (8, 32),
    }
    assert {k: v.shape for k, v in b.items()} == shapes
    assert {k: v.dtype.name for k, v in b.items()} == {
        **{k: "int32" for k in shapes},
        "loss_mask": "float32",
        "example_ids": "int64",
    }
    for ex, enc, tgt in unpack(b):
        i = ex - 1000
        assert np.array_equal(enc, encs[i]) and np.array_equal(tgt, tgts[i])
    r0 = b["decoder_segment_ids"][0]
    for s in range(1, r0.max() + 1):
        sel = r0 == s
        assert b["decoder_input_ids"][0][sel][0] == 0  # each segment starts with decoder_start
        assert np.array_equal(b["decoder_input_ids"][0][sel][1:], b["labels"][0][sel][:-1])
        assert np.array_equal(b["decoder_positions"][0][sel], np.arange(sel.sum()))
        assert np.array_equal(
            b["positions"][0][b["segment_ids"][0] == s], np.arange(np.sum(b["segment_ids"][0] == s))
        )
    assert np.array_equal(b["loss_mask"] > 0, b["decoder_segment_ids"] > 0)
    assert np.all(b["labels"][b["loss_mask"] == 0] == 0)
    w = padding_waste(b)
    assert 0 <= w["total"] < 0.5


def test_packed_row_equals_each_sequence_alone(protein_parquet):
    """Attention and relative positions never cross segments (tiny model, float32)."""
    model = AnkhModel(get_preset("tiny"), nnx.Rngs(0))
    seqs = pq.read_table(protein_parquet, columns=["sequence"])["sequence"].to_pylist()[:3]
    obj = Objective(ObjectiveConfig(max_residues=90))
    chosen = [obj(TOK.encode(s, add_eos=False), 0, 0, i) for i, s in enumerate(seqs)]
    spec = PackSpec(
        rows=2,
        enc_len=sum(len(e) for e, _ in chosen) + 7,
        dec_len=sum(len(t) for _, t in chosen) + 5,
        max_segments=4,
    )
    b = build_batch([[0, 1, 2]], [p[0] for p in chosen], [p[1] for p in chosen], [0, 1, 2], spec)
    run = jax.jit(lambda *a: model(*a))
    keys = (
        "input_ids",
        "segment_ids",
        "decoder_input_ids",
        "decoder_segment_ids",
        "positions",
        "decoder_positions",
    )
    packed = np.asarray(run(*[jnp.asarray(b[k]) for k in keys]))  # [2, Ld, vocab]
    # The same sequences one per row (ordinary padded batch): each sequence alone.
    alone_spec = PackSpec(
        rows=3,
        enc_len=max(len(e) for e, _ in chosen),
        dec_len=max(len(t) for _, t in chosen),
        max_segments=1,
    )
    a = build_batch(
        [[0], [1], [2]], [p[0] for p in chosen], [p[1] for p in chosen], [0, 1, 2], alone_spec
    )
    alone = np.asarray(run(*[jnp.asarray(a[k]) for k in keys]))  # [3, Ld', vocab]
    for s, (_, tgt) in enumerate(chosen):
        got = packed[0][b["decoder_segment_ids"][0] == s + 1]
        np.testing.assert_allclose(got, alone[s, : len(tgt)], atol=2e-4, rtol=2e-4)
    assert not np.allclose(alone[0, :5], alone[1, :5])  # outputs depend on the sequence
    assert b["loss_mask"][1].sum() == 0  # the padding row has no targets
