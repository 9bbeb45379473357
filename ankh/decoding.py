"""Incremental decoding for AnkhModel: logits warping and the greedy/sampling loop.

Everything here is pure and jittable. The one-token step and its KV cache are in
``ankh.kv_cache`` (a preallocated buffer per layer written in place; cross-attention keys and
values projected once per call and shared by the rows that decode the same input). The whole
loop is one ``jax.lax.while_loop`` inside the caller's jit -- no host round trip per step -- and
stops early when every row has emitted ``</s>`` (beam search: ``ankh.beam_search``).

Warping follows HF ``generate`` exactly (same order and the same tie/threshold rules):
repetition penalty -> min_new_tokens (``</s>`` barred) -> temperature -> top-k -> top-p.
Shapes: b=batch rows, n=rows per input, t=max decoded length (start token included), v=vocab,
k=encoder length.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ankh.kv_cache import decode_step, init_cache
from ankh.model import AnkhModel


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


def bar_eos(scores: jax.Array, generated: jax.Array, min_new: jax.Array, eos: int) -> jax.Array:
    """HF ``MinNewTokensLengthLogitsProcessor``: ``</s>`` is -inf while fewer than ``min_new``
    tokens have been generated (``generated``: tokens before the one being chosen)."""
    barred = (generated < min_new) & (jnp.arange(scores.shape[-1]) == eos)
    return jnp.where(barred, -jnp.inf, scores)


def warp(
    scores: jax.Array,
    seen: jax.Array,
    p: dict[str, jax.Array],
    sample: bool,
    generated: jax.Array,
    eos: int,
) -> jax.Array:
    """HF order: repetition penalty and min_new_tokens (always), then temperature/top-k/top-p
    (sampling only). ``p["min_new_tokens"]`` 0 (the default) bars nothing."""
    scores = repetition_penalty(scores, seen, p["repetition_penalty"])
    scores = bar_eos(scores, generated, p["min_new_tokens"], eos)
    if not sample:
        return scores
    scores = scores / p["temperature"]
    return top_p_filter(top_k_filter(scores, p["top_k"]), p["top_p"])


# ---- greedy / sampling ------------------------------------------------------------------------------
def sample_loop(
    model: AnkhModel,
    enc_ids: jax.Array,
    enc_mask: jax.Array,
    row_keys: jax.Array,
    params: dict[str, jax.Array],
    *,
    max_new: int,
    sample: bool,
    num_return: int,
) -> jax.Array:
    """Greedy or ancestral sampling. Returns ids [b*num_return, max_new + 1] (start first).

    ``row_keys`` [b*num_return, 2]: one key per output row, folded with the step, so a row's
    sample does not depend on which other rows share its batch.
    """
    cfg = model.config
    enc = model.encode(enc_ids, enc_mask)  # [g, k, e]: once per input, not per returned row
    b, t_len = enc.shape[0] * num_return, max_new + 1
    cache = init_cache(model, enc, enc_mask, t_len, group=num_return)
    tokens = (
        jnp.full((b, t_len), cfg.pad_token_id, jnp.int32).at[:, 0].set(cfg.decoder_start_token_id)
    )

    def cond(state):
        t, _, _, done = state
        return (t < max_new) & ~jnp.all(done)

    def body(state):
        t, tokens, cache, done = state
        logits, cache = decode_step(model, tokens[:, t], t, cache)
        scores = warp(
            logits, presence(tokens, t, logits.shape[-1]), params, sample, t, cfg.eos_token_id
        )
        if sample:
            keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(row_keys, t)
            nxt = jax.vmap(jax.random.categorical)(keys, scores)
        else:
            nxt = jnp.argmax(scores, axis=-1)
        nxt = jnp.where(done, cfg.pad_token_id, nxt).astype(jnp.int32)
        tokens = jax.lax.dynamic_update_slice_in_dim(tokens, nxt[:, None], t + 1, axis=1)
        return t + 1, tokens, cache, done | (nxt == cfg.eos_token_id)

    state = (jnp.int32(0), tokens, cache, jnp.zeros((b,), bool))
    return jax.lax.while_loop(cond, body, state)[1]


def forced_scores(
    model: AnkhModel,
    enc_ids: jax.Array,
    enc_mask: jax.Array,
    forced: jax.Array,
    params: dict[str, jax.Array],
    *,
    sample: bool,
) -> jax.Array:
    """Warped per-step scores [b, s, v] along given decoder ids [b, s+1] (start first).

    Runs the same cached step and warping as ``sample_loop``; used to check the sampling
    distribution against HF's ``output_scores`` step by step.
    """
    enc = model.encode(enc_ids, enc_mask)
    steps = forced.shape[1] - 1
    cache = init_cache(model, enc, enc_mask, forced.shape[1])

    def body(cache, t):
        logits, cache = decode_step(model, forced[:, t], t, cache)
        return cache, warp(
            logits,
            presence(forced, t, logits.shape[-1]),
            params,
            sample,
            t,
            model.config.eos_token_id,
        )

    _, scores = jax.lax.scan(body, cache, jnp.arange(steps))  # [s, b, v]
    return jnp.transpose(scores, (1, 0, 2))
