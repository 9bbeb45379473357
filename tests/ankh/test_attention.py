"""Blocked attention (long rows) equals HF T5 and the dense path; the fused-kernel route too.

Rows over ``DENSE_MAX_KEYS_CPU`` keys take the blocked path on CPU, so the model-level tests
here run it for real: lengths that are not a multiple of the tile, padding, packed segments,
the causal decoder and cross attention, up to 4,096 tokens (small width: seconds).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")  # test extra; .ci/run installs it
from flax import nnx  # noqa: E402

import ankh  # noqa: E402
from ankh import accelerator, attention  # noqa: E402
from ankh.layers import RelativeBias, relative_position_bucket  # noqa: E402
from tests.ankh.hf_reference import hf_model, parity_config, real_sequences  # noqa: E402

TOL = 1e-5


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    cfg = parity_config("gelu_new")
    ref = hf_model(cfg, seed=2)
    path = tmp_path_factory.mktemp("hf-long")
    ref.save_pretrained(path)
    return ref, ankh.load(str(path))


def _close(ours, theirs, where=None):
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    if where is not None:
        ours, theirs = ours[where], theirs[where]
    assert np.abs(ours - theirs).max() < TOL * max(1.0, np.abs(theirs).max())


def _encode(model, ids, seg, positions=None):
    fn = jax.jit(lambda p, i, s, pos: nnx.merge(model.graphdef, p).encode(i, s, pos))
    return np.asarray(fn(model.params, ids, seg, positions))


def _hf_encode(ref, ids, mask):
    with torch.no_grad():
        return ref.encoder(
            input_ids=torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long()
        ).last_hidden_state.numpy()


def test_choice_by_length_on_cpu():
    assert accelerator.backend() == "cpu"
    cut = attention.DENSE_MAX_KEYS_CPU
    assert attention.attention_impl(4, 8, 64, cut, cut, jnp.float32) == "dense"
    assert attention.attention_impl(4, 8, 64, cut + 1, cut + 1, jnp.bfloat16) == "blocked"
    assert attention.query_tile(4, 8, 1000, 1000) * 4 * 8 * 1000 * 4 <= attention.TILE_BYTES_CPU
    # Short rows whose whole scores outgrow the cache: the 4,096-token batch of the 384 rung.
    rows = 4096 // cut
    assert rows * 8 * cut * cut * 4 > attention.DENSE_MAX_BYTES_CPU
    assert attention.attention_impl(rows, 8, 64, cut, cut, jnp.float32) == "blocked"
    assert attention.attention_impl(16, 8, 64, 256, 256, jnp.float32) == "dense"


def test_padded_batch_across_tiles_matches_hf(pair):
    ref, ours = pair
    seqs = real_sequences(3, 400, 1300, seed=5)  # one row's padding spans whole tiles
    ids, mask = ours.tokenizer.batch_encode(seqs)
    assert ids.shape[1] > attention.DENSE_MAX_KEYS_CPU and ids.shape[1] % 16
    _close(_encode(ours, ids, mask), _hf_encode(ref, ids, mask), mask.astype(bool))


def test_4096_tokens_match_hf(pair):
    ref, ours = pair
    seq = real_sequences(1, 4095, seed=1)[0][:4095]
    ids, mask = ours.tokenizer.batch_encode([seq])
    assert ids.shape == (1, 4096)
    _close(_encode(ours, ids, mask), _hf_encode(ref, ids, mask))


def test_packed_segments_never_mix(pair):
    """Three sequences packed in one 1,100-token row (positions restarting, padded tail) give
    each sequence's own HF encoding: no attention or relative position crosses segments."""
    ref, ours = pair
    seqs = real_sequences(3, 200, 420, seed=7)
    toks = [ours.tokenizer.encode(s) for s in seqs]
    width = 1100
    ids, seg, pos = (np.zeros((1, width), np.int32) for _ in range(3))
    at = 0
    for k, t in enumerate(toks, 1):
        span = slice(at, at + len(t))
        ids[0, span], seg[0, span], pos[0, span] = t, k, np.arange(len(t))
        at += len(t)
    out = _encode(ours, ids, seg, pos)[0]
    at = 0
    for t in toks:
        _close(out[at : at + len(t)], _hf_encode(ref, t[None], np.ones((1, len(t))))[0])
        at += len(t)


def test_long_decoder_self_and_cross_attention_match_hf(pair):
    ref, ours = pair
    seqs = real_sequences(2, 450, 700, seed=9)
    ids, mask = ours.tokenizer.batch_encode(seqs)
    dec_in = np.random.default_rng(0).integers(3, 28, size=(2, 509)).astype(np.int32)
    dec_in[:, 0] = 0
    with torch.no_grad():
        theirs = ref(
            input_ids=torch.tensor(ids).long(),
            attention_mask=torch.tensor(mask).long(),
            decoder_input_ids=torch.tensor(dec_in).long(),
        ).logits.numpy()

    @jax.jit
    def run(p):
        m = nnx.merge(ours.graphdef, p)
        return m.decode(dec_in, m.encode(ids, mask), mask)

    _close(run(ours.params), theirs)


# ---- function level: blocked == dense == dot_product_attention --------------------------------
def _spec(b, lq, lk, h, causal=False, packed=False, seed=0):
    rng = np.random.default_rng(seed)
    k_seg = np.ones((b, lk), np.int32)
    k_seg[-1, lk - 29 :] = 0  # a padded row
    if packed:  # two segments, positions restarting at the boundary
        k_seg[0, lk // 3 :] = 2
    q_seg = k_seg if lq == lk else np.ones((b, lq), np.int32)
    pos = np.broadcast_to(np.arange(lq), (b, lq)).copy()
    if packed:
        pos[0, lq // 3 :] -= lq // 3
    rb = RelativeBias(parity_config("silu").replace(num_heads=h), not causal, nnx.Rngs(seed))
    table = rb.table() if lq == lk else None
    p = jnp.asarray(pos) if table is not None else None
    spec = attention.TokenBias(jnp.asarray(q_seg), jnp.asarray(k_seg), p, p, table, causal=causal)
    q, k, v = (jnp.asarray(rng.normal(0, 0.5, (b, n, h, 16)), jnp.float32) for n in (lq, lk, lk))
    return spec, q, k, v, (q_seg > 0)[:, :, None, None]


@pytest.mark.parametrize(
    "lq,lk,causal,packed",
    [(203, 203, False, True), (203, 203, True, False), (77, 203, False, False)],
)
def test_blocked_equals_dense(lq, lk, causal, packed):
    spec, q, k, v, valid = _spec(2, lq, lk, 4, causal, packed)
    dense = attention.dense_attention(q, k, v, spec.dense())
    for tile in (16, 64):  # many tiles, the last one partial
        out = attention.blocked_attention(q, k, v, spec, tile=tile)
        np.testing.assert_allclose(np.where(valid, out, 0), np.where(valid, dense, 0), atol=2e-6)


def test_blocked_gradients_equal_dense():
    spec, q, k, v, valid = _spec(2, 150, 150, 4, causal=True, packed=True)
    w = jnp.asarray(valid, jnp.float32)

    def loss(fn, q, table):
        return jnp.sum(fn(q, dataclasses.replace(spec, table=table)) ** 2 * w)

    dense = jax.grad(
        lambda q, t: loss(lambda q, s: attention.dense_attention(q, k, v, s.dense()), q, t), (0, 1)
    )(q, spec.table)
    blocked = jax.grad(
        lambda q, t: loss(lambda q, s: attention.blocked_attention(q, k, v, s, 32), q, t), (0, 1)
    )(q, spec.table)
    for a, b in zip(dense, blocked):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype,atol", [(jnp.float32, 2e-6), (jnp.bfloat16, 3e-2)])
def test_dot_product_attention_route_equals_blocked(dtype, atol):
    """The fused-kernel route (``jax.nn.dot_product_attention``; 'xla' here, 'cudnn' on GPU)
    with the T5 bias gives the blocked path's numbers, in float32 and bfloat16."""
    spec, q, k, v, valid = _spec(2, 203, 203, 4, causal=False, packed=True)
    q, k, v = (x.astype(dtype) for x in (q, k, v))
    fused = attention.attend(q, k, v, attention.with_impl(spec, "xla", dtype))
    blocked = attention.attend(q, k, v, attention.with_impl(spec, "blocked", dtype))
    assert fused.dtype == blocked.dtype == dtype
    np.testing.assert_allclose(
        np.where(valid, fused.astype(jnp.float32), 0),
        np.where(valid, blocked.astype(jnp.float32), 0),
        atol=atol,
    )


@pytest.mark.parametrize("bidirectional", [True, False])
def test_offset_table_is_exact_far_beyond_its_reach(bidirectional):
    rb = RelativeBias(parity_config("silu"), bidirectional, nnx.Rngs(0))
    r = rb.reach()
    assert r == rb.max_distance + 1
    rel = jnp.asarray([-(10**6), -5000, -r - 1, -r, -3, 0, 5, r, r + 1, 5000, 10**6])
    direct = relative_position_bucket(rel, bidirectional, rb.weight.shape[0], rb.max_distance)
    clipped = relative_position_bucket(
        jnp.clip(rel, -r, r), bidirectional, rb.weight.shape[0], rb.max_distance
    )
    np.testing.assert_array_equal(direct, clipped)


def test_compute_dtype_default_follows_backend():
    assert accelerator.default_compute_dtype() == "float32"  # CPU
    assert accelerator.compute_dtype("auto") == accelerator.compute_dtype(None) == jnp.float32
    assert accelerator.compute_dtype("bfloat16") == jnp.bfloat16
    with pytest.raises(ValueError, match="dtype must be one of"):
        accelerator.compute_dtype("float16")


def test_additive_mask_rules():
    """The one mask builder: padding, segments, causal by index, a decode step's position."""
    neg = attention.NEG_INF
    k_seg = jnp.array([[1, 1, 2, 0]])
    pad = attention.additive_mask(k_seg)  # [1, 1, 1, 4]: every query sees the real keys
    assert pad.shape == (1, 1, 1, 4) and pad.dtype == jnp.float32
    assert pad[0, 0, 0].tolist() == [0, 0, 0, neg]
    both = attention.additive_mask(k_seg, k_seg, jnp.arange(4))[0, 0]  # [4, 4]
    want = [[0, neg, neg, neg], [0, 0, neg, neg], [neg, neg, 0, neg], [neg] * 4]
    assert np.asarray(both).tolist() == np.float32(want).tolist()
    step = attention.additive_mask(None, q_idx=jnp.int32(2), k_len=5)  # cache position 2
    assert step.shape == (1, 1, 1, 5) and step[0, 0, 0].tolist() == [0, 0, 0, neg, neg]
    with pytest.raises(ValueError, match="k_seg"):
        attention.additive_mask(None)


# ---- packed rows: the segments path (key tiles outside a query tile's proteins skipped) ------
def _packed_spec(b, n, h, seed=0):
    """Rows of real-looking packing: runs of 1..3 tiles' worth, a padded tail, one empty row."""
    rng = np.random.default_rng(seed)
    seg, pos = np.zeros((b, n), np.int32), np.zeros((b, n), np.int32)
    for r in range(b - 1):
        at, k = 0, 1
        while (m := int(rng.integers(5, 60))) < n - at - 3:
            seg[r, at : at + m], pos[r, at : at + m] = k, np.arange(m)
            at, k = at + m, k + 1
    rb = RelativeBias(parity_config("silu").replace(num_heads=h), True, nnx.Rngs(seed))
    s, p = jnp.asarray(seg), jnp.asarray(pos)
    spec = attention.TokenBias(s, s, p, p, rb.table(), packed=True)
    q, k, v = (jnp.asarray(rng.normal(0, 0.5, (b, n, h, 16)), jnp.float32) for _ in range(3))
    return spec, q, k, v, (seg > 0)[:, :, None, None]


@pytest.mark.parametrize("tile", [16, 32])
def test_segments_path_equals_dense(tile):
    spec, q, k, v, valid = _packed_spec(3, 203, 4)
    dense = attention.dense_attention(q, k, v, spec.dense())
    out = jax.jit(lambda q, k, v: attention.segment_attention(q, k, v, spec, tile))(q, k, v)
    assert np.isfinite(np.asarray(out)).all()  # padding rows and an empty row: no NaN
    np.testing.assert_allclose(np.where(valid, out, 0), np.where(valid, dense, 0), atol=2e-6)
    assert attention.prepare(spec, 4, 16, jnp.float32).impl == "segments"  # packed rows on CPU


def test_segment_spans_are_each_tokens_run():
    seg = jnp.array([[1, 1, 2, 2, 2, 3, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]])
    start, end = attention.segment_spans(seg)
    assert start.tolist() == [[0, 0, 2, 2, 2, 5, 8, 8], [0] * 8]
    assert end.tolist() == [[2, 2, 5, 5, 5, 6, 0, 0], [8] * 8]


def _pack(model, seqs, width):
    """One packed row as the batch-embedding job lays it out: ids, segments, positions and the
    pooling weights (1/n per residue, 0 for </s> and padding), plus each protein's span."""
    ids, seg, pos = (np.zeros((1, width), np.int32) for _ in range(3))
    wt, spans, at = np.zeros((1, width), np.float32), [], 0
    for k, s in enumerate(seqs, 1):
        t = model.tokenizer.encode(s)
        ids[0, at : at + len(t)], seg[0, at : at + len(t)] = t, k
        pos[0, at : at + len(t)], wt[0, at : at + len(s)] = np.arange(len(t)), 1.0 / len(s)
        spans.append((at, len(s)))
        at += len(t)
    assert at <= width
    return (ids, seg, pos, wt), spans


# the benchmark's two mixes, scaled to the test: short proteins in a 512 row, long in 1,088
MIXES = {"short": (4, 30, 150, 512), "long": (3, 120, 420, 1088)}


@pytest.mark.parametrize("mix", MIXES)
def test_packed_rows_embed_each_protein_like_hf_alone(pair, mix):
    """The embedding program on a packed row (the segments path, as ``jobs.embed`` runs it):
    each protein's per-residue states and pooled mean equal HF's on that protein alone."""
    from ankh.embedding import jit_encoder

    ref, ours = pair
    n, lo, hi, width = MIXES[mix]
    seqs = real_sequences(n, lo, hi, seed=11)
    batch, spans = _pack(ours, seqs, width)
    out = jit_encoder(ours.graphdef, per_residue=True, max_segments=n)(ours.params, *batch)
    for k, (s, (at, m)) in enumerate(zip(seqs, spans)):
        t = ours.tokenizer.encode(s)
        theirs = _hf_encode(ref, t[None], np.ones((1, len(t))))[0, :m]  # drop </s>
        _close(np.asarray(out["hidden"])[0, at : at + m], theirs)
        _close(np.asarray(out["pooled"])[0, k], theirs.astype(np.float64).mean(0))


def test_a_protein_never_attends_its_neighbour(pair, monkeypatch):
    """Alone vs packed beside others with the segments path forced: the same states. The same
    check fails for a segments path whose mask lets queries see the neighbours in their tiles."""
    _, ours = pair
    seqs = real_sequences(3, 100, 300, seed=13)
    batch, spans = _pack(ours, seqs, 1088)

    def packed():
        fn = jax.jit(lambda p, i, s, q: nnx.merge(ours.graphdef, p).encode(i, s, q, packed=True))
        return np.asarray(fn(ours.params, *batch[:3]))[0]

    def gap():
        out = packed()
        alone = [_encode(ours, *ours.tokenizer.batch_encode([s]))[0, : len(s)] for s in seqs]
        return max(np.abs(out[at : at + m] - a).max() for (at, m), a in zip(spans, alone))

    assert gap() < TOL
    real = attention.additive_mask
    monkeypatch.setattr(  # broken: the segment rule dropped (padding only)
        attention, "additive_mask", lambda k_seg, q_seg=None, *a, **kw: real(k_seg, None, *a, **kw)
    )
    assert gap() > 100 * TOL
