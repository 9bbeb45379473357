"""Model references: what a name means, in one place (``ankh.load``, Serve, the Ray jobs, CLIs).

``resolve(ref)`` reads what a reference names -- config and tokenizer, without weights -- and
says where the weights are; ``Resolved.load_params()`` reads them. A reference is, tried in
this order:

- a preset name (``ankh.PRESETS``): no weights (the caller initialises them from a seed);
- an HF Ankh directory (``config.json``, ``model.safetensors``, optional ``tokenizer.json``),
  local or any fsspec URL (``gs://`` included; the tokenizer is read through fsspec too);
- one of our pretraining runs, its ``checkpoints/`` dir or one ``<step>`` dir, local or
  ``gs://``: pinned to the newest step that verifies (``Resolved.location``), so every later
  load -- e.g. each replica of a job -- reads that same step while training writes newer ones;
- a Hugging Face hub id, ``ElnaggarLab/ankh-base`` or ``ElnaggarLab/ankh-base@<revision>``
  (branch, tag or commit; or ``revision=``), when no such path exists: fetched through
  ``huggingface_hub`` (``ankh.hub``) and resolved as the HF directory of that snapshot, pinned
  to its commit (``Resolved.revision``; ``location`` is the snapshot directory).

An HF directory whose tokenizer has ankh3's ``[NLU]``/``[S2S]`` tokens gets
``config.task_prefixes`` on unless its config.json says otherwise (``ankh_task_prefixes``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Literal

import numpy as np

from ankh import checkpoint, convert, hub, storage
from ankh.config import PRESETS, AnkhConfig
from ankh.tokenizer import TASK_TOKENS, AnkhTokenizer

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
    revision: str | None = None  # a hub model's commit hash (record it to reproduce a run)

    @property
    def pinned(self) -> str:
        """A reference naming exactly these weights for a later or remote load (a job's
        replicas, run metadata): a hub id at its commit (``org/name@<hash>``), else
        ``location``."""
        if self.revision:
            return f"{self.ref.split('@', 1)[0]}@{self.revision}"
        return self.location

    def load_params(self) -> dict[tuple, np.ndarray] | None:
        """Flat ``{state path: float32 array}`` weights; None for a preset (no weights)."""
        if self.kind == "preset":
            return None
        if self.kind == "hf":
            try:
                tensors = convert.read_hf_tensors(self.location)
            except FileNotFoundError as e:  # name what the user asked for (a hub id, say)
                raise FileNotFoundError(f"{self.ref}: {e}") from None
            return convert.hf_to_flat(tensors, self.config)
        _, flat = checkpoint.load_params(self.location)
        log.info("loaded %s", self.location)
        return flat


def tokenizer_for(cfg: AnkhConfig) -> AnkhTokenizer:
    """The default tokenizer of a config (presets and our checkpoints carry no tokenizer.json)."""
    return AnkhTokenizer(vocab_size=cfg.vocab_size, task_tokens=cfg.task_prefixes)


def resolve(ref: str, revision: str | None = None) -> Resolved:
    """A preset name, an HF directory, one of our checkpoints (local or gs://) or a hub id.

    ``revision`` (or ``ref@revision``) pins a hub id to a branch, tag or commit.
    """
    name = str(ref)
    if name in PRESETS:
        cfg = PRESETS[name]
        return Resolved(name, "preset", cfg, tokenizer_for(cfg), name)
    fs, root = storage.filesystem(name)
    if not fs.exists(root):
        on_hub = hub.parse(name, revision)
        if on_hub is not None:
            return _hub(name, *on_hub)
        raise FileNotFoundError(
            f"{name}: neither a preset ({', '.join(PRESETS)}), an "
            "existing path nor a hub id (org/name[@revision])"
        )
    if fs.exists(f"{root}/config.json"):
        return _hf_dir(name, fs, root)
    if checkpoint.is_checkpoint(name):
        step_dir, skipped = checkpoint.newest_good(name)
        for why in skipped:
            log.warning("skipping bad checkpoint: %s", why)
        cfg = checkpoint.read_config(step_dir)
        return Resolved(name, "checkpoint", cfg, tokenizer_for(cfg), step_dir, tuple(skipped))
    raise ValueError(
        f"{name}: not an HF directory (no config.json) nor an Ankh checkpoint "
        f"(nor a preset: {', '.join(PRESETS)})"
    )


def _hub(name: str, repo_id: str, revision: str | None) -> Resolved:
    snap = hub.snapshot(repo_id, revision)
    fs, root = storage.filesystem(snap.path)
    if not fs.exists(f"{root}/config.json"):
        raise FileNotFoundError(
            f"{name}: the hub snapshot {snap.revision} has no config.json (not an Ankh/T5 model?)"
        )
    res = _hf_dir(name, fs, root)
    return dataclasses.replace(res, location=snap.path, revision=snap.revision)


def _hf_dir(name: str, fs, root: str) -> Resolved:
    with fs.open(f"{root}/config.json") as fh:
        try:
            raw = json.load(fh)
            cfg = AnkhConfig.from_hf_dict(raw)
        except (KeyError, ValueError) as e:
            raise ValueError(f"{name}/config.json is not a usable T5 config: {e}") from None
    tok = tokenizer_for(cfg)
    if fs.exists(f"{root}/tokenizer.json"):  # ankh3's vocabulary differs from the default
        with fs.open(f"{root}/tokenizer.json") as fh:
            tok = AnkhTokenizer.from_json(json.load(fh), source=f"{name}/tokenizer.json")
        if "ankh_task_prefixes" not in raw and set(TASK_TOKENS) <= set(tok.vocab):
            cfg = cfg.replace(task_prefixes=True)  # the hub's own ankh3 config.json
    if cfg.task_prefixes and not set(TASK_TOKENS) <= set(tok.vocab):
        raise ValueError(
            f"{name}: config asks for task prefixes but the tokenizer has no "
            f"{' / '.join(TASK_TOKENS)} tokens"
        )
    return Resolved(name, "hf", cfg, tok, name)
