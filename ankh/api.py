"""The public model object: ``ankh.load(...)`` and what it can do (embed, export)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ankh import batching, convert
from ankh.accelerator import compute_dtype
from ankh.config import AnkhConfig
from ankh.embedding import encoder_depth, jit_encoder
from ankh.generate import GenerationMixin
from ankh.model import AnkhModel
from ankh.resolve import resolve, tokenizer_for
from ankh.scoring import ScoringMixin
from ankh.tokenizer import AnkhTokenizer, TokenizerError

log = logging.getLogger(__name__)


class Ankh(GenerationMixin, ScoringMixin):
    """An Ankh model with its tokenizer: embedding, export (generation/scoring added alongside)."""

    def __init__(
        self, config: AnkhConfig, model: AnkhModel, tokenizer: AnkhTokenizer | None = None
    ):
        self.config = config
        self.tokenizer = tokenizer or tokenizer_for(config)
        self.revision: str | None = None  # the hub commit ``load`` resolved, if any
        self.graphdef, self.params = nnx.split(model)
        self.dtype = model.dtype
        self._fns: dict[Any, Any] = {}

    # ---- construction ------------------------------------------------------------------------
    @classmethod
    def random(cls, config: AnkhConfig, seed: int = 0, dtype: Any = "auto") -> Ankh:
        return cls(config, AnkhModel(config, nnx.Rngs(seed), compute_dtype(dtype)))

    @classmethod
    def from_flat(
        cls,
        config: AnkhConfig,
        flat: dict[tuple, np.ndarray],
        dtype: Any = "auto",
        tokenizer: AnkhTokenizer | None = None,
    ) -> Ankh:
        """Build from a flat {state path: array} dict, checking every name and shape."""
        abstract = nnx.eval_shape(lambda: AnkhModel(config, nnx.Rngs(0), compute_dtype(dtype)))
        graphdef, state = nnx.split(abstract)
        expected = dict(nnx.to_flat_state(state))
        if set(expected) != set(flat):
            extra, missing = set(flat) - set(expected), set(expected) - set(flat)
            raise ValueError(
                f"parameters do not match the config: missing {sorted(missing)[:3]}, "
                f"unexpected {sorted(extra)[:3]}"
            )
        for path, var in expected.items():
            if tuple(var.shape) != tuple(np.shape(flat[path])):
                raise ValueError(
                    f"parameter {'.'.join(map(str, path))} has shape "
                    f"{np.shape(flat[path])}, config expects {var.shape}"
                )
            var.set_value(jnp.asarray(flat[path], jnp.float32))
        return cls(config, nnx.merge(graphdef, state), tokenizer)

    def flat_params(self) -> dict[tuple, np.ndarray]:
        return {p: np.asarray(v[...]) for p, v in nnx.to_flat_state(self.params)}

    def num_params(self) -> int:
        return sum(x.size for x in jax.tree.leaves(self.params))

    # ---- export --------------------------------------------------------------------------------
    def save_hf(self, path: str | Path) -> None:
        """Write an HF directory (config.json, model.safetensors, tokenizer.json)."""
        convert.write_hf_dir(str(path), self.flat_params(), self.config, self.tokenizer.vocab)

    # ---- embedding -------------------------------------------------------------------------------
    def task_prefix(self, task: str = "[NLU]") -> str | None:
        """The task token this model puts first for ``task`` (``AnkhConfig.task_prefix``)."""
        return self.config.task_prefix(task)

    @property
    def num_prefix(self) -> int:
        """Tokens before the residues in ``tokenize``'s ids (1 with ``[NLU]``, else 0)."""
        return int(self.config.task_prefixes)

    def tokenize(self, sequences: Iterable[str]) -> list[np.ndarray]:
        """Encode (``[NLU]`` first if the model uses task prefixes, ``</s>`` appended), with
        errors that name the offending sequence."""
        out, prefix = [], self.task_prefix("[NLU]")
        for i, s in enumerate(sequences):
            if not isinstance(s, str):
                raise TokenizerError(f"sequence {i}: expected a string, got {type(s).__name__}")
            try:
                ids = self.tokenizer.encode(s, allow_sentinels=False, prefix=prefix)
            except TokenizerError as e:
                raise TokenizerError(f"sequence {i}: {e}") from None
            if prefix is not None and ids[0] != self.tokenizer.task_id(prefix):
                raise TokenizerError(f"sequence {i}: starts with another task token than {prefix}")
            n = len(ids) - 1 - self.num_prefix
            if n <= 0:
                raise TokenizerError(f"sequence {i} is empty")
            if n > self.config.max_length:
                raise TokenizerError(
                    f"sequence {i} has {n} residues, over the model's "
                    f"max_length {self.config.max_length}"
                )
            out.append(ids)
        return out

    def _encoder_fn(self, per_residue: bool, num_layers: int | None):
        key = ("enc", per_residue, num_layers)
        if key not in self._fns:
            self._fns[key] = jit_encoder(
                self.graphdef, per_residue, num_layers, skip_first=self.num_prefix
            )
        return self._fns[key]

    def embed(
        self,
        sequences: Iterable[str],
        per_residue: bool = False,
        batch_tokens: int = batching.DEFAULT_BATCH_TOKENS,
        layer: int | None = None,
    ) -> np.ndarray | list[np.ndarray]:
        """Mean-pooled ``[n, d_model]`` float32, or per-residue ``[L_i, d_model]`` arrays.

        ``</s>`` is dropped (as the official ``ankh`` extract does), and so is ankh3's ``[NLU]``
        (the model sees it; rows align with residues); padding never changes a result.
        ``layer`` picks an earlier encoder layer's output (1-based; default: final).
        """
        toks = self.tokenize(sequences)
        if layer is not None and not 1 <= layer <= self.config.num_layers:
            raise ValueError(f"layer must be in 1..{self.config.num_layers}, got {layer}")
        fn = self._encoder_fn(per_residue, encoder_depth(layer, self.config.num_layers))
        pooled = np.zeros((len(toks), self.config.d_model), np.float32)
        residues: list[np.ndarray | None] = [None] * len(toks)
        ladder = batching.sequence_ladder(self.config.max_length)
        for idx, length, rows in batching.token_budget_batches(
            [len(t) for t in toks], ladder, batch_tokens
        ):
            ids, mask = batching.pad_rows(
                [toks[i] for i in idx], rows, length, self.tokenizer.pad_id
            )
            out = fn(self.params, ids, mask)
            pooled[idx] = np.asarray(out["pooled"][: len(idx)])
            if per_residue:
                hidden = np.asarray(out["hidden"][: len(idx)])
                for row, i in enumerate(idx):
                    residues[i] = hidden[row, self.num_prefix : len(toks[i]) - 1]
        return residues if per_residue else pooled  # type: ignore[return-value]


def load(
    name_or_path: str | Path, dtype: Any = "auto", seed: int = 0, revision: str | None = None
) -> Ankh:
    """A preset name (fresh random weights), an HF Ankh directory, one of our checkpoints, or a
    Hugging Face hub id such as ``"ElnaggarLab/ankh-base"`` (``revision``: branch, tag or
    commit; ``"id@revision"`` works too). ``.revision`` is then the commit loaded.
    ``dtype``: the compute dtype; ``"auto"`` is bfloat16 on GPU/TPU, float32 on CPU
    (``ankh.accelerator``)."""
    ref = resolve(str(name_or_path), revision=revision)
    flat = ref.load_params()
    if flat is None:  # a preset: initialised from the seed
        return Ankh.random(ref.config, seed=seed, dtype=dtype)
    model = Ankh.from_flat(ref.config, flat, dtype=dtype, tokenizer=ref.tokenizer)
    model.revision = ref.revision
    return model
