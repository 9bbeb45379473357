"""Beam search as HF ``generate`` (transformers 4.50+ vectorised ``_beam_search``) does it.

Each step keeps the top ``2 * num_beams`` continuations over all beams; those ending in
``</s>`` (or reaching the length limit) among the first ``num_beams`` are offered to the
finished set with score ``sum_logprobs / generated_len ** length_penalty``; the best unfinished
``num_beams`` continue. The loop stops when HF's ``early_stopping=False`` heuristic says no
running beam can beat the worst finished one. Shapes: b=batch, n=beams, t=max length, v=vocab.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ankh.decoding import presence, warp
from ankh.kv_cache import decode_step, init_cache, reorder_beams
from ankh.model import AnkhModel

BIG_NEG = -1.0e9  # HF's sentinel score for "not selectable"


def _gather(x: jax.Array, idx: jax.Array) -> jax.Array:
    """x [b, m, ...], idx [b, j] -> [b, j, ...]."""
    idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)


def _step_scores(model, state, params, nb, eos):
    """Accumulated log-probs of every continuation [b, n*v] and the advanced cache."""
    cur, run_seq, run_scores = state["cur"], state["run_seq"], state["run_scores"]
    b = run_seq.shape[0]
    flat = run_seq.reshape(b * nb, -1)  # [b*n, t]
    logits, cache = decode_step(model, flat[:, cur - 1], cur - 1, state["cache"])
    logp = jax.nn.log_softmax(logits, axis=-1)  # HF processes log-probs in beam search
    logp = warp(logp, presence(flat, cur - 1, logp.shape[-1]), params, False, cur - 1, eos)
    acc = logp.reshape(b, nb, -1) + run_scores[:, :, None]  # [b, n, v]
    return acc.reshape(b, -1), cache


def _advance(state, acc, cache, nb, max_len, eos, denom):
    cur = state["cur"]
    vocab = acc.shape[1] // nb
    top_lp, top_idx = jax.lax.top_k(acc, 2 * nb)  # [b, 2n]
    src = top_idx // vocab  # beam each candidate extends
    tok = (top_idx % vocab).astype(jnp.int32)
    cand = _gather(state["run_seq"], src)  # [b, 2n, t]
    cand = jax.lax.dynamic_update_slice_in_dim(cand, tok[:, :, None], cur, axis=2)
    hits = (tok == eos) | (cur + 1 >= max_len)  # [b, 2n]

    # Unfinished continuations: the best n go on (their cache rows follow them).
    run_lp = top_lp + hits.astype(jnp.float32) * BIG_NEG
    nxt = jax.lax.top_k(run_lp, nb)[1]  # [b, n]
    run_seq, run_scores = _gather(cand, nxt), _gather(run_lp, nxt)
    cache = reorder_beams(cache, _gather(src, nxt))  # [b, n]: the beam each continues

    # Finished ones (only among the first n candidates) compete for the n finished slots.
    did = hits & (jnp.arange(2 * nb) < nb)[None, :]
    fin_lp = top_lp / denom[cur]  # generated length (</s> included) ** length_penalty
    fin_lp = fin_lp + (~state["improvable"]).astype(jnp.float32) * BIG_NEG
    fin_lp = fin_lp + (~did).astype(jnp.float32) * BIG_NEG
    m_seq = jnp.concatenate([state["seq"], cand], axis=1)
    m_scores = jnp.concatenate([state["scores"], fin_lp], axis=1)
    m_fin = jnp.concatenate([state["finished"], did], axis=1)
    keep = jax.lax.top_k(m_scores, nb)[1]
    seq, scores, finished = _gather(m_seq, keep), _gather(m_scores, keep), _gather(m_fin, keep)

    cur = cur + 1
    best_running = run_scores[:, :1] / denom[cur - 1]
    worst_done = jnp.where(finished, jnp.min(scores, axis=1, keepdims=True), BIG_NEG)
    improvable = state["improvable"] & jnp.any(best_running > worst_done, axis=-1, keepdims=True)
    return {
        "cur": cur,
        "run_seq": run_seq,
        "run_scores": run_scores,
        "seq": seq,
        "scores": scores,
        "finished": finished,
        "improvable": improvable,
        "all_hit": jnp.all(hits),
        "cache": cache,
    }


def beam_search(
    model: AnkhModel,
    enc_ids: jax.Array,
    enc_mask: jax.Array,
    params: dict[str, jax.Array],
    *,
    max_new: int,
    num_beams: int,
    length_penalty: float,
) -> tuple[jax.Array, jax.Array]:
    """Returns (ids [b, n, max_new+1] best first, start token first; scores [b, n])."""
    cfg = model.config
    nb, max_len = num_beams, max_new + 1
    b = enc_ids.shape[0]
    # One encoder pass and one cross K/V per input, shared by its n beams.
    cache = init_cache(
        model, model.encode(enc_ids, enc_mask), enc_mask, max_len, group=nb, beams=True
    )
    # HF fills unused slots with eos (pad 0 is falsy there); decoding strips both anyway.
    seq = jnp.full((b, nb, max_len), cfg.eos_token_id, jnp.int32)
    seq = seq.at[:, :, 0].set(cfg.decoder_start_token_id)
    state = {
        "cur": jnp.int32(1),
        "run_seq": seq,
        "run_scores": jnp.zeros((b, nb), jnp.float32).at[:, 1:].set(BIG_NEG),
        "seq": seq,
        "scores": jnp.full((b, nb), BIG_NEG, jnp.float32),
        "finished": jnp.zeros((b, nb), bool),
        "improvable": jnp.ones((b, 1), bool),
        "all_hit": jnp.bool_(False),
        "cache": cache,
    }

    def cond(s):
        return jnp.any(s["improvable"]) & ~s["all_hit"] & (s["cur"] < max_len)

    # HF divides by Python's float64 ``len ** length_penalty``; tabulate it for bitwise parity.
    denom = jnp.asarray(
        [float(max(i, 1) ** length_penalty) for i in range(max_len + 1)], jnp.float32
    )

    def body(s):
        acc, cache = _step_scores(model, s, params, nb, cfg.eos_token_id)
        return _advance(s, acc, cache, nb, max_len, cfg.eos_token_id, denom)

    out = jax.lax.while_loop(cond, body, state)
    return out["seq"], out["scores"]
