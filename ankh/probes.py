"""Downstream heads on frozen embeddings (Flax NNX, pure math): linear, MLP, ConvBERT, contacts.

Every head takes ``x [b, l, e]`` plus ``mask [b, l]`` (1 = residue) and returns per-residue
logits ``[b, l, n]`` (``per_protein=False``) or per-protein logits ``[b, n]``. Linear and MLP
heads on per-protein tasks mean-pool the residues first (the usual "embedding probe");
the ConvBERT head pools after its layer, as the official ``ankh`` package does.

``ConvBertLayer`` ports HF ``ConvBertLayer`` (the layer ``ankh`` wraps): mixed attention with
``head_ratio=2`` (half the heads self-attention, half span-based dynamic convolution), then a
GELU feed-forward, post-LayerNorm. Padding is masked everywhere (the convolutions see zeros
beyond a chain's end), so a result never depends on how a batch was padded.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from ankh.attention import NEG_INF, additive_mask

HeadKind = Literal["linear", "mlp", "convbert"]


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    m = mask.astype(x.dtype)[..., None]  # [b, l, 1]
    return jnp.sum(x * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)  # [b, e]


def masked_max(x: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.max(jnp.where(mask[..., None] > 0, x, NEG_INF), axis=1)  # [b, e]


class SeparableConv1D(nnx.Module):
    """Depthwise conv (no bias) + pointwise conv + bias, as HF ConvBERT's key conv."""

    def __init__(self, d_in: int, d_out: int, kernel: int, rngs: nnx.Rngs):
        self.depthwise = nnx.Conv(
            d_in,
            d_in,
            (kernel,),
            feature_group_count=d_in,
            padding="SAME",
            use_bias=False,
            rngs=rngs,
        )
        self.pointwise = nnx.Conv(d_in, d_out, (1,), use_bias=False, rngs=rngs)
        self.bias = nnx.Param(jnp.zeros((d_out,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.pointwise(self.depthwise(x)) + self.bias[...]  # [b, l, d_out]


class ConvBertLayer(nnx.Module):
    """One HF-style ConvBERT layer (mixed attention, head_ratio=2) on ``[b, l, e]``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_dim: int,
        kernel: int,
        dropout: float,
        rngs: nnx.Rngs,
        attn_dropout: float = 0.1,
    ):
        if dim % num_heads:
            raise ValueError(f"ConvBERT: input dim {dim} is not divisible by num_heads {num_heads}")
        if kernel % 2 == 0:
            raise ValueError(f"ConvBERT: kernel size must be odd, got {kernel}")
        self.heads = max(1, num_heads // 2)  # the other half of the heads are convolutional
        self.head_dim = dim // num_heads
        inner = self.heads * self.head_dim
        self.kernel = kernel
        self.query = nnx.Linear(dim, inner, rngs=rngs)
        self.key = nnx.Linear(dim, inner, rngs=rngs)
        self.value = nnx.Linear(dim, inner, rngs=rngs)
        self.key_conv = SeparableConv1D(dim, inner, kernel, rngs)
        self.conv_kernel = nnx.Linear(inner, self.heads * kernel, rngs=rngs)
        self.conv_out = nnx.Linear(dim, inner, rngs=rngs)
        self.attn_out = nnx.Linear(2 * inner, dim, rngs=rngs)
        self.ln1 = nnx.LayerNorm(dim, epsilon=1e-12, rngs=rngs)
        self.ffn_in = nnx.Linear(dim, ffn_dim, rngs=rngs)
        self.ffn_out = nnx.Linear(ffn_dim, dim, rngs=rngs)
        self.ln2 = nnx.LayerNorm(dim, epsilon=1e-12, rngs=rngs)
        self.drop = nnx.Dropout(dropout, rngs=rngs)
        self.attn_drop = nnx.Dropout(attn_dropout, rngs=rngs)

    def _dynamic_conv(self, x: jax.Array, q: jax.Array, m: jax.Array) -> jax.Array:
        b, l, _ = x.shape
        h, d, k = self.heads, self.head_dim, self.kernel
        ck = self.conv_kernel(self.key_conv(x) * q).reshape(b, l, h, k)
        ck = jax.nn.softmax(ck, axis=-1)  # [b, l, h, k] per-position span kernel
        co = self.conv_out(x) * m  # [b, l, h*d]; zero beyond the chain like unfold's padding
        half = (k - 1) // 2
        co = jnp.pad(co, ((0, 0), (half, half), (0, 0)))
        win = jnp.stack([co[:, j : j + l] for j in range(k)], axis=2)  # [b, l, k, h*d]
        win = win.reshape(b, l, k, h, d)
        return jnp.einsum("blkhd,blhk->blhd", win, ck)  # [b, l, h, d]

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        b, l, _ = x.shape
        m = mask.astype(x.dtype)[..., None]  # [b, l, 1]
        x = x * m
        q = self.query(x)  # [b, l, h*d]
        qh, kh, vh = (
            t.reshape(b, l, self.heads, self.head_dim) for t in (q, self.key(x), self.value(x))
        )
        scores = jnp.einsum("bqhd,bkhd->bhqk", qh, kh) / jnp.sqrt(float(self.head_dim))
        # In the scores' dtype, as a weakly typed mask would be added: no float32 promotion.
        scores = scores + additive_mask(mask).astype(scores.dtype)
        probs = self.attn_drop(jax.nn.softmax(scores, axis=-1))  # [b, h, q, k]
        ctx = jnp.einsum("bhqk,bkhd->bqhd", probs, vh)  # [b, l, h, d]
        conv = self._dynamic_conv(x, q, m)  # [b, l, h, d]
        mixed = jnp.concatenate([ctx, conv], axis=2).reshape(b, l, -1)  # [b, l, 2*h*d]
        y = self.ln1(self.drop(self.attn_out(mixed)) + x)
        z = self.ffn_out(jax.nn.gelu(self.ffn_in(y), approximate=False))
        return self.ln2(self.drop(z) + y) * m  # [b, l, e]


class LinearHead(nnx.Module):
    def __init__(self, d_in: int, n_out: int, per_protein: bool, rngs: nnx.Rngs):
        self.per_protein = per_protein
        self.out = nnx.Linear(d_in, n_out, rngs=rngs)

    def features(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        return x  # [b, l, e]

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        return self.out(masked_mean(x, mask) if self.per_protein else x)


class MLPHead(nnx.Module):
    """LayerNorm -> Linear -> GELU -> Dropout -> Linear."""

    def __init__(
        self,
        d_in: int,
        n_out: int,
        per_protein: bool,
        rngs: nnx.Rngs,
        hidden: int = 256,
        dropout: float = 0.2,
    ):
        self.per_protein = per_protein
        self.norm = nnx.LayerNorm(d_in, rngs=rngs)
        self.hidden = nnx.Linear(d_in, hidden, rngs=rngs)
        self.drop = nnx.Dropout(dropout, rngs=rngs)
        self.out = nnx.Linear(hidden, n_out, rngs=rngs)

    def features(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        return self.drop(jax.nn.gelu(self.hidden(self.norm(x))))  # [b, l, hidden]

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        if self.per_protein:
            x = masked_mean(x, mask)[:, None, :]
        y = self.out(self.features(x, mask))
        return y[:, 0] if self.per_protein else y


CONVBERT_HEADS = 4  # the official head's; its input width must be a multiple of it


class ConvBertHead(nnx.Module):
    """The official Ankh downstream head: 1 ConvBERT layer (4 heads, ffn dim/2, kernel 7,
    dropout 0.2), then a linear decoder; per-protein tasks pool after the layer (max default)."""

    def __init__(
        self,
        d_in: int,
        n_out: int,
        per_protein: bool,
        rngs: nnx.Rngs,
        num_heads: int = CONVBERT_HEADS,
        kernel: int = 7,
        dropout: float = 0.2,
        pooling: Literal["max", "avg"] = "max",
    ):
        self.per_protein = per_protein
        self.pooling = pooling
        self.layer = ConvBertLayer(d_in, num_heads, max(1, d_in // 2), kernel, dropout, rngs)
        self.out = nnx.Linear(d_in, n_out, rngs=rngs)

    def features(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        return self.layer(x, mask)  # [b, l, e]

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        h = self.layer(x, mask)
        if self.per_protein:
            h = masked_max(h, mask) if self.pooling == "max" else masked_mean(h, mask)
        return self.out(h)


class ContactHead(nnx.Module):
    """Pairwise head: a trunk (linear/MLP/ConvBERT features) projected to ``proj`` dims per
    residue, then ``[a_i*a_j, |a_i-a_j|]`` plus a separation embedding -> one logit per pair.
    Symmetric by construction; output ``[b, l, l]``."""

    def __init__(
        self, d_in: int, trunk: HeadKind, rngs: nnx.Rngs, proj: int = 32, sep_buckets: int = 8
    ):
        dims = {"linear": d_in, "mlp": 256, "convbert": d_in}
        self.trunk = make_head(trunk, d_in, 1, per_protein=False, rngs=rngs)
        self.proj = nnx.Linear(dims[trunk], proj, rngs=rngs)
        self.pair = nnx.Linear(2 * proj, 1, rngs=rngs)
        self.sep = nnx.Embed(sep_buckets, 1, rngs=rngs)
        self.sep_buckets = sep_buckets

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        a = self.proj(self.trunk.features(x, mask))  # [b, l, p]
        prod = a[:, :, None, :] * a[:, None, :, :]  # [b, l, l, p]
        diff = jnp.abs(a[:, :, None, :] - a[:, None, :, :])  # [b, l, l, p]
        logits = self.pair(jnp.concatenate([prod, diff], axis=-1))[..., 0]  # [b, l, l]
        idx = jnp.arange(x.shape[1])
        sep = jnp.abs(idx[:, None] - idx[None, :])  # [l, l]
        bucket = jnp.clip(
            jnp.floor(jnp.log2(jnp.maximum(sep, 1))).astype(jnp.int32), 0, self.sep_buckets - 1
        )
        return logits + self.sep(bucket)[None, ..., 0]


def make_head(
    kind: HeadKind, d_in: int, n_out: int, per_protein: bool, rngs: nnx.Rngs, contacts: bool = False
) -> nnx.Module:
    """Build a head by name; ``contacts=True`` wraps the trunk in a pairwise ContactHead."""
    if contacts:
        return ContactHead(d_in, kind, rngs)
    if kind == "linear":
        return LinearHead(d_in, n_out, per_protein, rngs)
    if kind == "mlp":
        return MLPHead(d_in, n_out, per_protein, rngs)
    if kind == "convbert":
        return ConvBertHead(d_in, n_out, per_protein, rngs)
    raise ValueError(f"unknown head {kind!r}; one of linear, mlp, convbert")
