"""Embeddings: the encoder program -- ids in, pooled and/or per-residue embeddings out
(``</s>`` dropped). (The ``Encoder`` module itself is in ``ankh.model``.)

One pure function, ``encode_pool``, is what every embedding entry runs -- ``Ankh.embed``,
the Serve embedding deployment, the batch-embedding job's packed rows and evaluation (through
``Ankh.embed``) -- so they all compute the same numbers. Callers jit it themselves (and may
cache or AOT-compile it per shape); ``jit_encoder`` is the usual way.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx


def encoder_depth(layer: int | None, num_layers: int) -> int | None:
    """Encoder layers to run for a requested ``layer`` (1-based; ``None``/0 = the final output,
    which includes the final norm): ``None`` for the full encoder, else ``layer``."""
    if layer in (None, 0, num_layers):
        return None
    if not 1 <= layer <= num_layers:
        raise ValueError(f"layer must be in 1..{num_layers}, got {layer}")
    return layer


def encode_pool(
    graphdef: Any,
    params: Any,
    ids: jax.Array,
    segment_ids: jax.Array,
    positions: jax.Array | None = None,
    weights: jax.Array | None = None,
    *,
    num_layers: int | None = None,
    per_residue: bool = False,
    max_segments: int = 0,
    skip_first: int = 0,
    skip_segments: bool = True,
) -> dict[str, jax.Array]:
    """Embeddings of a padded or packed batch ``ids [b, l]``.

    Padded rows (one sequence a row; ``segment_ids`` is the attention mask, ``weights`` None):
    ``pooled [b, e]`` is the mean over residues -- the trailing ``</s>`` of each row dropped,
    as the official ``ankh`` extract does. Packed rows (``segment_ids`` 1..k per row,
    ``positions`` restarting per segment, ``weights [b, l]`` per token, 0 for ``</s>`` and
    padding): ``pooled [b, max_segments, e]`` holds each segment's weighted sum (windows of a
    long sequence add up to its mean). ``hidden [b, l, e]`` (float32) too if ``per_residue``.
    ``skip_first`` (padded rows): leading tokens left out of the mean -- ankh3's task token.
    Packed rows attend within each segment only, computing just the key tiles a query tile's
    segments span (``skip_segments``; False masks the other segments instead, as padded
    rows do: the same numbers, for comparing the two).
    """
    model = nnx.merge(graphdef, params)
    packed = weights is not None and skip_segments
    hidden = model.encode(ids, segment_ids, positions, num_layers=num_layers, packed=packed)
    hidden = hidden.astype(jnp.float32)
    if weights is None:
        n = jnp.sum(segment_ids, axis=1, keepdims=True) - 1  # [b, 1] residues: </s> is the last
        pos = jnp.arange(ids.shape[1])[None, :]
        res_mask = ((pos < n) & (pos >= skip_first)).astype(jnp.float32)  # [b, l]
        pooled = jnp.einsum("ble,bl->be", hidden, res_mask) / jnp.maximum(n - skip_first, 1)
    else:
        onehot = segment_ids[:, :, None] == jnp.arange(
            1, max_segments + 1, dtype=segment_ids.dtype
        )  # [b, l, s]
        w = onehot.astype(jnp.float32) * weights[:, :, None]  # [b, l, s]
        # HIGHEST: accelerators would otherwise sum these in reduced precision.
        pooled = jnp.einsum("bls,ble->bse", w, hidden, precision=jax.lax.Precision.HIGHEST)
    return {"pooled": pooled, "hidden": hidden} if per_residue else {"pooled": pooled}


def jit_encoder(
    graphdef: Any,
    per_residue: bool = False,
    num_layers: int | None = None,
    max_segments: int = 0,
    skip_first: int = 0,
    skip_segments: bool = True,
):
    """``encode_pool`` jitted for one architecture; params are an argument, so every
    checkpoint of that architecture shares the compiled shapes."""
    return jax.jit(
        partial(
            encode_pool,
            graphdef,
            per_residue=per_residue,
            num_layers=num_layers,
            max_segments=max_segments,
            skip_first=skip_first,
            skip_segments=skip_segments,
        )
    )
