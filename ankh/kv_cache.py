"""The decoder's one-token step over a preallocated KV cache, in the layouts its matmuls read.

XLA:CPU wants a batched matmul's right operand as ``[batch, contracting, free]``. A cache kept
as ``[rows, len, h, d]`` (what ``Attention.project_kv`` returns) is therefore transposed -- a
full copy -- by every step, per layer, and for cross attention that copy is the whole encoder
length: at d512 x 8 layers, batch 8 and 256 encoder tokens, 128 MB moved per step for nothing.
Here every buffer is stored once in the layout its dot reads:

- self attention: keys ``[rows, h, d, t]``, values ``[rows, h, t, d]``; one step writes column
  / row ``t`` in place (``dynamic_update_slice`` on a loop-carried buffer; no copy);
- cross attention: keys ``[g, h, d, k]``, values ``[g, h, k, d]``, projected once per call from
  the encoder output of the ``g`` distinct inputs. The ``n = rows / g`` rows that decode the same
  input (beams, ``num_return_sequences``) share them: their queries are stacked as ``n`` queries
  of one row, so the encoder and its keys/values are never repeated.

Beam search (``beams=True``) never moves a cache: the n beams of an input keep their buffers
as slots ``[g, h, d, n*t]`` / ``[g, h, n*t, d]`` and a small table ``src [g, n, t]`` says
which slot holds a beam's key/value at each position. A reorder gathers that table only (a
gather of the buffers cannot be in place, so it costs two full copies of every layer's cache
per step); each beam's query scores all ``n * t`` slot positions of its input in one matmul
and keeps, per position, its own slot's score (the others get exactly zero weight).

The numerics are those of ``ankh.attention.dense_attention`` (float32 bias, softmax normalised
after the PV product). Shapes: g=inputs, n=rows per input, h=heads, d=d_kv, t=decoded length,
k=encoder length, e=d_model, v=vocab.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ankh.attention import additive_mask
from ankh.model import AnkhModel

Cache = dict[str, Any]


def _proj(x2: jax.Array, w: Any, dtype: Any) -> jax.Array:
    """x2 [r, e] @ w [e, h, d] as one 2-D matmul (as ``Attention`` projects) -> [r, h, d]."""
    e, h, d = w.shape
    return (x2 @ w[...].astype(dtype).reshape(e, h * d)).reshape(-1, h, d)


def init_cache(
    model: AnkhModel,
    enc: jax.Array,
    enc_mask: jax.Array,
    max_len: int,
    group: int = 1,
    beams: bool = False,
) -> Cache:
    """Empty self-attention buffers for ``g * group`` rows and the cross K/V of ``enc [g, k, e]``;
    ``beams``: the slot layout and ``src`` table that ``reorder_beams`` updates."""
    cfg, dt = model.config, model.dtype
    g, h, d = enc.shape[0], cfg.num_heads, cfg.d_kv
    rows = g * group
    k_shape, v_shape = (rows, h, d, max_len), (rows, h, max_len, d)
    if beams:
        k_shape, v_shape = (g, h, d, group * max_len), (g, h, group * max_len, d)
    ck, cv = [], []
    for blk in model.decoder.block:
        k, v = blk.EncDecAttention.project_kv(enc.astype(dt))  # [g, k, h, d]
        ck.append(k.transpose(0, 2, 3, 1))  # [g, h, d, k]
        cv.append(v.transpose(0, 2, 1, 3))  # [g, h, k, d]
    cache = {
        "k": [jnp.zeros(k_shape, dt) for _ in ck],
        "v": [jnp.zeros(v_shape, dt) for _ in ck],
        "ck": ck,
        "cv": cv,
        # Decoder queries attend every real encoder token.
        "cross_bias": additive_mask(enc_mask),  # [g, 1, 1, k]
    }
    if beams:  # every beam starts on its own slot
        cache["src"] = jnp.broadcast_to(
            jnp.arange(group, dtype=jnp.int32)[None, :, None], (g, group, max_len)
        )
    return cache


def reorder_beams(cache: Cache, parents: jax.Array) -> Cache:
    """Beam j of input i continues beam ``parents[i, j]``: it inherits that beam's slot table
    (a gather of ``src [g, n, t]``; the buffers stay where they are)."""
    src = jnp.take_along_axis(cache["src"], parents[:, :, None], axis=1)
    return {**cache, "src": src}


def _attend(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array) -> jax.Array:
    """q [g, h, n, d], k [g, h, d, t], v [g, h, t, d], bias [g|1, h|1, n|1, t] -> [g, h, n, d]."""
    s = (q @ k).astype(jnp.float32) + bias  # [g, h, n, t]
    m = jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True))
    w = jnp.exp(s - m).astype(q.dtype)
    denom = jnp.sum(w, axis=-1, keepdims=True, dtype=jnp.float32).astype(q.dtype)
    return (w @ v) / denom


def _out(attn: Any, ctx: jax.Array, dtype: Any) -> jax.Array:
    """ctx [r, h, d] @ o [h, d, e] -> [r, 1, e]."""
    r, h, d = ctx.shape
    return (ctx.reshape(r, h * d) @ attn.o[...].astype(dtype).reshape(h * d, -1))[:, None]


def _self_attention(
    blk: Any,
    h: jax.Array,
    t: jax.Array,
    k_buf: jax.Array,
    v_buf: jax.Array,
    bias: jax.Array,
    dtype: Any,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """h [r, 1, e] at position ``t``: writes its K/V into the buffers, attends positions <= t."""
    att = blk.SelfAttention
    x2 = h.astype(dtype)[:, 0]  # [r, e]
    q, k1, v1 = (_proj(x2, w, dtype) for w in (att.q, att.k, att.v))  # [r, h, d] each
    k_buf = jax.lax.dynamic_update_slice_in_dim(k_buf, k1[..., None], t, axis=3)  # [r, h, d, t]
    v_buf = jax.lax.dynamic_update_slice_in_dim(v_buf, v1[:, :, None], t, axis=2)  # [r, h, t, d]
    ctx = _attend(q[:, :, None], k_buf, v_buf, bias)[:, :, 0]  # [r, h, d]
    return _out(att, ctx, dtype), k_buf, v_buf


def _beam_self_attention(
    blk: Any,
    h: jax.Array,
    t: jax.Array,
    k_buf: jax.Array,
    v_buf: jax.Array,
    src: jax.Array,
    bias: jax.Array,
    dtype: Any,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """As ``_self_attention`` on slot buffers k [g, h, d, n*t], v [g, h, n*t, d]: beam j writes
    slot j at ``t`` and reads, at each position p, slot ``src[:, j, p]``."""
    att = blk.SelfAttention
    g, n, tl = src.shape
    nh, d = k_buf.shape[1], k_buf.shape[2]
    x2 = h.astype(dtype)[:, 0]  # [g*n, e]
    q, k1, v1 = (_proj(x2, w, dtype).reshape(g, n, nh, d) for w in (att.q, att.k, att.v))
    # Slot j's position t is column j*t_len + t of the flat buffers: one in-place scatter each
    # (a reshape of an updated buffer would make XLA copy it).
    col = jnp.arange(n) * tl + t
    k_buf = k_buf.at[:, :, :, col].set(k1.transpose(0, 2, 3, 1))  # [g, h, d, n*t]
    v_buf = v_buf.at[:, :, col, :].set(v1.transpose(0, 2, 1, 3))  # [g, h, n*t, d]
    s = q.transpose(0, 2, 1, 3) @ k_buf  # [g, h, n, n*t]
    pick = src[:, None, :, None, :]  # [g, 1, n, 1, t]: the slot each beam reads per position
    s = jnp.take_along_axis(s.reshape(g, nh, n, n, tl), pick, axis=3)[:, :, :, 0]  # [g, h, n, t]
    s = s.astype(jnp.float32) + bias
    m = jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True))
    w = jnp.exp(s - m).astype(dtype)  # [g, h, n, t]
    denom = jnp.sum(w, axis=-1, keepdims=True, dtype=jnp.float32).astype(dtype)
    own = pick == jnp.arange(n, dtype=src.dtype)[None, None, None, :, None]  # [g, 1, n, n, t]
    w = jnp.where(own, w[:, :, :, None, :], 0).reshape(g, nh, n, n * tl)
    ctx = (w @ v_buf) / denom  # [g, h, n, d]
    return _out(att, ctx.transpose(0, 2, 1, 3).reshape(g * n, nh, d), dtype), k_buf, v_buf


def _cross_attention(
    blk: Any, h: jax.Array, ck: jax.Array, cv: jax.Array, bias: jax.Array, dtype: Any
) -> jax.Array:
    """h [g*n, 1, e]: the n rows of an input query its shared keys as n queries of one row."""
    att = blk.EncDecAttention
    g = ck.shape[0]
    q = _proj(h.astype(dtype)[:, 0], att.q, dtype)  # [g*n, h, d]
    r, nh, d = q.shape
    q = q.reshape(g, r // g, nh, d).transpose(0, 2, 1, 3)  # [g, h, n, d]
    ctx = _attend(q, ck, cv, bias)  # [g, h, n, d]
    return _out(att, ctx.transpose(0, 2, 1, 3).reshape(r, nh, d), dtype)


def decode_step(
    model: AnkhModel, tokens: jax.Array, t: jax.Array, cache: Cache
) -> tuple[jax.Array, Cache]:
    """Feed one token per row at position ``t``; returns logits [r, v] float32 and the cache."""
    dec, dt = model.decoder, model.dtype
    beams = "src" in cache
    max_len = cache["src"].shape[2] if beams else cache["v"][0].shape[2]
    x = model.embed_tokens(tokens[:, None])  # [r, 1, e]
    k_pos = jnp.arange(max_len, dtype=jnp.int32)[None]  # [1, t]
    q_pos = jnp.reshape(t, (1, 1)).astype(jnp.int32)  # [1, 1]
    self_bias = dec.relative_attention_bias(q_pos, k_pos)  # [1, h, 1, t]
    self_bias = self_bias + additive_mask(None, q_idx=t, k_len=max_len)  # keys at <= t
    if beams:  # beam j wrote slot j at position t
        n = cache["src"].shape[1]
        src = jax.lax.dynamic_update_slice_in_dim(
            cache["src"],
            jnp.broadcast_to(
                jnp.arange(n, dtype=jnp.int32)[None, :, None], (cache["src"].shape[0], n, 1)
            ),
            t,
            axis=2,
        )
        cache = {**cache, "src": src}
    new_k, new_v = [], []
    for i, blk in enumerate(dec.block):
        h = blk.self_attn_norm(x)
        if beams:
            out, k, v = _beam_self_attention(
                blk, h, t, cache["k"][i], cache["v"][i], cache["src"], self_bias, dt
            )
        else:
            out, k, v = _self_attention(blk, h, t, cache["k"][i], cache["v"][i], self_bias, dt)
        x = x + out
        x = x + _cross_attention(
            blk, blk.cross_attn_norm(x), cache["ck"][i], cache["cv"][i], cache["cross_bias"], dt
        )
        x = x + blk.DenseReluDense(blk.ffn_norm(x))  # [r, 1, e]
        new_k.append(k)
        new_v.append(v)
    logits = model.logits(dec.final_layer_norm(x))[:, 0]  # [r, v]
    return logits, {**cache, "k": new_k, "v": new_v}
