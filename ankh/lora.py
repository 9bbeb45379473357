"""LoRA adapters on the encoder's self-attention projections, as ``flax.nnx.LoRA`` modules.

``attach`` puts one ``nnx.LoRA`` (``x @ lora_a @ lora_b``; ``lora_a`` random, ``lora_b`` zero,
so a fresh adapter changes nothing) beside each targeted projection of every encoder block;
``Attention`` adds ``lora_scale`` (alpha / rank, PEFT's scaling) times its output. The adapter
weights are ``nnx.LoRAParam`` variables, so an optimizer can train them alone. ``merge`` folds
them into the projection weights and removes them. Names and layout follow PEFT
(``peft_state`` / ``load_peft_state``): ``lora_A.weight [r, in]``, ``lora_B.weight [out, r]`` on
the HF T5 module ``encoder.block.{i}.layer.0.SelfAttention.{q,k,v,o}``; ``save_peft_dir`` /
``read_peft_dir`` write and read PEFT's adapter directory (``adapter_config.json`` +
``adapter_model.safetensors``), and ``apply_peft`` merges such an adapter into an ``Ankh``.

LoRA dropout (``LoraConfig.dropout``, PEFT's ``lora_dropout``: ``B(A(dropout(x))) * scale``)
acts only inside ``dropout_keys`` (``ankh.layers.drop_input`` drops), which a training step opens with its batch's ``row_seeds``.
Each mask is a pure function of (seed, step, global row, layer, projection, position): a
resumed run and any split of the batch over workers draw the masks one process draws.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ankh import storage

TARGETS = ("q", "k", "v", "o")
PEFT_PREFIX = "base_model.model.encoder.block"


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Defaults of Schmirler et al. 2024 for Ankh: rank 4, alpha 1, on q/k/v/o; ``dropout``:
    the rate of PEFT's ``lora_dropout`` on the adapters' input, in training steps only."""

    rank: int = 4
    alpha: float = 1.0
    targets: tuple[str, ...] = TARGETS
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"lora.rank must be >= 1, got {self.rank}")
        bad = set(self.targets) - set(TARGETS)
        if bad or not self.targets:
            raise ValueError(f"lora.targets must be a non-empty subset of {TARGETS}, got {bad}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")

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
        att.lora_dropout = cfg.dropout


class DropoutKeys(nnx.Variable):
    """One layer's per-row dropout keys (raw key data ``[b, 2]``); present only inside
    ``dropout_keys``, so evaluation, export and checkpoints never see them."""


def row_seeds(seed: int, step: int, rows: int) -> np.ndarray:
    """What training batch ``step`` carries for LoRA dropout: ``[rows, 3]`` uint32 (seed, step,
    global row). Split by rows with the batch, a worker holds its rows' seeds, hence the masks
    one process would draw for them."""
    out = np.empty((rows, 3), np.uint32)
    out[:, 0], out[:, 1], out[:, 2] = seed % 2**32, step, np.arange(rows)
    return out


@contextlib.contextmanager
def dropout_keys(encoder: nnx.Module, seeds: jax.Array | None):
    """Within: the adapters of ``encoder`` drop their input at ``LoraConfig.dropout``, with
    masks from ``seeds`` (``row_seeds``'s rows); a no-op without seeds or without dropout."""
    atts = _attentions(encoder)
    if seeds is None or not any(getattr(a, "lora_dropout", 0.0) > 0 for a in atts):
        yield
        return

    def row_key(s: jax.Array) -> jax.Array:
        return jax.random.fold_in(jax.random.fold_in(jax.random.key(s[0]), s[1]), s[2])

    keys = jax.vmap(row_key)(jnp.asarray(seeds, jnp.uint32))  # [b]
    for i, att in enumerate(atts):
        layer = jax.vmap(jax.random.fold_in, (0, None))(keys, i)
        att.lora_keys = DropoutKeys(jax.random.key_data(layer))
    try:
        yield
    finally:
        for att in atts:
            del att.lora_keys


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


# PEFT settings this mapping does not reproduce: an adapter using one is refused, not misread.
_UNSUPPORTED = {
    "use_dora": False,
    "use_rslora": False,
    "bias": "none",
    "fan_in_fan_out": False,
    "rank_pattern": {},
    "alpha_pattern": {},
    "layers_to_transform": None,
    "modules_to_save": None,
}


def peft_config(cfg: LoraConfig, base: str = "") -> dict[str, Any]:
    return {
        "peft_type": "LORA",
        "base_model_name_or_path": base,
        "r": cfg.rank,
        "lora_alpha": cfg.alpha,
        "lora_dropout": cfg.dropout,
        "target_modules": list(cfg.targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "task_type": "FEATURE_EXTRACTION",
    }


def save_peft_dir(directory: str, encoder: nnx.Module, cfg: LoraConfig, base: str = "") -> None:
    """PEFT's adapter directory: the adapters alone (``peft.PeftModel.from_pretrained`` reads it
    onto ``transformers``' ``T5EncoderModel``)."""
    from safetensors.numpy import save_file

    tensors = peft_state(encoder)
    storage.atomic_write(
        f"{directory}/adapter_model.safetensors",
        lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}),
    )

    def write_config(tmp: str) -> None:
        with open(tmp, "w") as fh:
            json.dump(peft_config(cfg, base), fh, indent=2)

    storage.atomic_write(f"{directory}/adapter_config.json", write_config)


def read_peft_dir(directory: str) -> tuple[LoraConfig, dict[str, np.ndarray]]:
    """A PEFT LoRA adapter directory -> (``LoraConfig``, tensors named as ``peft_state``)."""
    from safetensors.numpy import load

    with storage.open_file(f"{directory}/adapter_config.json", "r") as fh:
        conf = json.load(fh)
    if conf.get("peft_type") != "LORA":
        raise ValueError(f"{directory}: peft_type {conf.get('peft_type')!r}, expected LORA")
    for key, plain in _UNSUPPORTED.items():
        if conf.get(key, plain) not in (plain, None, {}, False):
            raise ValueError(f"{directory}: {key}={conf[key]!r} is not supported")
    targets = conf["target_modules"]
    targets = [targets] if isinstance(targets, str) else list(targets)
    cfg = LoraConfig(
        rank=int(conf["r"]),
        alpha=float(conf["lora_alpha"]),
        targets=tuple(targets),
        dropout=float(conf.get("lora_dropout") or 0.0),
    )
    with storage.open_file(f"{directory}/adapter_model.safetensors", "rb") as fh:
        raw = load(fh.read())
    # PEFT names a wrapped model's tensors with or without the leading "base_model.model."
    tensors = {
        k if k.startswith("base_model.") else f"base_model.model.{k}": v for k, v in raw.items()
    }
    return cfg, tensors


def apply_peft(model: Any, directory: str) -> Any:
    """``model`` (an ``Ankh``) with the PEFT adapter in ``directory`` merged into its encoder."""
    cfg, tensors = read_peft_dir(directory)
    module = nnx.merge(model.graphdef, jax.tree.map(jnp.array, model.params))  # a copy
    load_peft_state(module.encoder, tensors, cfg)
    merge(module.encoder)
    return type(model)(model.config, module, model.tokenizer)
