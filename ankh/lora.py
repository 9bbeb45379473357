"""LoRA adapters on the encoder's self-attention projections, as ``flax.nnx.LoRA`` modules.

``attach`` puts one ``nnx.LoRA`` (``x @ lora_a @ lora_b``; ``lora_a`` random, ``lora_b`` zero,
so a fresh adapter changes nothing) beside each targeted projection of every encoder block;
``Attention`` adds ``lora_scale`` (alpha / rank, PEFT's scaling) times its output. The adapter
weights are ``nnx.LoRAParam`` variables, so an optimizer can train them alone. ``merge`` folds
them into the projection weights and removes them. Names and layout follow PEFT
(``peft_state`` / ``load_peft_state``): ``lora_A.weight [r, in]``, ``lora_B.weight [out, r]`` on
the HF T5 module ``encoder.block.{i}.layer.0.SelfAttention.{q,k,v,o}``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

TARGETS = ("q", "k", "v", "o")
PEFT_PREFIX = "base_model.model.encoder.block"


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Defaults of Schmirler et al. 2024 for Ankh: rank 4, alpha 1, on q/k/v/o."""

    rank: int = 4
    alpha: float = 1.0
    targets: tuple[str, ...] = TARGETS

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"lora.rank must be >= 1, got {self.rank}")
        bad = set(self.targets) - set(TARGETS)
        if bad or not self.targets:
            raise ValueError(f"lora.targets must be a non-empty subset of {TARGETS}, got {bad}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


def _attentions(encoder: nnx.Module) -> list[Any]:
    return [blk.SelfAttention for blk in encoder.block]


def _dims(att: Any, target: str) -> tuple[int, int]:
    e, h, d = att.q.shape
    return (h * d, e) if target == "o" else (e, h * d)


def attach(encoder: nnx.Module, cfg: LoraConfig, rngs: nnx.Rngs) -> None:
    """Add a fresh adapter to each targeted projection of every encoder block."""
    for att in _attentions(encoder):
        for t in cfg.targets:
            d_in, d_out = _dims(att, t)
            setattr(att, f"lora_{t}", nnx.LoRA(d_in, cfg.rank, d_out, rngs=rngs))
        att.lora_scale = cfg.scale


def merge(encoder: nnx.Module) -> None:
    """Fold every adapter into its projection weight (W + scale * A @ B) and remove it."""
    for att in _attentions(encoder):
        for t in TARGETS:
            lora = getattr(att, f"lora_{t}", None)
            if lora is None:
                continue
            w = getattr(att, t)
            delta = (lora.lora_a[...] @ lora.lora_b[...]) * att.lora_scale
            w[...] = w[...] + delta.reshape(w.shape).astype(w[...].dtype)
            delattr(att, f"lora_{t}")


def peft_state(encoder: nnx.Module) -> dict[str, np.ndarray]:
    """The adapters as PEFT's ``adapter_model.safetensors`` tensors (float32)."""
    out = {}
    for i, att in enumerate(_attentions(encoder)):
        for t in TARGETS:
            lora = getattr(att, f"lora_{t}", None)
            if lora is not None:
                key = f"{PEFT_PREFIX}.{i}.layer.0.SelfAttention.{t}"
                out[f"{key}.lora_A.weight"] = np.asarray(lora.lora_a[...], np.float32).T.copy()
                out[f"{key}.lora_B.weight"] = np.asarray(lora.lora_b[...], np.float32).T.copy()
    return out


def load_peft_state(encoder: nnx.Module, tensors: dict[str, np.ndarray], cfg: LoraConfig) -> None:
    """Attach adapters (``cfg``) and set them from PEFT tensors; every tensor must be used."""
    attach(encoder, cfg, nnx.Rngs(0))
    used = set()
    for i, att in enumerate(_attentions(encoder)):
        for t in cfg.targets:
            key = f"{PEFT_PREFIX}.{i}.layer.0.SelfAttention.{t}"
            lora = getattr(att, f"lora_{t}")
            for name, var in (
                (f"{key}.lora_A.weight", lora.lora_a),
                (f"{key}.lora_B.weight", lora.lora_b),
            ):
                if name not in tensors:
                    raise ValueError(f"adapter has no tensor {name}")
                value = np.asarray(tensors[name], np.float32).T
                if value.shape != var[...].shape:
                    raise ValueError(
                        f"{name}: shape {value.T.shape}, expected {var[...].shape[::-1]}"
                    )
                var[...] = jnp.asarray(value)
                used.add(name)
    extra = sorted(set(tensors) - used)
    if extra:
        raise ValueError(f"adapter tensors not matched by targets {cfg.targets}: {extra[:3]}")
