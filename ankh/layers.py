"""T5 building blocks in Flax NNX, named as HF T5 names its parameters.

Logical axis names (``embed heads kv mlp vocab relpos_buckets``) annotate every parameter;
``ankh/sharding.py`` maps them to mesh axes. Shapes in comments: b=batch, q/k=query/key length,
h=heads, d=d_kv, e=embed, f=mlp.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ankh.attention import TokenBias, attend
from ankh.config import AnkhConfig


def param(
    rngs: nnx.Rngs, shape: tuple[int, ...], std: float, axes: tuple[str | None, ...]
) -> nnx.Param:
    """A float32 parameter N(0, std) annotated with logical axes (sharded later, not eagerly)."""
    value = std * jax.random.normal(rngs.params(), shape, jnp.float32)
    return nnx.Param(value, out_sharding=axes, eager_sharding=False)


def drop_input(x: jax.Array, keys: jax.Array, proj: int, rate: float) -> jax.Array:
    """LoRA dropout (``ankh.lora.dropout_keys``): inverted dropout at ``rate`` of an adapter's
    input ``x`` ``[b * l, e]`` (rows flattened). Row r's mask at position p comes from
    ``keys[r]`` (its layer's) folded with ``proj`` and p, so it does not depend on the batch's
    other rows or its padded length."""
    b, (n, e) = keys.shape[0], x.shape

    def row(k: jax.Array) -> jax.Array:
        k = jax.random.fold_in(jax.random.wrap_key_data(k), proj)
        pos = jax.vmap(jax.random.fold_in, (None, 0))(k, jnp.arange(n // b))
        return jax.vmap(lambda kp: jax.random.bernoulli(kp, 1.0 - rate, (e,)))(pos)

    keep = jax.vmap(row)(keys).reshape(n, e)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


class RMSNorm(nnx.Module):
    """T5 layer norm: no mean subtraction, no bias; statistics in float32."""

    def __init__(self, dim: int, eps: float):
        self.weight = nnx.Param(
            jnp.ones((dim,), jnp.float32), out_sharding=("embed",), eager_sharding=False
        )
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)  # [b, l, 1]
        y = x32 * jax.lax.rsqrt(var + self.eps)
        return (self.weight[...] * y).astype(x.dtype)  # [b, l, e]


class Attention(nnx.Module):
    """Multi-head attention without the 1/sqrt(d) scale (T5 folds it into the init)."""

    def __init__(self, cfg: AnkhConfig, rngs: nnx.Rngs, dtype=jnp.float32):
        e, h, d, f = cfg.d_model, cfg.num_heads, cfg.d_kv, cfg.initializer_factor
        self.q = param(rngs, (e, h, d), f * (e * d) ** -0.5, ("embed", "heads", "kv"))
        self.k = param(rngs, (e, h, d), f * e**-0.5, ("embed", "heads", "kv"))
        self.v = param(rngs, (e, h, d), f * e**-0.5, ("embed", "heads", "kv"))
        self.o = param(rngs, (h, d, e), f * (h * d) ** -0.5, ("heads", "kv", "embed"))
        self.dtype = dtype

    def _proj(self, x: jax.Array, w: nnx.Param, name: str = "") -> jax.Array:
        """x [b, l, e] -> [b, l, h, d] as one 2-D matmul (XLA:CPU runs 3-D einsums ~1.5x slower)."""
        e, h, d = w.shape
        x2 = x.reshape(-1, e)
        y = self._lora(name, x2, x2 @ w[...].astype(self.dtype).reshape(e, h * d))  # [b*l, h*d]
        return y.reshape(*x.shape[:-1], h, d)  # [b, l, h, d]

    def _lora(self, name: str, x: jax.Array, y: jax.Array) -> jax.Array:
        """``y`` plus the LoRA adapter ``ankh.lora`` attached to projection ``name``, if any."""
        adapter = getattr(self, f"lora_{name}", None) if name else None
        if adapter is None:
            return y
        keys = getattr(self, "lora_keys", None)  # set in training steps only (ankh.lora)
        if keys is not None and self.lora_dropout > 0:
            x = drop_input(x, keys[...], "qkvo".index(name), self.lora_dropout)
        return y + (adapter(x) * self.lora_scale).astype(y.dtype)

    def project_kv(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self._proj(x, self.k, "k"), self._proj(x, self.v, "v")  # [b, k, h, d] each

    def __call__(
        self,
        x: jax.Array,
        bias: TokenBias | jax.Array,
        kv_input: jax.Array | None = None,
        kv: tuple[jax.Array, jax.Array] | None = None,
    ) -> jax.Array:
        """x [b, q, e]; ``bias`` a ``TokenBias`` (whole sequences; ``ankh.attention.prepare``) or
        a dense additive array [b|1, h|1, q, k] (decode steps); keys from kv_input or kv."""
        x = x.astype(self.dtype)
        q = self._proj(x, self.q, "q")  # [b, q, h, d]
        if kv is None:
            kv = self.project_kv(x if kv_input is None else kv_input.astype(self.dtype))
        ctx = attend(q, *kv, bias)  # [b, q, h, d]
        b, lq, h, d = ctx.shape
        ctx2 = ctx.reshape(b * lq, h * d)
        out = self._lora("o", ctx2, ctx2 @ self.o[...].astype(self.dtype).reshape(h * d, -1))
        return out.reshape(b, lq, -1)  # [b, q, e]


class GatedFFN(nnx.Module):
    """T5 v1.1 gated feed-forward: wo(act(wi_0 x) * wi_1 x)."""

    def __init__(self, cfg: AnkhConfig, rngs: nnx.Rngs, dtype=jnp.float32):
        e, f_, s = cfg.d_model, cfg.d_ff, cfg.initializer_factor
        self.wi_0 = param(rngs, (e, f_), s * e**-0.5, ("embed", "mlp"))
        self.wi_1 = (
            param(rngs, (e, f_), s * e**-0.5, ("embed", "mlp")) if cfg.is_gated_act else None
        )
        self.wo = param(rngs, (f_, e), s * f_**-0.5, ("mlp", "embed"))
        self.act = cfg.activation
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        x2 = x.astype(self.dtype).reshape(-1, x.shape[-1])  # [b*l, e]: 2-D matmuls run faster
        h = activation(self.act, x2 @ self.wi_0[...].astype(self.dtype))  # [b*l, f]
        if self.wi_1 is not None:
            h = h * (x2 @ self.wi_1[...].astype(self.dtype))  # [b*l, f]
        return (h @ self.wo[...].astype(self.dtype)).reshape(x.shape)  # [b, l, e]


def activation(name: str, x: jax.Array) -> jax.Array:
    if name == "gelu_new":
        return jax.nn.gelu(x, approximate=True)
    if name == "silu":
        return jax.nn.silu(x)
    return jax.nn.relu(x)


def relative_position_bucket(
    rel: jax.Array, bidirectional: bool, num_buckets: int, max_distance: int
) -> jax.Array:
    """HF/T5 bucketing of (key - query) offsets; same float32 op order as HF for parity. A
    NumPy ``rel`` is bucketed in NumPy (static facts of a config, computed while tracing for any
    mesh -- even a compile-only TPU slice's, whose devices cannot run an eager op)."""
    xp = np if isinstance(rel, np.ndarray) else jnp
    buckets = xp.zeros_like(rel)
    if bidirectional:
        num_buckets //= 2
        buckets = buckets + (rel > 0).astype(rel.dtype) * num_buckets
        rel = xp.abs(rel)
    else:
        rel = -xp.minimum(rel, 0)
    max_exact = num_buckets // 2
    is_small = rel < max_exact
    safe = xp.maximum(rel, 1).astype(xp.float32)  # log(0) is masked out by is_small anyway
    large = max_exact + (
        xp.log(safe / xp.float32(max_exact))
        / xp.float32(math.log(max_distance / max_exact))
        * xp.float32(num_buckets - max_exact)
    ).astype(rel.dtype)
    large = xp.minimum(large, num_buckets - 1)
    return buckets + xp.where(is_small, rel, large)


class RelativeBias(nnx.Module):
    """Learned per-head bias by relative-position bucket, computed once per stack."""

    def __init__(self, cfg: AnkhConfig, bidirectional: bool, rngs: nnx.Rngs):
        n, h = cfg.relative_attention_num_buckets, cfg.num_heads
        self.weight = param(
            rngs, (n, h), cfg.initializer_factor * cfg.d_model**-0.5, ("relpos_buckets", "heads")
        )
        self.bidirectional = bidirectional
        self.max_distance = cfg.relative_attention_max_distance

    def reach(self) -> int:
        """Offsets beyond +-reach get the bucket of +-reach: T5's buckets saturate at
        ``max_distance``, so a table over [-reach, reach] is exact for any length."""
        r = self.max_distance + 1
        far = relative_position_bucket(  # static facts of the config, in NumPy: not traced
            np.array([-r, r, -64 * r, 64 * r], np.int32),
            self.bidirectional,
            self.weight.shape[0],
            self.max_distance,
        )
        saturated = bool(far[0] == far[2]) and bool(far[1] == far[3])
        return r if saturated else 1 << 15  # an odd config (max_distance < exact range)

    def table(self) -> jax.Array:
        """Bias by offset ``k_pos - q_pos`` in [-reach, reach]: [h, 2 * reach + 1] float32."""
        r = self.reach()
        idx = relative_position_bucket(
            jnp.arange(-r, r + 1, dtype=jnp.int32),
            self.bidirectional,
            self.weight.shape[0],
            self.max_distance,
        )
        return jnp.take(self.weight[...], idx, axis=0).T  # [h, 2r+1]

    def __call__(self, q_pos: jax.Array, k_pos: jax.Array) -> jax.Array:
        """q_pos [b|1, q], k_pos [b|1, k] int positions -> bias [b|1, h, q, k] float32
        (decode steps; whole sequences use ``table`` per tile)."""
        rel = k_pos[:, None, :] - q_pos[:, :, None]  # [b, q, k]
        idx = relative_position_bucket(
            rel, self.bidirectional, self.weight.shape[0], self.max_distance
        )
        bias = jnp.take(self.weight[...], idx, axis=0)  # [b, q, k, h]
        return jnp.transpose(bias, (0, 3, 1, 2))  # [b, h, q, k]
