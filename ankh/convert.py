"""HF T5 <-> Ankh parameter conversion: a name map plus transposes/reshapes.

Reads ``model.safetensors`` (never unpickles; ``pytorch_model.bin`` only through
``torch.load(weights_only=True)`` when torch happens to be installed) and writes HF directories
that ``transformers.T5ForConditionalGeneration.from_pretrained`` loads.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from ankh import storage
from ankh.config import AnkhConfig

log = logging.getLogger(__name__)
Path_ = tuple  # a flat NNX state path, e.g. ("encoder", "block", 0, "SelfAttention", "q")

_ATTN = ("q", "k", "v", "o")


def _attn_to_ours(name: str, w: np.ndarray, cfg: AnkhConfig) -> np.ndarray:
    e, h, d = cfg.d_model, cfg.num_heads, cfg.d_kv
    return w.T.reshape(h, d, e) if name == "o" else w.T.reshape(e, h, d)


def _attn_to_hf(name: str, w: np.ndarray, cfg: AnkhConfig) -> np.ndarray:
    e, h, d = cfg.d_model, cfg.num_heads, cfg.d_kv
    return w.reshape(h * d, e).T if name == "o" else w.reshape(e, h * d).T


def name_map(cfg: AnkhConfig) -> Iterator[tuple[str, Path_, Callable, Callable]]:
    """Yield (hf_name, our_path, hf->ours, ours->hf) for every parameter."""
    ident = lambda w, c=None: w  # noqa: E731
    tr = lambda w, c=None: np.ascontiguousarray(w.T)  # noqa: E731
    yield "shared.weight", ("shared",), ident, ident
    if not cfg.tie_word_embeddings:
        yield "lm_head.weight", ("lm_head",), tr, tr
    wi = ("wi_0", "wi_1") if cfg.is_gated_act else ("wi",)
    for stack, n_layers in (("encoder", cfg.num_layers), ("decoder", cfg.num_decoder_layers)):
        yield (
            f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            (stack, "relative_attention_bias", "weight"),
            ident,
            ident,
        )
        yield (
            f"{stack}.final_layer_norm.weight",
            (stack, "final_layer_norm", "weight"),
            ident,
            ident,
        )
        subs = [("SelfAttention", "self_attn_norm")]
        if stack == "decoder":
            subs.append(("EncDecAttention", "cross_attn_norm"))
        for i in range(n_layers):
            pre = f"{stack}.block.{i}.layer"
            for j, (attn, norm) in enumerate(subs):
                for p in _ATTN:
                    yield (
                        f"{pre}.{j}.{attn}.{p}.weight",
                        (stack, "block", i, attn, p),
                        lambda w, c, p=p: _attn_to_ours(p, w, c),
                        lambda w, c, p=p: _attn_to_hf(p, w, c),
                    )
                yield (
                    f"{pre}.{j}.layer_norm.weight",
                    (stack, "block", i, norm, "weight"),
                    ident,
                    ident,
                )
            j = len(subs)
            for hf_w, ours in zip(wi, ("wi_0", "wi_1")):
                yield (
                    f"{pre}.{j}.DenseReluDense.{hf_w}.weight",
                    (stack, "block", i, "DenseReluDense", ours),
                    tr,
                    tr,
                )
            yield (
                f"{pre}.{j}.DenseReluDense.wo.weight",
                (stack, "block", i, "DenseReluDense", "wo"),
                tr,
                tr,
            )
            yield (
                f"{pre}.{j}.layer_norm.weight",
                (stack, "block", i, "ffn_norm", "weight"),
                ident,
                ident,
            )


def hf_to_flat(tensors: dict[str, np.ndarray], cfg: AnkhConfig) -> dict[Path_, np.ndarray]:
    """HF tensors -> our flat params. Missing or mis-shaped tensors raise a clear error."""
    out, missing = {}, []
    for hf_name, path, to_ours, _ in name_map(cfg):
        w = tensors.get(hf_name)
        if w is None and hf_name == "shared.weight":
            w = tensors.get("encoder.embed_tokens.weight")
        if w is None and hf_name == "lm_head.weight":  # saved tied to the embedding (HF >= 5)
            w = tensors.get("shared.weight")
        if w is None:
            missing.append(hf_name)
            continue
        out[path] = np.asarray(to_ours(np.asarray(w, np.float32), cfg))
    if missing:
        raise ValueError(f"HF checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}")
    return out


def flat_to_hf(flat: dict[Path_, np.ndarray], cfg: AnkhConfig) -> dict[str, np.ndarray]:
    return {
        hf: np.ascontiguousarray(to_hf(np.asarray(flat[path]), cfg))
        for hf, path, _, to_hf in name_map(cfg)
    }


def read_hf_tensors(path: str) -> dict[str, np.ndarray]:
    """Tensors of an HF directory (local or any fsspec URL such as gs://)."""
    fs, root = storage.filesystem(path)
    root = root.rstrip("/")
    st_files = sorted(f for f in fs.ls(root, detail=False) if f.endswith(".safetensors"))
    if st_files:
        tensors: dict[str, np.ndarray] = {}
        for f in st_files:
            with fs.open(f, "rb") as fh:
                try:
                    tensors.update(st_load(fh.read()))
                except Exception as e:  # safetensors raises its own error types
                    raise ValueError(f"{f}: corrupt safetensors file ({e})") from None
        return tensors
    if fs.exists(f"{root}/pytorch_model.bin"):
        try:
            import torch  # optional: only to read legacy HF checkpoints
        except ImportError:
            raise ValueError(
                f"{path} has only pytorch_model.bin; install torch to read it, or "
                "convert it to model.safetensors"
            ) from None
        with fs.open(f"{root}/pytorch_model.bin", "rb") as fh:
            sd = torch.load(fh, map_location="cpu", weights_only=True)
        return {k: v.float().numpy() for k, v in sd.items()}
    raise FileNotFoundError(f"{path}: no model.safetensors or pytorch_model.bin found")


def write_hf_dir(
    path: str,
    flat: dict[Path_, np.ndarray],
    cfg: AnkhConfig,
    tokenizer_vocab: dict[str, int] | None = None,
) -> None:
    """Write config.json + model.safetensors (+ tokenizer.json when a vocab is given)."""
    fs, root = storage.filesystem(path)
    fs.makedirs(root, exist_ok=True)
    tensors = flat_to_hf(flat, cfg)
    with fs.open(f"{root}/model.safetensors", "wb") as fh:
        fh.write(st_save(tensors, metadata={"format": "pt"}))
    with fs.open(f"{root}/config.json", "w") as fh:
        json.dump(cfg.to_hf_dict(), fh, indent=2)
    if tokenizer_vocab is not None:
        with fs.open(f"{root}/tokenizer.json", "w") as fh:
            json.dump(_tokenizer_json(tokenizer_vocab), fh, indent=1)
    log.info("wrote HF directory %s (%d tensors)", path, len(tensors))


def _tokenizer_json(vocab: dict[str, int]) -> dict:
    """A minimal HF ``tokenizers`` WordLevel description of the character vocabulary."""
    special = [t for t in vocab if t.startswith("<")]
    return {
        "version": "1.0",
        "added_tokens": [
            {
                "id": vocab[t],
                "content": t,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for t in special
        ],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Split",
            "pattern": {"String": ""},
            "behavior": "Isolated",
            "invert": False,
        },
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": "</s>", "type_id": 0}},
            ],
            "pair": [
                {"Sequence": {"id": "A", "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 0}},
                {"SpecialToken": {"id": "</s>", "type_id": 0}},
            ],
            "special_tokens": {"</s>": {"id": "</s>", "ids": [vocab["</s>"]], "tokens": ["</s>"]}},
        },
        "decoder": None,
        "model": {
            "type": "WordLevel",
            "vocab": dict(sorted(vocab.items(), key=lambda kv: kv[1])),
            "unk_token": "<unk>",
        },
    }
