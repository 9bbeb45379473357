"""The cached one-token decoder step (``ankh.kv_cache``) against the teacher-forced decoder,
and the cross-attention keys/values shared by the rows that decode the same input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ankh import batching, kv_cache
from ankh.api import Ankh
from ankh.config import PRESETS
from tests.ankh._genutil import real_sequences

STEPS = 12


@pytest.fixture(scope="module")
def model():
    return Ankh.random(PRESETS["tiny"], seed=3)


@pytest.fixture(scope="module")
def net(model):
    return nnx.merge(model.graphdef, model.params)


@pytest.fixture(scope="module")
def batch(model):
    toks = [model.tokenizer.encode(s) for s in real_sequences(3, max_len=40)]
    ids, mask = batching.pad_rows(toks, 3, 48, model.tokenizer.pad_id)  # rows really padded
    assert (mask == 0).any()
    forced = np.random.default_rng(0).integers(3, 28, (3, STEPS + 1)).astype(np.int32)
    forced[:, 0] = model.config.decoder_start_token_id
    return jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(forced)


def _stepped(m, enc, mask, forced, group):
    """Logits [rows, STEPS, v] fed one token at a time through the cache."""

    def run(enc, mask, forced):
        cache = kv_cache.init_cache(m, enc, mask, STEPS + 1, group=group)

        def body(cache, t):
            logits, cache = kv_cache.decode_step(m, forced[:, t], t, cache)
            return cache, logits

        return jnp.moveaxis(jax.lax.scan(body, cache, jnp.arange(STEPS))[1], 0, 1)

    return jax.jit(run)(enc, mask, forced)


def test_cached_steps_equal_the_teacher_forced_decoder(net, batch):
    ids, mask, forced = batch
    m = net
    enc = jax.jit(m.encode)(ids, mask)
    stepped = _stepped(m, enc, mask, forced, 1)
    full = jax.jit(m.decode)(forced[:, :STEPS], enc, mask)  # [b, s, v]
    np.testing.assert_allclose(np.asarray(stepped), np.asarray(full), atol=2e-5, rtol=2e-5)


def test_rows_of_one_input_share_its_cross_keys(net, batch):
    """group=3: one cross K/V per input for its three rows gives each row what a cache of its
    own would (different tokens per row, so the rows really differ)."""
    ids, mask, _ = batch
    m = net
    enc = jax.jit(m.encode)(ids, mask)
    forced = np.random.default_rng(1).integers(3, 28, (9, STEPS + 1)).astype(np.int32)
    forced[:, 0] = 0
    shared = _stepped(m, enc, mask, jnp.asarray(forced), 3)
    own = _stepped(m, jnp.repeat(enc, 3, 0), jnp.repeat(mask, 3, 0), jnp.asarray(forced), 1)
    np.testing.assert_allclose(np.asarray(shared), np.asarray(own), atol=1e-5, rtol=1e-5)
    assert not np.allclose(np.asarray(shared[0]), np.asarray(shared[1]))


def test_beam_slots_read_like_reordered_rows(net, batch):
    """Beam layout: a reorder only rewrites the slot table, yet every step's logits equal those
    of per-row caches that were physically gathered the same way."""
    ids, mask, _ = batch
    m = net
    enc = jax.jit(m.encode)(ids, mask)
    forced = np.random.default_rng(2).integers(3, 28, (9, 7)).astype(np.int32)
    parents = {
        2: np.array([[1, 1, 0], [2, 0, 1], [0, 0, 0]]),
        4: np.array([[2, 1, 2], [1, 1, 0], [0, 2, 1]]),
    }

    def run(beams):
        cache = kv_cache.init_cache(m, enc, mask, 7, group=3, beams=beams)
        out = []
        for t in range(6):
            logits, cache = kv_cache.decode_step(m, jnp.asarray(forced[:, t]), jnp.int32(t), cache)
            out.append(logits)
            if t in parents and beams:
                cache = kv_cache.reorder_beams(cache, jnp.asarray(parents[t]))
            elif t in parents:
                rows = jnp.asarray((np.arange(3)[:, None] * 3 + parents[t]).reshape(-1))
                cache = {
                    **cache,
                    "k": [k[rows] for k in cache["k"]],
                    "v": [v[rows] for v in cache["v"]],
                }
        return np.stack(out, 1)

    np.testing.assert_allclose(run(True), run(False), atol=1e-5, rtol=1e-5)
