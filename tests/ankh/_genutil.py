"""Shared helpers for the generation/scoring tests: real sequences and a tiny model + HF twin."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from ankh_platform.core.samples import protein_parquet


def real_sequences(n: int, max_len: int = 48, start: int = 0) -> list[str]:
    """``n`` real UniProt proteins (standard residues only), cropped to ``max_len``, varied lengths."""
    seqs = pq.read_table(protein_parquet(), columns=["sequence"]).column(0).to_pylist()
    std = [s for s in seqs[start:] if set(s) <= set("ACDEFGHIKLMNPQRSTVWY")]
    # Vary the lengths so batches really pad: crop the i-th to max_len - 5 * (i % 4).
    return [s[: max_len - 5 * (i % 4)] for i, s in enumerate(std[:n])]


def tiny_pair(tmp_dir: Path, seed: int = 1):
    """A random-weight tiny Ankh and the same weights loaded by HF ``T5ForConditionalGeneration``."""
    import torch
    from transformers import T5ForConditionalGeneration

    from ankh.api import Ankh
    from ankh.config import PRESETS

    torch.set_num_threads(1)
    model = Ankh.random(PRESETS["tiny"], seed=seed)
    model.save_hf(tmp_dir)
    hf = T5ForConditionalGeneration.from_pretrained(str(tmp_dir)).eval()
    return model, hf


def hf_rows(out: np.ndarray, eos: int = 1, pad: int = 0) -> list[np.ndarray]:
    """HF generate output rows -> ids after the start token, cut after </s>, pad dropped."""
    rows = []
    for r in np.asarray(out):
        r = r[1:]
        stop = np.flatnonzero(r == eos)
        r = r[: stop[0] + 1] if stop.size else r
        rows.append(r[r != pad])
    return rows
