"""The Ankh encoder-decoder (T5) in Flax NNX.

Sequences are described by ``segment_ids`` (0 = padding, 1.. = which sequence a token belongs
to) and optional ``positions``; an ordinary padded batch passes its attention mask as segment
ids. Packed rows (several sequences per row) use distinct segment ids and per-sequence
positions: attention and relative positions never cross segments.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ankh.attention import TokenBias, prepare
from ankh.config import AnkhConfig
from ankh.layers import Attention, GatedFFN, RelativeBias, RMSNorm, param


def default_positions(segment_ids: jax.Array) -> jax.Array:
    return jnp.broadcast_to(jnp.arange(segment_ids.shape[-1], dtype=jnp.int32), segment_ids.shape)


class EncoderBlock(nnx.Module):
    def __init__(self, cfg: AnkhConfig, rngs: nnx.Rngs, dtype):
        self.self_attn_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)
        self.SelfAttention = Attention(cfg, rngs, dtype)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)
        self.DenseReluDense = GatedFFN(cfg, rngs, dtype)

    def __call__(self, x: jax.Array, bias: TokenBias | jax.Array) -> jax.Array:
        x = x + self.SelfAttention(self.self_attn_norm(x), bias)  # [b, l, e]
        return x + self.DenseReluDense(self.ffn_norm(x))  # [b, l, e]


class DecoderBlock(nnx.Module):
    def __init__(self, cfg: AnkhConfig, rngs: nnx.Rngs, dtype):
        self.self_attn_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)
        self.SelfAttention = Attention(cfg, rngs, dtype)
        self.cross_attn_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)
        self.EncDecAttention = Attention(cfg, rngs, dtype)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)
        self.DenseReluDense = GatedFFN(cfg, rngs, dtype)

    def __call__(
        self,
        x: jax.Array,
        self_bias: TokenBias | jax.Array,
        enc: jax.Array,
        cross_bias: TokenBias | jax.Array,
    ) -> jax.Array:
        x = x + self.SelfAttention(self.self_attn_norm(x), self_bias)  # [b, q, e]
        x = x + self.EncDecAttention(self.cross_attn_norm(x), cross_bias, kv_input=enc)  # [b, q, e]
        return x + self.DenseReluDense(self.ffn_norm(x))  # [b, q, e]


def block_call(block_type: type, remat: bool):
    """How a stack calls its blocks: directly, or rematerialised (each block's activations are
    recomputed in the backward pass instead of kept: less memory for a third more compute)."""
    return nnx.remat(block_type.__call__) if remat else block_type.__call__


class Encoder(nnx.Module):
    def __init__(self, cfg: AnkhConfig, rngs: nnx.Rngs, dtype, remat: bool = False):
        self.config, self.dtype, self.remat = cfg, dtype, remat
        self.relative_attention_bias = RelativeBias(cfg, bidirectional=True, rngs=rngs)
        self.block = nnx.List([EncoderBlock(cfg, rngs, dtype) for _ in range(cfg.num_layers)])
        self.final_layer_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)

    def __call__(
        self,
        x: jax.Array,
        segment_ids: jax.Array,
        positions: jax.Array,
        num_layers: int | None = None,
        packed: bool = False,
    ) -> jax.Array:
        # Per token; ``prepare`` builds the dense [b, h, l, l] bias only where that is the
        # faster path (short rows), once for all layers.
        spec = TokenBias(
            segment_ids,
            segment_ids,
            positions,
            positions,
            self.relative_attention_bias.table(),
            packed=packed,
        )
        bias = prepare(spec, self.config.num_heads, self.config.d_kv, self.dtype)
        blocks = self.block if num_layers is None else list(self.block)[:num_layers]
        call = block_call(EncoderBlock, self.remat)
        for blk in blocks:
            x = call(blk, x, bias)  # [b, l, e]
        # The final norm belongs to the last layer's output only.
        return self.final_layer_norm(x) if num_layers is None else x


class Decoder(nnx.Module):
    def __init__(self, cfg: AnkhConfig, rngs: nnx.Rngs, dtype, remat: bool = False):
        self.config, self.dtype, self.remat = cfg, dtype, remat
        self.relative_attention_bias = RelativeBias(cfg, bidirectional=False, rngs=rngs)
        self.block = nnx.List(
            [DecoderBlock(cfg, rngs, dtype) for _ in range(cfg.num_decoder_layers)]
        )
        self.final_layer_norm = RMSNorm(cfg.d_model, cfg.layer_norm_epsilon)

    def __call__(
        self,
        y: jax.Array,
        segment_ids: jax.Array,
        positions: jax.Array,
        enc: jax.Array,
        enc_segment_ids: jax.Array,
    ) -> jax.Array:
        h, d = self.config.num_heads, self.config.d_kv
        self_bias = prepare(
            TokenBias(
                segment_ids,
                segment_ids,
                positions,
                positions,
                self.relative_attention_bias.table(),
                causal=True,
            ),
            h,
            d,
            self.dtype,
        )
        cross_bias = prepare(TokenBias(segment_ids, enc_segment_ids), h, d, self.dtype)
        call = block_call(DecoderBlock, self.remat)
        for blk in self.block:
            y = call(blk, y, self_bias, enc, cross_bias)  # [b, q, e]
        return self.final_layer_norm(y)


class AnkhModel(nnx.Module):
    """T5ForConditionalGeneration as Ankh uses it (untied lm_head by default)."""

    def __init__(self, cfg: AnkhConfig, rngs: nnx.Rngs, dtype=jnp.float32, remat: bool = False):
        self.config = cfg
        self.dtype = dtype
        self.shared = param(
            rngs, (cfg.vocab_size, cfg.d_model), cfg.initializer_factor, ("vocab", "embed")
        )
        self.encoder = Encoder(cfg, rngs, dtype, remat)  # remat: training only (ankh.training)
        self.decoder = Decoder(cfg, rngs, dtype, remat)
        # Untied head: N(0, 1/d_model) (T5X's fan-in init) keeps the initial logits O(1).
        self.lm_head = (
            None
            if cfg.tie_word_embeddings
            else param(
                rngs,
                (cfg.d_model, cfg.vocab_size),
                cfg.initializer_factor * cfg.d_model**-0.5,
                ("embed", "vocab"),
            )
        )

    def embed_tokens(self, ids: jax.Array) -> jax.Array:
        return jnp.take(self.shared[...], ids, axis=0).astype(self.dtype)  # [b, l, e]

    def encode(
        self,
        input_ids: jax.Array,
        segment_ids: jax.Array,
        positions: jax.Array | None = None,
        num_layers: int | None = None,
        packed: bool = False,
    ) -> jax.Array:
        """Encoder states [b, l, e]; ``num_layers`` stops early (states before the final norm).
        ``packed``: several sequences per row, each one contiguous run of its segment id --
        attention then computes only within each segment (``ankh.attention``'s ``segments``
        path; inference only)."""
        if positions is None:
            positions = default_positions(segment_ids)[:1]
        x = self.embed_tokens(input_ids)
        return self.encoder(x, segment_ids, positions, num_layers, packed)

    def logits(self, hidden: jax.Array) -> jax.Array:
        if self.lm_head is None:  # tied: HF rescales by d_model**-0.5 before the shared matrix
            hidden = hidden * self.config.d_model**-0.5
            return jnp.einsum("ble,ve->blv", hidden, self.shared[...].astype(hidden.dtype)).astype(
                jnp.float32
            )
        return (hidden @ self.lm_head[...].astype(hidden.dtype)).astype(jnp.float32)  # [b, l, v]

    def decode(
        self,
        decoder_input_ids: jax.Array,
        encoder_out: jax.Array,
        enc_segment_ids: jax.Array,
        dec_segment_ids: jax.Array | None = None,
        dec_positions: jax.Array | None = None,
    ) -> jax.Array:
        """Teacher-forced decoder logits [b, q, vocab] (float32)."""
        if dec_segment_ids is None:
            dec_segment_ids = jnp.ones_like(decoder_input_ids)
        if dec_positions is None:
            dec_positions = default_positions(dec_segment_ids)[:1]
        y = self.decoder(
            self.embed_tokens(decoder_input_ids),
            dec_segment_ids,
            dec_positions,
            encoder_out,
            enc_segment_ids,
        )
        return self.logits(y)

    def __call__(
        self,
        input_ids: jax.Array,
        segment_ids: jax.Array,
        decoder_input_ids: jax.Array,
        dec_segment_ids: jax.Array | None = None,
        positions: jax.Array | None = None,
        dec_positions: jax.Array | None = None,
    ) -> jax.Array:
        enc = self.encode(input_ids, segment_ids, positions)
        return self.decode(decoder_input_ids, enc, segment_ids, dec_segment_ids, dec_positions)


def shift_right(labels: jax.Array, start_id: int = 0, pad_id: int = 0) -> jax.Array:
    """Decoder inputs from targets, as HF T5 does (start token, then labels[:-1])."""
    shifted = jnp.concatenate([jnp.full_like(labels[:, :1], start_id), labels[:, :-1]], axis=1)
    return jnp.where(shifted == -100, pad_id, shifted)
