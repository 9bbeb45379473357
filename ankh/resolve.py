"""Model references: what a name means, in one place (``ankh.load``, Serve, the Ray jobs, CLIs).

``resolve(ref)`` reads what a reference names -- config and tokenizer, without weights -- and
says where the weights are; ``Resolved.load_params()`` reads them. A reference is, tried in
this order:

- a preset name (``ankh.PRESETS``): no weights (the caller initialises them from a seed);
- an HF Ankh directory (``config.json``, ``model.safetensors``, optional ``tokenizer.json``),
  local or any fsspec URL (``gs://`` included; the tokenizer is read through fsspec too);
- one of our pretraining runs, its ``checkpoints/`` dir or one ``<step>`` dir, local or
  ``gs://``: pinned to the newest step that verifies (``Resolved.location``), so every later
  load -- e.g. each replica of a job -- reads that same step while training writes newer ones.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Literal

import numpy as np

from ankh import checkpoint, convert, storage
from ankh.config import PRESETS, AnkhConfig
from ankh.tokenizer import AnkhTokenizer

log = logging.getLogger(__name__)
Kind = Literal["preset", "hf", "checkpoint"]


@dataclasses.dataclass(frozen=True, eq=False)
class Resolved:
    """A model reference, resolved: its config and tokenizer, and where its weights are."""

    ref: str  # as given
    kind: Kind
    config: AnkhConfig
    tokenizer: AnkhTokenizer
    location: str  # preset name, HF directory, or the pinned checkpoint step dir (full URL)
    skipped: tuple[str, ...] = ()  # newer checkpoints passed over, and why

    def load_params(self) -> dict[tuple, np.ndarray] | None:
        """Flat ``{state path: float32 array}`` weights; None for a preset (no weights)."""
        if self.kind == "preset":
            return None
        if self.kind == "hf":
            return convert.hf_to_flat(convert.read_hf_tensors(self.location), self.config)
        _, flat = checkpoint.load_params(self.location)
        log.info("loaded %s", self.location)
        return flat


def resolve(ref: str) -> Resolved:
    """A preset name, an HF directory or one of our checkpoints (local or gs://), resolved."""
    name = str(ref)
    if name in PRESETS:
        cfg = PRESETS[name]
        return Resolved(name, "preset", cfg, AnkhTokenizer(vocab_size=cfg.vocab_size), name)
    # Extension point: a Hugging Face hub id ("org/model") would be fetched here (a local
    # snapshot directory) and then resolved as the HF directory below.
    fs, root = storage.filesystem(name)
    if not fs.exists(root):
        raise FileNotFoundError(f"{name}: neither a preset ({', '.join(PRESETS)}) nor an "
                                "existing path")
    if fs.exists(f"{root}/config.json"):
        return _hf_dir(name, fs, root)
    if checkpoint.is_checkpoint(name):
        step_dir, skipped = checkpoint.newest_good(name)
        for why in skipped:
            log.warning("skipping bad checkpoint: %s", why)
        cfg = checkpoint.read_config(step_dir)
        return Resolved(name, "checkpoint", cfg, AnkhTokenizer(vocab_size=cfg.vocab_size),
                        step_dir, tuple(skipped))
    raise ValueError(f"{name}: not an HF directory (no config.json) nor an Ankh checkpoint "
                     f"(nor a preset: {', '.join(PRESETS)})")


def _hf_dir(name: str, fs, root: str) -> Resolved:
    with fs.open(f"{root}/config.json") as fh:
        try:
            cfg = AnkhConfig.from_hf_dict(json.load(fh))
        except (KeyError, ValueError) as e:
            raise ValueError(f"{name}/config.json is not a usable T5 config: {e}") from None
    tok = AnkhTokenizer(vocab_size=cfg.vocab_size)
    if fs.exists(f"{root}/tokenizer.json"):  # ankh3's vocabulary differs from the default
        with fs.open(f"{root}/tokenizer.json") as fh:
            tok = AnkhTokenizer.from_json(json.load(fh), source=f"{name}/tokenizer.json")
    return Resolved(name, "hf", cfg, tok, name)
