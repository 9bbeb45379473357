"""Incremental decoding for AnkhModel: KV cache, logits warping, sampling and beam-search loops.

Everything here is pure and jittable. The decoder self-attention keys/values live in a fixed
``[batch, max_len, heads, d_kv]`` buffer per layer that one step writes at position ``t``;
cross-attention keys/values are projected once from the encoder output. Loops are
``jax.lax.while_loop`` over a fixed-shape step and stop early when every row has emitted
``</s>`` (or, for beam search, when HF's stopping heuristic says no beam can improve).

Warping follows HF ``generate`` exactly (same order and the same tie/threshold rules):
repetition penalty -> temperature -> top-k -> top-p. Shapes: b=batch rows, n=beams,
t=max decoded length (start token included), v=vocab, k=encoder length.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from ankh.layers import NEG_INF
from ankh.model import AnkhModel, attention_bias

Cache = dict[str, Any]


# ---- KV cache ------------------------------------------------------------------------------------
def init_cache(model: AnkhModel, enc: jax.Array, enc_mask: jax.Array, max_len: int) -> Cache:
    """Empty self-attention buffers plus cross-attention K/V of ``enc`` [b, k, e]."""
    b = enc.shape[0]
    cfg = model.config
    shape = (b, max_len, cfg.num_heads, cfg.d_kv)
    cross = [blk.EncDecAttention.project_kv(enc.astype(model.dtype)) for blk in model.decoder.block]
    return {
        "k": [jnp.zeros(shape, model.dtype) for _ in cross],  # [b, t, h, d] per layer
        "v": [jnp.zeros(shape, model.dtype) for _ in cross],
        "ck": [k for k, _ in cross],  # [b, k, h, d] per layer
        "cv": [v for _, v in cross],
        # Decoder queries attend every real encoder token (segment 1 vs mask 1).
        "cross_bias": attention_bias(jnp.ones_like(enc_mask[:, :1]), enc_mask),  # [b, 1, 1, k]
    }


def decode_step(model: AnkhModel, tokens: jax.Array, t: jax.Array, cache: Cache
                ) -> tuple[jax.Array, Cache]:
    """Feed one token per row at position ``t``; returns logits [b, v] float32 and the cache."""
    dec = model.decoder
    max_len = cache["k"][0].shape[1]
    x = model.embed_tokens(tokens[:, None])  # [b, 1, e]
    k_pos = jnp.arange(max_len, dtype=jnp.int32)[None]  # [1, t]
    q_pos = jnp.reshape(t, (1, 1)).astype(jnp.int32)  # [1, 1]
    self_bias = dec.relative_attention_bias(q_pos, k_pos)  # [1, h, 1, t]
    self_bias = self_bias + jnp.where(k_pos <= t, 0.0, NEG_INF)[:, None, None, :]
    new_k, new_v = [], []
    for i, blk in enumerate(dec.block):
        h = blk.self_attn_norm(x)
        k1, v1 = blk.SelfAttention.project_kv(h.astype(model.dtype))  # [b, 1, h, d]
        k = jax.lax.dynamic_update_slice_in_dim(cache["k"][i], k1, t, axis=1)  # [b, t, h, d]
        v = jax.lax.dynamic_update_slice_in_dim(cache["v"][i], v1, t, axis=1)
        x = x + blk.SelfAttention(h, self_bias, kv=(k, v))
        x = x + blk.EncDecAttention(blk.cross_attn_norm(x), cache["cross_bias"],
                                    kv=(cache["ck"][i], cache["cv"][i]))
        x = x + blk.DenseReluDense(blk.ffn_norm(x))  # [b, 1, e]
        new_k.append(k)
        new_v.append(v)
    logits = model.logits(dec.final_layer_norm(x))[:, 0]  # [b, v]
    return logits, {**cache, "k": new_k, "v": new_v}


def reorder_cache(cache: Cache, rows: jax.Array) -> Cache:
    """Gather the self-attention buffers of ``rows`` (beam search reorders beams every step)."""
    return {**cache, "k": [k[rows] for k in cache["k"]], "v": [v[rows] for v in cache["v"]]}


def expand_rows(x: jax.Array, n: int) -> jax.Array:
    """Repeat each row n times, consecutively (HF's ``expand_inputs_for_generation``)."""
    return jnp.repeat(x, n, axis=0) if n > 1 else x


# ---- warping (HF LogitsProcessor semantics) -------------------------------------------------------
def presence(tokens: jax.Array, upto: jax.Array, vocab: int) -> jax.Array:
    """[b, v] bool: which ids occur in ``tokens[:, :upto+1]`` (the decoder prefix, start included)."""
    live = jnp.arange(tokens.shape[1])[None, :] <= upto  # [1, t]
    ids = jnp.where(live, tokens, tokens[:, :1])  # dead slots repeat the start token (no-op)
    rows = jnp.arange(tokens.shape[0])[:, None]
    return jnp.zeros((tokens.shape[0], vocab), bool).at[rows, ids].set(True)


def repetition_penalty(scores: jax.Array, seen: jax.Array, penalty: jax.Array) -> jax.Array:
    penalized = jnp.where(scores < 0, scores * penalty, scores / penalty)
    return jnp.where(seen, penalized, scores)


def top_k_filter(scores: jax.Array, top_k: jax.Array) -> jax.Array:
    """Drop ids scoring below the k-th best (ties with it kept); top_k=0 disables."""
    k = jnp.clip(top_k, 1, scores.shape[-1])
    kth = jnp.take(jnp.sort(scores, axis=-1)[:, ::-1], k - 1, axis=-1)[:, None]  # [b, 1]
    return jnp.where((top_k > 0) & (scores < kth), -jnp.inf, scores)


def top_p_filter(scores: jax.Array, top_p: jax.Array) -> jax.Array:
    """Nucleus: drop the low tail whose cumulative probability is <= 1 - top_p (keep >= 1)."""
    order = jnp.argsort(scores, axis=-1)  # ascending, as HF sorts
    srt = jnp.take_along_axis(scores, order, axis=-1)
    cum = jnp.cumsum(jax.nn.softmax(srt, axis=-1), axis=-1)
    remove = (cum <= 1.0 - top_p).at[:, -1].set(False)
    rows = jnp.arange(scores.shape[0])[:, None]
    remove = jnp.zeros_like(remove).at[rows, order].set(remove)
    return jnp.where((top_p < 1.0) & remove, -jnp.inf, scores)


def warp(scores: jax.Array, seen: jax.Array, p: dict[str, jax.Array], sample: bool) -> jax.Array:
    """HF order: repetition penalty (always), then temperature/top-k/top-p (sampling only)."""
    scores = repetition_penalty(scores, seen, p["repetition_penalty"])
    if not sample:
        return scores
    scores = scores / p["temperature"]
    return top_p_filter(top_k_filter(scores, p["top_k"]), p["top_p"])


# ---- greedy / sampling ------------------------------------------------------------------------------
def sample_loop(model: AnkhModel, enc_ids: jax.Array, enc_mask: jax.Array, row_keys: jax.Array,
                params: dict[str, jax.Array], *, max_new: int, sample: bool, num_return: int
                ) -> jax.Array:
    """Greedy or ancestral sampling. Returns ids [b*num_return, max_new + 1] (start first).

    ``row_keys`` [b*num_return, 2]: one key per output row, folded with the step, so a row's
    sample does not depend on which other rows share its batch.
    """
    cfg = model.config
    enc = model.encode(enc_ids, enc_mask)  # [b, k, e]
    enc, mask = expand_rows(enc, num_return), expand_rows(enc_mask, num_return)
    b, t_len = enc.shape[0], max_new + 1
    cache = init_cache(model, enc, mask, t_len)
    tokens = jnp.full((b, t_len), cfg.pad_token_id, jnp.int32).at[:, 0].set(cfg.decoder_start_token_id)

    def cond(state):
        t, _, _, done = state
        return (t < max_new) & ~jnp.all(done)

    def body(state):
        t, tokens, cache, done = state
        logits, cache = decode_step(model, tokens[:, t], t, cache)
        scores = warp(logits, presence(tokens, t, logits.shape[-1]), params, sample)
        if sample:
            keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(row_keys, t)
            nxt = jax.vmap(jax.random.categorical)(keys, scores)
        else:
            nxt = jnp.argmax(scores, axis=-1)
        nxt = jnp.where(done, cfg.pad_token_id, nxt).astype(jnp.int32)
        tokens = tokens.at[:, t + 1].set(nxt)
        return t + 1, tokens, cache, done | (nxt == cfg.eos_token_id)

    state = (jnp.int32(0), tokens, cache, jnp.zeros((b,), bool))
    return jax.lax.while_loop(cond, body, state)[1]


def forced_scores(model: AnkhModel, enc_ids: jax.Array, enc_mask: jax.Array, forced: jax.Array,
                  params: dict[str, jax.Array], *, sample: bool) -> jax.Array:
    """Warped per-step scores [b, s, v] along given decoder ids [b, s+1] (start first).

    Runs the same cached step and warping as ``sample_loop``; used to check the sampling
    distribution against HF's ``output_scores`` step by step.
    """
    enc = model.encode(enc_ids, enc_mask)
    steps = forced.shape[1] - 1
    cache = init_cache(model, enc, enc_mask, forced.shape[1])

    def body(cache, t):
        logits, cache = decode_step(model, forced[:, t], t, cache)
        return cache, warp(logits, presence(forced, t, logits.shape[-1]), params, sample)

    _, scores = jax.lax.scan(body, cache, jnp.arange(steps))  # [s, b, v]
    return jnp.transpose(scores, (1, 0, 2))
