"""Model configuration: the Ankh architecture as a frozen dataclass, with published presets.

Parameter counts of the presets are checked exactly in tests (they pin the architecture):
base 736,453,632; large 1,878,705,152 (the ankh2-* the same); ankh3-large 1,879,049,216;
ankh3-xl 5,730,907,136 (see its preset for which of its shapes are published).
``HUB_IDS`` maps each preset of a released model to its Hugging Face hub id.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

_ACTS = {
    "gelu_new": "gelu_new",
    "gelu": "gelu_new",
    "gelu_pytorch_tanh": "gelu_new",
    "silu": "silu",
    "swish": "silu",
    "relu": "relu",
}


@dataclasses.dataclass(frozen=True)
class AnkhConfig:
    """A T5 (v1.1-style, gated FFN, untied head) encoder-decoder, named like HF ``T5Config``."""

    vocab_size: int = 144
    d_model: int = 768
    d_ff: int = 3072
    d_kv: int = 64
    num_heads: int = 12
    num_layers: int = 48  # encoder layers
    num_decoder_layers: int = 24
    relative_attention_num_buckets: int = 64
    relative_attention_max_distance: int = 128
    dense_act_fn: str = "gelu_new"  # tanh-approximate GELU; "silu" for Ankh2/3
    is_gated_act: bool = True
    layer_norm_epsilon: float = 1e-6
    tie_word_embeddings: bool = False
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0
    dropout_rate: float = 0.0
    initializer_factor: float = 1.0
    max_length: int = 4096  # longest sequence (residues) accepted by the high-level API
    # ankh3 was trained with a task token first: "[NLU]" (embedding, scoring) or "[S2S]"
    # (sequence completion); the API adds it (and strips it from outputs) when this is set.
    task_prefixes: bool = False

    def __post_init__(self) -> None:
        if self.dense_act_fn not in _ACTS:
            raise ValueError(
                f"unsupported dense_act_fn {self.dense_act_fn!r}; one of {sorted(_ACTS)}"
            )
        for name in (
            "vocab_size",
            "d_model",
            "d_ff",
            "d_kv",
            "num_heads",
            "num_layers",
            "num_decoder_layers",
            "relative_attention_num_buckets",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.d_kv

    @property
    def activation(self) -> str:
        return _ACTS[self.dense_act_fn]

    def task_prefix(self, task: str = "[NLU]") -> str | None:
        """The task token put first for ``task`` (``[NLU]``: embedding and scoring; ``[S2S]``:
        generation), or None for a model trained without them (ankh, ankh2)."""
        return task if self.task_prefixes else None

    def replace(self, **kw: Any) -> AnkhConfig:
        return dataclasses.replace(self, **kw)

    # ---- HF interop -------------------------------------------------------------------------
    def to_hf_dict(self) -> dict[str, Any]:
        act = "gelu_new" if self.activation == "gelu_new" else self.activation
        return {
            "architectures": ["T5ForConditionalGeneration"],
            "model_type": "t5",
            "vocab_size": self.vocab_size,
            "d_model": self.d_model,
            "d_ff": self.d_ff,
            "d_kv": self.d_kv,
            "num_heads": self.num_heads,
            "num_layers": self.num_layers,
            "num_decoder_layers": self.num_decoder_layers,
            "relative_attention_num_buckets": self.relative_attention_num_buckets,
            "relative_attention_max_distance": self.relative_attention_max_distance,
            "feed_forward_proj": ("gated-" if self.is_gated_act else "") + act,
            "dense_act_fn": act,
            "is_gated_act": self.is_gated_act,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "tie_word_embeddings": self.tie_word_embeddings,
            "scale_decoder_outputs": self.tie_word_embeddings,
            "pad_token_id": self.pad_token_id,
            "eos_token_id": self.eos_token_id,
            "decoder_start_token_id": self.decoder_start_token_id,
            "dropout_rate": self.dropout_rate,
            "initializer_factor": self.initializer_factor,
            "is_encoder_decoder": True,
            "use_cache": True,
            "ankh_max_length": self.max_length,
            "ankh_task_prefixes": self.task_prefixes,
        }

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> AnkhConfig:
        if d.get("model_type", "t5") not in ("t5", "ankh", "mt5"):
            raise ValueError(f"not a T5-family config: model_type={d.get('model_type')!r}")
        proj = d.get("feed_forward_proj", "relu")
        gated = proj.startswith("gated-")
        act = d.get("dense_act_fn") or proj.split("-")[-1]
        if proj == "gated-gelu":  # HF maps "gated-gelu" to gelu_new for backwards compatibility
            act = "gelu_new"
        return cls(
            vocab_size=d["vocab_size"],
            d_model=d["d_model"],
            d_ff=d["d_ff"],
            d_kv=d["d_kv"],
            num_heads=d["num_heads"],
            num_layers=d["num_layers"],
            num_decoder_layers=d.get("num_decoder_layers") or d["num_layers"],
            relative_attention_num_buckets=d.get("relative_attention_num_buckets", 32),
            relative_attention_max_distance=d.get("relative_attention_max_distance", 128),
            dense_act_fn=act,
            is_gated_act=d.get("is_gated_act", gated),
            layer_norm_epsilon=d.get("layer_norm_epsilon", 1e-6),
            # transformers>=5 always writes tie_word_embeddings=true and keeps the T5-v1.0
            # behaviour (tied head, outputs scaled by d_model**-0.5) in scale_decoder_outputs.
            tie_word_embeddings=d.get("scale_decoder_outputs", d.get("tie_word_embeddings", True)),
            pad_token_id=d.get("pad_token_id", 0),
            eos_token_id=d.get("eos_token_id", 1),
            decoder_start_token_id=d.get("decoder_start_token_id", 0),
            dropout_rate=d.get("dropout_rate", 0.0),
            initializer_factor=d.get("initializer_factor", 1.0),
            max_length=d.get("ankh_max_length", 4096),
            # Absent from the hub's own config.json: ``ankh.resolve`` then switches it on when
            # the tokenizer carries the [NLU]/[S2S] tokens (as ankh3's does).
            task_prefixes=bool(d.get("ankh_task_prefixes", False)),
        )

    @classmethod
    def from_hf_config(cls, path: str | Path) -> AnkhConfig:
        """Read an HF ``config.json`` (a file, or a directory holding one)."""
        p = Path(path)
        if p.is_dir():
            p = p / "config.json"
        try:
            return cls.from_hf_dict(json.loads(p.read_text()))
        except FileNotFoundError:
            raise FileNotFoundError(f"no HF config.json at {p}") from None
        except (KeyError, json.JSONDecodeError) as e:
            raise ValueError(f"{p} is not a valid T5 config.json: {e!r}") from None


_LARGE = dict(d_model=1536, d_ff=3840, d_kv=64, num_heads=16)
# ankh2-large and its extended trainings ext1/ext2: ankh-large's shape with SiLU (published
# config.json of ankh2-large; ext1's as mirrored by Synthyra/ANKH2_large; ext2's model card:
# "based on ANKH-Large ... activation changed to silu").
_ANKH2 = dict(**_LARGE, dense_act_fn="silu")
_ANKH3 = dict(dense_act_fn="silu", vocab_size=256, task_prefixes=True)

PRESETS: dict[str, AnkhConfig] = {
    "base": AnkhConfig(),
    "large": AnkhConfig(**_LARGE),
    "ankh2-large": AnkhConfig(**_ANKH2),
    "ankh2-ext1": AnkhConfig(**_ANKH2),
    "ankh2-ext2": AnkhConfig(**_ANKH2),
    # Encoder as published (Synthyra/ANKH3_large config.json: 48 x 1536, d_ff 3840, 256 ids);
    # the decoder depth (24, as ankh-large) is not in a published source we could read.
    "ankh3-large": AnkhConfig(**_LARGE, **_ANKH3),
    # Published (Synthyra's FastANKH card): 48 encoder layers, d_model 2560, 32 heads, SiLU,
    # 3.49B encoder parameters. NOT confirmed from a published config: d_kv 64 (every other
    # Ankh), d_ff 6720 (what makes the encoder 3.49B with those), 24 decoder layers. Loading
    # the hub's config.json ("ElnaggarLab/ankh3-xl") always uses the real shapes.
    "ankh3-xl": AnkhConfig(d_model=2560, d_ff=6720, d_kv=64, num_heads=32, **_ANKH3),
    # Small shapes for tests, the embedded default and CPU experiments.
    "tiny": AnkhConfig(
        d_model=64,
        d_ff=128,
        d_kv=16,
        num_heads=4,
        num_layers=2,
        num_decoder_layers=2,
        relative_attention_num_buckets=32,
        max_length=1024,
    ),
    "small": AnkhConfig(
        d_model=256,
        d_ff=640,
        d_kv=32,
        num_heads=8,
        num_layers=6,
        num_decoder_layers=3,
        max_length=1024,
    ),
}


# The released models by the names people use (Hugging Face hub ids; ``ankh.load`` takes both).
HUB_IDS: dict[str, str] = {
    "base": "ElnaggarLab/ankh-base",
    "large": "ElnaggarLab/ankh-large",
    "ankh2-large": "ElnaggarLab/ankh2-large",
    "ankh2-ext1": "ElnaggarLab/ankh2-ext1",
    "ankh2-ext2": "ElnaggarLab/ankh2-ext2",
    "ankh3-large": "ElnaggarLab/ankh3-large",
    "ankh3-xl": "ElnaggarLab/ankh3-xl",
}


def get_preset(name: str) -> AnkhConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None
