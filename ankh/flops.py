"""FLOP and byte counts of the Ankh encoder-decoder, and the machine's measured matmul peak and
memory read bandwidth.

Every efficiency figure the project reports divides a count from here by a rate probed here:
MFU of the train worker and of ``jobs.benchmark train``, the encoder's fraction of peak in
``jobs.benchmark embed``, the generation floor of ``jobs.benchmark generate`` (a decode step of
a few rows is bound by the bytes it must read, not by its FLOPs). Counts are matmul FLOPs (2 per
multiply-add) on padded shapes, as MFU is conventionally defined; norms, softmax and activations
are left out (a few % of the total).

The per-layer terms are written once and every count is a sum of them, so the encoder-only
count is exactly the encoder part of the train-step count.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from ankh.config import AnkhConfig


# ---- per-token / per-pair terms -----------------------------------------------------------------
def _projection(cfg: AnkhConfig) -> int:
    """One of the q, k, v, o projections of an attention block, per token."""
    return 2 * cfg.d_model * cfg.inner_dim


def _feed_forward(cfg: AnkhConfig) -> int:
    """wi (two of them when gated) and wo, per token."""
    return 2 * (3 if cfg.is_gated_act else 2) * cfg.d_model * cfg.d_ff


def _attention(cfg: AnkhConfig, q_len: int, kv_len: int) -> int:
    """Scores ``q k^T`` and context ``w v`` of one attention block, per sequence."""
    return 2 * 2 * q_len * kv_len * cfg.inner_dim


# ---- stacks -------------------------------------------------------------------------------------
def encoder_flops(cfg: AnkhConfig, batch: int, length: int) -> float:
    """Forward FLOPs of the encoder on ``[batch, length]`` tokens."""
    layer = length * (4 * _projection(cfg) + _feed_forward(cfg)) + _attention(cfg, length, length)
    return float(batch * cfg.num_layers * layer)


def decoder_flops(cfg: AnkhConfig, batch: int, enc_len: int, dec_len: int) -> float:
    """Forward FLOPs of the decoder (self + cross attention, feed-forward) and the LM head."""
    self_attn = dec_len * 4 * _projection(cfg) + _attention(cfg, dec_len, dec_len)
    # Cross attention: q and o on decoder tokens, k and v on encoder tokens.
    cross = (2 * dec_len + 2 * enc_len) * _projection(cfg) + _attention(cfg, dec_len, enc_len)
    layer = self_attn + cross + dec_len * _feed_forward(cfg)
    head = 2 * dec_len * cfg.d_model * cfg.vocab_size
    return float(batch * (cfg.num_decoder_layers * layer + head))


def cross_kv_flops(cfg: AnkhConfig, batch: int, enc_len: int) -> float:
    """The decoder's cross-attention keys and values of an encoder output, projected once per
    ``generate`` call (``ankh.kv_cache.init_cache``)."""
    return float(batch * cfg.num_decoder_layers * 2 * enc_len * _projection(cfg))


def decode_step_flops(cfg: AnkhConfig, rows: int, enc_len: int, dec_len: int) -> float:
    """One cached decode step of ``rows`` rows: q/k/v/o and cross q/o projections, the
    feed-forward and the LM head on one token per row; attention over ``dec_len`` cached
    positions and ``enc_len`` encoder keys."""
    layer = (
        6 * _projection(cfg)
        + _feed_forward(cfg)
        + _attention(cfg, 1, dec_len)
        + _attention(cfg, 1, enc_len)
    )
    return float(rows * (cfg.num_decoder_layers * layer + 2 * cfg.d_model * cfg.vocab_size))


def decode_step_bytes(
    cfg: AnkhConfig, rows: int, inputs: int, enc_len: int, dec_len: int, itemsize: int = 4
) -> float:
    """The least one decode step can read: every decoder weight matrix it multiplies by and the
    LM head once (shared by all rows), the cross keys/values of ``inputs`` distinct encoder
    outputs of ``enc_len`` tokens, and ``rows`` rows' self-attention cache of ``dec_len``
    positions. Norm scales and the bias table are left out (< 0.1 %)."""
    e, hd = cfg.d_model, cfg.inner_dim
    weights = 6 * e * hd + (3 if cfg.is_gated_act else 2) * e * cfg.d_ff
    caches = 2 * hd * (inputs * enc_len + rows * dec_len)
    return float(itemsize * (cfg.num_decoder_layers * (weights + caches) + e * cfg.vocab_size))


def train_step_flops(cfg: AnkhConfig, batch: int, enc_len: int, dec_len: int) -> float:
    """One training step: forward + backward, the backward being two matmuls per forward one."""
    return 3.0 * (encoder_flops(cfg, batch, enc_len) + decoder_flops(cfg, batch, enc_len, dec_len))


# ---- the denominator ----------------------------------------------------------------------------
def measure_matmul_peak(
    dtype: str = "float32", n: int = 2048, seconds: float = 1.0, devices: list | None = None
) -> float:
    """FLOP/s of square ``n x n`` matmuls, one per device of ``devices`` (default: this
    process's local devices) at once: the practical peak the efficiency figures divide by.

    Keeps the fastest call (``_fastest``): a higher peak only makes the reported fractions more
    conservative.
    """
    devs = list(devices or jax.local_devices())
    mesh = jax.sharding.Mesh(np.array(devs), ("d",))
    a = jax.device_put(
        jnp.ones((len(devs), n, n), dtype),
        jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d")),
    )
    f = jax.jit(lambda x: x @ x)  # batched over the device axis: one matmul per device
    return 2.0 * n**3 * len(devs) / _fastest(f, a, seconds)


def measure_read_bandwidth(nbytes: int = 256 << 20, seconds: float = 1.0) -> float:
    """Bytes/s of a jitted sum over a float32 array far larger than the caches (one device):
    the rate a memory-bound decode step's weights and caches can stream at, measured as
    ``measure_matmul_peak`` is (fastest of at least 3 calls over ``seconds``)."""
    a = jnp.ones((nbytes // 4,), jnp.float32)
    return a.nbytes / _fastest(jax.jit(jnp.sum), a, seconds)


def _fastest(f, a: jax.Array, seconds: float) -> float:
    """Seconds of the fastest call of ``f(a)`` after a compile call, over at least ``seconds``
    and 3 calls."""
    f(a).block_until_ready()
    best, reps, start = float("inf"), 0, time.perf_counter()
    while reps < 3 or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
        reps += 1
    return best
