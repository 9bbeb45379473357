"""Attention over whole sequences, and the one place that picks how it is computed.

A stack describes what each query may see per *token* (``TokenBias``: segment ids, positions,
the relative-position bias per clipped offset), never per pair; ``prepare`` then picks the way
(``attention_impl``, by length, dtype and backend):

- ``dense``: the bias ``[b, h, q, k]`` built once per stack and the scores held whole -- what
  is fastest on CPU while a row of scores is short (up to 384 keys) and all of them stay near
  cache size (36 MiB; see ``DENSE_MAX_BYTES_CPU``).
- ``blocked``: query tiles under ``lax.map``; each tile builds its own relative bias (a gather
  from the ``[h, 2R+1]`` per-offset table) and its own segment mask, so the live scores are one
  tile (a few MiB on CPU, cache-sized) and no ``[h, L, L]`` array exists. The tile body is
  rematerialised in the backward pass, so training memory is O(tile) too.
- ``segments``: packed rows (``TokenBias.packed``: several sequences per row, each one
  contiguous run of its segment id; the batch-embedding job's rows). Block-diagonal by
  segment: each (row, query tile) loops (``lax.fori_loop``, online softmax) over only the key
  tiles from the first to the last key of the segments its queries belong to, found from the
  segment ids (``segment_spans``); key tiles of other proteins are never computed. Each
  computed tile gets its own segment mask and relative bias, as on the blocked path.
  Inference only (the loop's dynamic trip count has no reverse-mode derivative).
- a fused kernel: ``jax.nn.dot_product_attention`` (cuDNN on GPU for bfloat16) with the bias
  built once per stack in the compute dtype (packed rows included: masked there, not skipped).

Packed rows never attend across segments (the mask is part of every tile). Every attention
mask in ``ankh`` -- segments, causal, padding, a decode step's cache positions -- is built by
``additive_mask`` with the one ``NEG_INF``. Shapes: b=batch, q/k=query/key length, h=heads,
d=d_kv, t=query tile, P=1 or b (positions shared or per row).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from ankh import accelerator

NEG_INF = -1e9  # additive mask; exp() underflows to exactly 0 like HF's finfo.min

DENSE_MAX_KEYS_CPU = 384  # above this many keys the blocked path is faster on CPU
# ... and above this many bytes of float32 scores [b, h, q, k]: scores that outgrow the CPU's
# cache run faster one query tile at a time, so the 4,096-token batches of the 320 and 384 rungs
# go blocked. Measured by `python -m jobs.benchmark embed --preset d512x8 --batch 10 --length 384
# --reference none` against `--batch 16 --length 256` (docs/benchmarks.md).
DENSE_MAX_BYTES_CPU = 36 << 20
TILE_BYTES_CPU = (
    16 << 20
)  # one tile's float32 scores on CPU: L3-sized (`jobs.benchmark embed --batch 1 --length 4000`)
DENSE_MAX_BYTES = 1 << 30  # accelerators: whole scores up to this size, blocked beyond
TILE_BYTES = 256 << 20  # accelerators: one query tile's scores
# Packed rows (``TokenBias.packed``) of at least this many keys take the ``segments`` path
# (block-diagonal by segment, key tiles outside a query tile's segments skipped); shorter
# ones stay dense/blocked. SEGMENT_TILE: queries and keys per tile of that path.
SEGMENTS_MIN_KEYS = 0
SEGMENT_TILE = 128


def additive_mask(
    k_seg: jax.Array | None,
    q_seg: jax.Array | None = None,
    q_idx: jax.Array | None = None,
    k_len: int | None = None,
) -> jax.Array:
    """The attention mask, float32 ``[b|1, 1, q|1, k]``: 0 where a query may attend a key,
    ``NEG_INF`` where not. Each argument adds one rule:

    - ``k_seg [b, k]``: padding -- keys of segment 0 are never attended (a 1/0 attention mask
      is a valid ``k_seg``);
    - ``q_seg [b, q]`` (with ``k_seg``): segments -- a query attends keys of its own segment;
    - ``q_idx [q]`` or a scalar: causal -- keys are indexed ``0..k-1`` (``k_len`` of them when
      ``k_seg`` is None) and a query at index ``i`` attends those at ``<= i`` (a decode step
      passes its cache position).
    """
    if k_seg is None and q_idx is None:
        raise ValueError("a mask needs key segments (k_seg) or query indices (q_idx)")
    ok = None
    if k_seg is not None:
        ok = (k_seg > 0)[:, None, :]  # [b, 1, k]
        if q_seg is not None:
            ok = (q_seg[:, :, None] == k_seg[:, None, :]) & ok  # [b, q, k]
    if q_idx is not None:
        k_idx = jnp.arange(k_seg.shape[1] if k_seg is not None else k_len)
        causal = k_idx[None, None, :] <= jnp.reshape(q_idx, (-1,))[None, :, None]  # [1, q, k]
        ok = causal if ok is None else ok & causal
    return jnp.where(ok, 0.0, NEG_INF).astype(jnp.float32)[:, None]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TokenBias:
    """The additive attention bias, described per token.

    ``q_seg [b, q]``, ``k_seg [b, k]``: segment ids (0 = padding); a query attends keys of its
    own segment only. ``q_pos [P, q]``, ``k_pos [P, k]`` and ``table [h, 2R+1]`` (the learned
    bias of offsets ``k_pos - q_pos`` clipped to ``[-R, R]``): the relative-position bias, or
    ``table=None`` for none (cross attention). ``causal``: keys after the query are hidden.
    ``full``: the bias materialised for a fused kernel (set by ``prepare``).
    """

    q_seg: jax.Array
    k_seg: jax.Array
    q_pos: jax.Array | None = None
    k_pos: jax.Array | None = None
    table: jax.Array | None = None
    full: jax.Array | None = None
    causal: bool = dataclasses.field(default=False, metadata={"static": True})
    # Packed rows (several sequences per row, each one contiguous run of its segment id): the
    # ``segments`` path computes only the key tiles a query tile's segments span.
    packed: bool = dataclasses.field(default=False, metadata={"static": True})
    impl: str = dataclasses.field(default="blocked", metadata={"static": True})

    @property
    def reach(self) -> int:
        return (self.table.shape[1] - 1) // 2

    def mask(self, q_seg: jax.Array, q_idx: jax.Array) -> jax.Array:
        """Additive mask [b, 1, t, k] of the queries ``q_seg [b, t]`` at indices ``q_idx [t]``."""
        return additive_mask(self.k_seg, q_seg, q_idx if self.causal else None)

    def relative(self, q_pos: jax.Array, k_pos: jax.Array | None = None) -> jax.Array:
        """Relative-position bias [P, h, t, k] of the queries at positions ``q_pos [P, t]``
        (against ``k_pos [P, k]``, default all keys)."""
        r, k_pos = self.reach, self.k_pos if k_pos is None else k_pos
        off = jnp.clip(k_pos[:, None, :] - q_pos[:, :, None], -r, r) + r  # [P, t, k]
        return jnp.take(self.table, off, axis=1).transpose(1, 0, 2, 3)  # [P, h, t, k]

    def tile(self, q_seg: jax.Array, q_pos: jax.Array | None, q_idx: jax.Array) -> jax.Array:
        """Bias [b|P, h|1, t, k] float32 of one query tile (or of all queries)."""
        bias = self.mask(q_seg, q_idx)
        return bias if self.table is None else self.relative(q_pos) + bias

    def dense(self) -> jax.Array:
        """The whole bias [b, h|1, q, k] float32."""
        return self.tile(self.q_seg, self.q_pos, jnp.arange(self.q_seg.shape[1]))


def attention_impl(
    batch: int, heads: int, head_dim: int, q_len: int, k_len: int, dtype: Any
) -> str:
    """How attention over these shapes runs: ``dense``, ``blocked`` or a fused kernel's name."""
    fused = accelerator.fused_attention_kernel(dtype, head_dim, q_len, k_len)
    if fused is not None:
        return fused
    scores = batch * heads * q_len * k_len * 4  # bytes of the whole float32 scores
    if accelerator.backend() == "cpu":
        small = k_len <= DENSE_MAX_KEYS_CPU and scores <= DENSE_MAX_BYTES_CPU
        return "dense" if small else "blocked"
    return "dense" if scores <= DENSE_MAX_BYTES else "blocked"


def query_tile(batch: int, heads: int, q_len: int, k_len: int) -> int:
    """Queries per tile: the largest power of two (16..256, at most the padded query length)
    whose float32 scores ``[b, h, t, k]`` fit the backend's tile budget."""
    budget = TILE_BYTES_CPU if accelerator.backend() == "cpu" else TILE_BYTES
    t = 256
    while t > 16 and batch * heads * t * k_len * 4 > budget:
        t //= 2
    while t > 16 and t // 2 >= q_len:
        t //= 2
    return t


def prepare(spec: TokenBias, heads: int, head_dim: int, dtype: Any) -> TokenBias | jax.Array:
    """What a stack hands its layers: the dense bias array, or ``spec`` set up for its path."""
    b, q = spec.q_seg.shape
    impl = attention_impl(b, heads, head_dim, q, spec.k_seg.shape[1], dtype)
    if spec.packed and impl in ("dense", "blocked") and q >= SEGMENTS_MIN_KEYS:
        impl = "segments"
    if impl == "dense":
        return spec.dense()
    return with_impl(spec, impl, dtype)


def with_impl(spec: TokenBias, impl: str, dtype: Any) -> TokenBias:
    """``spec`` to run as ``impl`` (``blocked``, or ``cudnn``/``xla`` through
    ``jax.nn.dot_product_attention`` with the bias built once here, in ``dtype``)."""
    full = None if impl in ("blocked", "segments") else spec.dense().astype(dtype)
    return dataclasses.replace(spec, impl=impl, full=full)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, bias: TokenBias | jax.Array) -> jax.Array:
    """Softmax attention without the 1/sqrt(d) scale (T5 folds it into the init).

    q [b, q, h, d], k/v [b, k, h, d]; ``bias`` a ``TokenBias`` or a dense additive array
    ``[b|1, h|1, q, k]`` (one-token decode steps). Returns the context [b, q, h, d].
    """
    if not isinstance(bias, TokenBias):
        return dense_attention(q, k, v, bias)
    if bias.impl == "blocked":
        return blocked_attention(q, k, v, bias)
    if bias.impl == "segments":
        return segment_attention(q, k, v, bias)
    return jax.nn.dot_product_attention(
        q, k, v, bias=bias.full, scale=1.0, implementation=bias.impl
    )


def dense_attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array) -> jax.Array:
    """Scores held whole; ``bias [b|1, h|1, q, k]`` float32. Returns [b, q, h, d]."""
    # Full sequences: batched matmuls in [b, h, ., .] layout (XLA:CPU runs them ~2x faster
    # than the einsums). One-token decode steps: einsums, so the KV cache is not transposed
    # (copied) at every step.
    if q.shape[1] == 1:
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k)  # [b, h, 1, k]
        w, denom = _softmax_parts(scores, bias, q.dtype)
        return (jnp.einsum("bhqk,bkhd->bhqd", w, v) / denom).transpose(0, 2, 1, 3)
    scores = q.transpose(0, 2, 1, 3) @ k.transpose(0, 2, 3, 1)  # [b, h, q, k]
    w, denom = _softmax_parts(scores, bias, q.dtype)
    return ((w @ v.transpose(0, 2, 1, 3)) / denom).transpose(0, 2, 1, 3)  # [b, q, h, d]


def _softmax_parts(scores: jax.Array, bias: jax.Array, dtype: Any) -> tuple[jax.Array, jax.Array]:
    """Unnormalised weights and their row sums: the softmax is normalised after the PV product,
    so the divide touches [q, d], not [q, k]."""
    s = scores.astype(jnp.float32) + bias
    m = jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True))  # [b, h, q, 1]
    w = jnp.exp(s - m).astype(dtype)  # [b, h, q, k]
    return w, jnp.sum(w, axis=-1, keepdims=True, dtype=jnp.float32).astype(dtype)


def blocked_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, spec: TokenBias, tile: int | None = None
) -> jax.Array:
    """Attention one query tile at a time (``lax.map``), each tile with its own bias.

    Every key is in every tile (no online softmax): on CPU a tile of full score rows is
    already cache-sized, and one pass over the keys keeps the matmuls large.
    """
    b, lq, h, d = q.shape
    lk = k.shape[1]
    t = tile or query_tile(b, h, lq, lk)
    n = -(-lq // t)
    pad = n * t - lq  # padded queries get segment 0: their rows are computed, then dropped

    def tiles(x: jax.Array, axis: int) -> jax.Array:  # split the query axis: [n, ..., t, ...]
        x = jnp.pad(x, [(0, pad if i == axis else 0) for i in range(x.ndim)])
        x = x.reshape(*x.shape[:axis], n, t, *x.shape[axis + 1 :])
        return jnp.moveaxis(x, axis, 0)

    qt = tiles(q.transpose(0, 2, 1, 3), 2)  # [n, b, h, t, d]
    seg = tiles(spec.q_seg, 1)  # [n, b, t]
    pos = tiles(spec.q_pos, 1) if spec.table is not None else jnp.zeros((n, 1, t), jnp.int32)
    idx = jnp.arange(n * t).reshape(n, t)  # [n, t] query indices (the causal mask)
    kt, vt = k.transpose(0, 2, 3, 1), v.transpose(0, 2, 1, 3)  # [b, h, d, k], [b, h, k, d]

    @jax.checkpoint
    def one(x: tuple[jax.Array, ...]) -> jax.Array:
        qi, si, pi, ii = x
        bias = spec.tile(si, pi if spec.table is not None else None, ii)  # [b|P, h|1, t, k]
        w, denom = _softmax_parts(qi @ kt, bias, q.dtype)  # [b, h, t, k]
        return (w @ vt) / denom  # [b, h, t, d]

    out = jax.lax.map(one, (qt, seg, pos, idx))  # [n, b, h, t, d]
    out = out.transpose(1, 0, 3, 2, 4).reshape(b, n * t, h, d)
    return out[:, :lq]


# ---- packed rows: only the key tiles a query tile's segments span -----------------------------
def segment_spans(seg: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(start, end) [b, l]``: the key range ``[start, end)`` of each token's segment, which
    must be one contiguous run per row (packed rows are); padding (0) gets the empty ``(l, 0)``."""
    b, n = seg.shape
    idx = jnp.arange(n)[None, :]
    change = seg[:, 1:] != seg[:, :-1]  # [b, l-1]: a run ends between j and j+1
    edge = jnp.ones((b, 1), bool)
    start = jax.lax.cummax(jnp.where(jnp.concatenate([edge, change], 1), idx, 0), axis=1)
    end = jax.lax.cummin(
        jnp.where(jnp.concatenate([change, edge], 1), idx + 1, n), axis=1, reverse=True
    )
    real = seg > 0
    return jnp.where(real, start, n), jnp.where(real, end, 0)


def segment_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, spec: TokenBias, tile: int | None = None
) -> jax.Array:
    """Self-attention of packed rows, block-diagonal by segment: for each (row, query tile),
    a ``fori_loop`` over only the key tiles from the first to the last key its segments hold
    (online softmax across them); the other key tiles are never computed. Each computed tile
    gets its segment mask (``additive_mask``) and relative bias as the blocked path does.

    Encoder-style only (not causal, queries are the keys) and inference only (the loop's
    dynamic trip count has no reverse-mode derivative). Returns [b, q, h, d].
    """
    if spec.causal or spec.q_seg.shape != spec.k_seg.shape:
        raise ValueError("segment_attention is for (non-causal) self-attention of packed rows")
    b, n, h, d = q.shape
    t = tile or SEGMENT_TILE
    nt = -(-n // t)
    pad = nt * t - n
    seg = jnp.pad(spec.k_seg, ((0, 0), (0, pad)))  # [b, L]; padded tokens are padding
    pos = spec.q_pos if spec.table is not None else jnp.zeros((1, n), jnp.int32)
    pos = jnp.pad(jnp.broadcast_to(pos, (b, n)), ((0, 0), (0, pad)))  # [b, L]
    start, end = segment_spans(seg)
    first = jnp.min(start.reshape(b * nt, t), axis=1) // t  # [b*nt] first key tile
    stop = -(-jnp.max(end.reshape(b * nt, t), axis=1) // t)  # one past the last (<= first: none)
    rows = jnp.repeat(jnp.arange(b), nt)  # [b*nt]
    qt = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0))).reshape(b, nt, t, h, d)
    qt = qt.transpose(0, 1, 3, 2, 4).reshape(b * nt, h, t, d)
    kt = jnp.pad(k, ((0, 0), (0, pad), (0, 0), (0, 0))).transpose(0, 2, 3, 1)  # [b, h, d, L]
    vt = jnp.pad(v, ((0, 0), (0, pad), (0, 0), (0, 0))).transpose(0, 2, 1, 3)  # [b, h, L, d]

    def tile_out(qi, q_seg, q_pos, r, lo, hi):
        def step(j, carry):
            m, s_, acc = carry
            ks = jax.lax.dynamic_slice(kt, (r, 0, 0, j * t), (1, h, d, t))[0]  # [h, d, t]
            vs = jax.lax.dynamic_slice(vt, (r, 0, j * t, 0), (1, h, t, d))[0]  # [h, t, d]
            k_seg = jax.lax.dynamic_slice(seg, (r, j * t), (1, t))  # [1, t]
            bias = additive_mask(k_seg, q_seg[None])[0]  # [1, t, t]
            if spec.table is not None:
                k_pos = jax.lax.dynamic_slice(pos, (r, j * t), (1, t))
                bias = bias + spec.relative(q_pos[None], k_pos)[0]  # [h, t, t]
            sc = (qi @ ks).astype(jnp.float32) + bias  # [h, t, t]
            m_new = jnp.maximum(m, jnp.max(sc, axis=-1, keepdims=True))  # [h, t, 1]
            w = jnp.exp(sc - m_new)
            fix = jnp.exp(m - m_new)
            s_ = s_ * fix + jnp.sum(w, axis=-1, keepdims=True)
            acc = acc * fix + (w.astype(q.dtype) @ vs).astype(jnp.float32)
            return m_new, s_, acc

        init = (
            jnp.full((h, t, 1), -jnp.inf, jnp.float32),
            jnp.zeros((h, t, 1), jnp.float32),
            jnp.zeros((h, t, d), jnp.float32),
        )
        _, s_, acc = jax.lax.fori_loop(lo, hi, step, init)
        return (acc / jnp.where(s_ > 0, s_, 1.0)).astype(q.dtype)  # no key at all: 0

    qseg = seg.reshape(b * nt, t)
    qpos = pos.reshape(b * nt, t)
    out = jax.lax.map(lambda x: tile_out(*x), (qt, qseg, qpos, rows, first, stop))
    out = out.reshape(b, nt, h, t, d).transpose(0, 1, 3, 2, 4).reshape(b, nt * t, h, d)
    return out[:, :n]
