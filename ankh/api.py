"""The public model object: ``ankh.load(...)`` and what it can do (embed, export)."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any, Iterable

import fsspec
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ankh import convert
from ankh.config import PRESETS, AnkhConfig
from ankh.generate import GenerationMixin
from ankh.model import AnkhModel
from ankh.scoring import ScoringMixin
from ankh.tokenizer import AnkhTokenizer, TokenizerError

log = logging.getLogger(__name__)
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def bucket_length(n: int, minimum: int = 16) -> int:
    """Smallest padded length >= n from {16, 24, 32, 48, 64, 96, ...}: few shapes, <33% waste."""
    size = minimum
    while True:
        if n <= size:
            return size
        if n <= size * 3 // 2:
            return size * 3 // 2
        size *= 2


def _as_dtype(dtype: Any) -> Any:
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {list(_DTYPES)}, got {dtype!r}")
        return _DTYPES[dtype]
    return dtype


class Ankh(GenerationMixin, ScoringMixin):
    """An Ankh model with its tokenizer: embedding, export (generation/scoring added alongside)."""

    def __init__(self, config: AnkhConfig, model: AnkhModel, tokenizer: AnkhTokenizer | None = None):
        self.config = config
        self.tokenizer = tokenizer or AnkhTokenizer(vocab_size=config.vocab_size)
        self.graphdef, self.params = nnx.split(model)
        self.dtype = model.dtype
        self._fns: dict[Any, Any] = {}

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def random(cls, config: AnkhConfig, seed: int = 0, dtype: Any = "float32") -> "Ankh":
        return cls(config, AnkhModel(config, nnx.Rngs(seed), _as_dtype(dtype)))

    @classmethod
    def from_flat(cls, config: AnkhConfig, flat: dict[tuple, np.ndarray], dtype: Any = "float32",
                  tokenizer: AnkhTokenizer | None = None) -> "Ankh":
        """Build from a flat {state path: array} dict, checking every name and shape."""
        abstract = nnx.eval_shape(lambda: AnkhModel(config, nnx.Rngs(0), _as_dtype(dtype)))
        graphdef, state = nnx.split(abstract)
        expected = dict(nnx.to_flat_state(state))
        if set(expected) != set(flat):
            extra, missing = set(flat) - set(expected), set(expected) - set(flat)
            raise ValueError(f"parameters do not match the config: missing {sorted(missing)[:3]}, "
                             f"unexpected {sorted(extra)[:3]}")
        for path, var in expected.items():
            if tuple(var.shape) != tuple(np.shape(flat[path])):
                raise ValueError(f"parameter {'.'.join(map(str, path))} has shape "
                                 f"{np.shape(flat[path])}, config expects {var.shape}")
            var.set_value(jnp.asarray(flat[path], jnp.float32))
        return cls(config, nnx.merge(graphdef, state), tokenizer)

    def flat_params(self) -> dict[tuple, np.ndarray]:
        return {p: np.asarray(v[...]) for p, v in nnx.to_flat_state(self.params)}

    @property
    def module(self) -> AnkhModel:
        return nnx.merge(self.graphdef, self.params)

    def num_params(self) -> int:
        return sum(x.size for x in jax.tree.leaves(self.params))

    # ---- export --------------------------------------------------------------------------------
    def save_hf(self, path: str | Path) -> None:
        """Write an HF directory (config.json, model.safetensors, tokenizer.json)."""
        convert.write_hf_dir(str(path), self.flat_params(), self.config, self.tokenizer.vocab)

    # ---- embedding -------------------------------------------------------------------------------
    def tokenize(self, sequences: Iterable[str]) -> list[np.ndarray]:
        """Encode (``</s>`` appended), with errors that name the offending sequence."""
        out = []
        for i, s in enumerate(sequences):
            if not isinstance(s, str):
                raise TokenizerError(f"sequence {i}: expected a string, got {type(s).__name__}")
            try:
                ids = self.tokenizer.encode(s, allow_sentinels=False)
            except TokenizerError as e:
                raise TokenizerError(f"sequence {i}: {e}") from None
            if len(ids) <= 1:
                raise TokenizerError(f"sequence {i} is empty")
            if len(ids) - 1 > self.config.max_length:
                raise TokenizerError(f"sequence {i} has {len(ids) - 1} residues, over the model's "
                                     f"max_length {self.config.max_length}")
            out.append(ids)
        return out

    def _encoder_fn(self, per_residue: bool, num_layers: int | None):
        key = ("enc", per_residue, num_layers)
        if key not in self._fns:
            self._fns[key] = jax.jit(partial(_encode_pool, self.graphdef, per_residue=per_residue,
                                             num_layers=num_layers))
        return self._fns[key]

    def embed(self, sequences: Iterable[str], per_residue: bool = False, batch_tokens: int = 8192,
              layer: int | None = None) -> np.ndarray | list[np.ndarray]:
        """Mean-pooled ``[n, d_model]`` float32, or per-residue ``[L_i, d_model]`` arrays.

        ``</s>`` is dropped (as the official ``ankh`` extract does); padding never changes a
        result. ``layer`` picks an earlier encoder layer's output (1-based; default: final).
        """
        toks = self.tokenize(sequences)
        if layer is not None and not 1 <= layer <= self.config.num_layers:
            raise ValueError(f"layer must be in 1..{self.config.num_layers}, got {layer}")
        num_layers = None if layer in (None, self.config.num_layers) else layer
        fn = self._encoder_fn(per_residue, num_layers)
        pooled = np.zeros((len(toks), self.config.d_model), np.float32)
        residues: list[np.ndarray | None] = [None] * len(toks)
        for idx, ids, mask in token_budget_batches(toks, batch_tokens, self.tokenizer.pad_id):
            out = fn(self.params, ids, mask)
            n = len(idx)
            pooled[idx] = np.asarray(out["pooled"][:n])
            if per_residue:
                hidden = np.asarray(out["hidden"][:n])
                for row, i in enumerate(idx):
                    residues[i] = hidden[row, : len(toks[i]) - 1]
        return residues if per_residue else pooled  # type: ignore[return-value]


def token_budget_batches(toks: list[np.ndarray], batch_tokens: int, pad_id: int = 0):
    """Sort by length, bucket to few padded lengths, fill each batch to ``batch_tokens``.

    Yields ``(indices, ids [B, L], mask [B, L])``; B is fixed per bucket (the last batch of a
    bucket rounds up to a power of two) so jit compiles a handful of shapes.
    """
    order = np.argsort([len(t) for t in toks], kind="stable")
    i = 0
    while i < len(order):
        length = bucket_length(len(toks[order[i]]))
        full = max(1, batch_tokens // length)
        j = i
        while j < len(order) and j - i < full and len(toks[order[j]]) <= length:
            j += 1
        rows = full if j - i == full else min(full, 1 << (j - i - 1).bit_length())
        ids = np.full((rows, length), pad_id, np.int32)
        mask = np.zeros((rows, length), np.int32)
        for r, k in enumerate(order[i:j]):
            ids[r, : len(toks[k])] = toks[k]
            mask[r, : len(toks[k])] = 1
        yield order[i:j], ids, mask
        i = j


def _encode_pool(graphdef, params, ids, mask, per_residue: bool, num_layers: int | None):
    model = nnx.merge(graphdef, params)
    hidden = model.encode(ids, mask, num_layers=num_layers).astype(jnp.float32)  # [b, l, e]
    # Residues only: drop the trailing </s> (the last real token of each row).
    n = jnp.sum(mask, axis=1, keepdims=True) - 1  # [b, 1]
    res_mask = (jnp.arange(ids.shape[1])[None, :] < n).astype(jnp.float32)  # [b, l]
    pooled = jnp.einsum("ble,bl->be", hidden, res_mask) / jnp.maximum(n, 1)  # [b, e]
    return {"pooled": pooled, "hidden": hidden} if per_residue else {"pooled": pooled}


def load(name_or_path: str | Path, dtype: Any = "float32", seed: int = 0) -> Ankh:
    """A preset name (fresh random weights), an HF Ankh directory, or one of our checkpoints."""
    name = str(name_or_path)
    if name in PRESETS:
        return Ankh.random(PRESETS[name], seed=seed, dtype=dtype)
    fs, root = fsspec.core.url_to_fs(name)
    if not fs.exists(root):
        raise FileNotFoundError(f"{name}: neither a preset ({', '.join(PRESETS)}) nor an existing path")
    if fs.exists(f"{root.rstrip('/')}/config.json"):
        return _load_hf(name, fs, root.rstrip("/"), dtype)
    from ankh import checkpoint

    if checkpoint.is_checkpoint(name):  # a pretraining run / Orbax checkpoint directory
        return checkpoint.load(name, dtype=dtype)
    raise ValueError(f"{name}: not an HF directory (no config.json) nor an Ankh checkpoint")


def _load_hf(name: str, fs, root: str, dtype: Any) -> Ankh:
    import json

    with fs.open(f"{root}/config.json") as fh:
        try:
            cfg = AnkhConfig.from_hf_dict(json.load(fh))
        except (KeyError, ValueError) as e:
            raise ValueError(f"{name}/config.json is not a usable T5 config: {e}") from None
    tok = None
    if fs.exists(f"{root}/tokenizer.json"):
        local = Path(root) if fs.protocol in ("file", ("file", "local")) else None
        if local is not None:
            tok = AnkhTokenizer.from_file(local / "tokenizer.json")
    flat = convert.hf_to_flat(convert.read_hf_tensors(name), cfg)
    return Ankh.from_flat(cfg, flat, dtype=dtype, tokenizer=tok)
