"""Pretraining packing: several (encoder input, target) pairs per row, with segment ids and positions.

One fixed shape per run ([rows, enc_len] and [rows, dec_len]) so ``jit`` compiles once. Rows
are filled by first-fit decreasing under three limits (encoder tokens, decoder tokens,
segments). Every packed sequence gets its own segment id (1..k) on both sides and positions
restarting at 0, so the model's attention and relative positions never cross sequences.
(Encoder-only pieces on a length ladder -- batch embedding -- are ``ankh.batching.ladder_batches``.)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class PackSpec:
    rows: int = 8  # rows per batch (per host)
    enc_len: int = 1040  # encoder tokens per row (2 x 513-token crops fit)
    dec_len: int = 424  # decoder tokens per row (~0.4 x enc_len + a few </s>)
    max_segments: int = 32  # sequences per row (fixes the example_ids width)
    pad_id: int = 0
    decoder_start_id: int = 0

    def __post_init__(self) -> None:
        for f in ("rows", "enc_len", "dec_len", "max_segments"):
            if getattr(self, f) < 1:
                raise ValueError(f"{f} must be >= 1, got {getattr(self, f)}")


def pack_rows(enc_lens: Sequence[int], dec_lens: Sequence[int], spec: PackSpec) -> list[list[int]]:
    """First-fit decreasing: item indices per row (every item in exactly one row)."""
    enc_lens = np.asarray(enc_lens, np.int64)
    dec_lens = np.asarray(dec_lens, np.int64)
    too_long = np.flatnonzero((enc_lens > spec.enc_len) | (dec_lens > spec.dec_len))
    if too_long.size:
        i = int(too_long[0])
        raise ValueError(
            f"item {i} ({enc_lens[i]} encoder / {dec_lens[i]} decoder tokens) does not "
            f"fit a row of {spec.enc_len} / {spec.dec_len}"
        )
    n = len(enc_lens)
    rem_e = np.zeros(n, np.int64)
    rem_d = np.zeros(n, np.int64)
    nseg = np.zeros(n, np.int64)
    rows: list[list[int]] = []
    open_from = 0  # rows before this one cannot take even the smallest item
    min_e, min_d = (int(enc_lens.min()), int(dec_lens.min())) if n else (0, 0)
    for i in np.argsort(-enc_lens, kind="stable"):
        e, d = enc_lens[i], dec_lens[i]
        m = len(rows)
        ok = (
            (rem_e[open_from:m] >= e)
            & (rem_d[open_from:m] >= d)
            & (nseg[open_from:m] < spec.max_segments)
        )
        hit = np.flatnonzero(ok)
        if hit.size:
            r = open_from + int(hit[0])
        else:
            r = m
            rows.append([])
            rem_e[r], rem_d[r] = spec.enc_len, spec.dec_len
        rows[r].append(int(i))
        rem_e[r] -= e
        rem_d[r] -= d
        nseg[r] += 1
        while open_from < len(rows) and (
            rem_e[open_from] < min_e
            or rem_d[open_from] < min_d
            or nseg[open_from] >= spec.max_segments
        ):
            open_from += 1
    return rows


def empty_batch(spec: PackSpec) -> dict[str, np.ndarray]:
    b, le, ld = spec.rows, spec.enc_len, spec.dec_len
    out = {k: np.zeros((b, le), np.int32) for k in ("input_ids", "segment_ids", "positions")}
    out.update(
        {
            k: np.zeros((b, ld), np.int32)
            for k in ("decoder_input_ids", "decoder_segment_ids", "decoder_positions", "labels")
        }
    )
    out["loss_mask"] = np.zeros((b, ld), np.float32)
    out["example_ids"] = np.full((b, spec.max_segments), -1, np.int64)
    if spec.pad_id != 0:
        out["input_ids"][:] = spec.pad_id
        out["decoder_input_ids"][:] = spec.pad_id
        out["labels"][:] = spec.pad_id
    return out


def build_batch(
    rows: Sequence[Sequence[int]],
    encs: Sequence[np.ndarray],
    tgts: Sequence[np.ndarray],
    example_ids: Sequence[int],
    spec: PackSpec,
) -> dict[str, np.ndarray]:
    """Fixed-shape batch from up to ``spec.rows`` rows; missing rows are all padding."""
    if len(rows) > spec.rows:
        raise ValueError(f"{len(rows)} rows for a batch of {spec.rows}")
    out = empty_batch(spec)
    for r, row in enumerate(rows):
        oe = od = 0
        for s, i in enumerate(row):
            e, t = encs[i], tgts[i]
            ne, nd = len(e), len(t)
            out["input_ids"][r, oe : oe + ne] = e
            out["segment_ids"][r, oe : oe + ne] = s + 1
            out["positions"][r, oe : oe + ne] = np.arange(ne)
            out["labels"][r, od : od + nd] = t
            # Teacher forcing per segment: start token, then the target shifted right.
            out["decoder_input_ids"][r, od] = spec.decoder_start_id
            out["decoder_input_ids"][r, od + 1 : od + nd] = t[:-1]
            out["decoder_segment_ids"][r, od : od + nd] = s + 1
            out["decoder_positions"][r, od : od + nd] = np.arange(nd)
            out["example_ids"][r, s] = example_ids[i]
            oe += ne
            od += nd
    # A pad target is no target: the mlm objective's aligned targets are pad where nothing was
    # masked (the de-masking targets never hold pad).
    out["loss_mask"][:] = (out["decoder_segment_ids"] > 0) & (out["labels"] != spec.pad_id)
    return out


def padding_waste(batch: dict[str, np.ndarray]) -> dict[str, float]:
    """Pad tokens / all tokens, for the encoder, the decoder and both together."""
    enc_pad = float(np.sum(batch["segment_ids"] == 0))
    dec_pad = float(np.sum(batch["decoder_segment_ids"] == 0))
    enc_all, dec_all = batch["segment_ids"].size, batch["decoder_segment_ids"].size
    return {
        "encoder": enc_pad / enc_all,
        "decoder": dec_pad / dec_all,
        "total": (enc_pad + dec_pad) / (enc_all + dec_all),
    }


def unpack(batch: dict[str, np.ndarray]) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """``(example_id, encoder ids, target ids)`` of every packed sequence (tests, debugging)."""
    out = []
    for r in range(batch["input_ids"].shape[0]):
        for s, ex in enumerate(batch["example_ids"][r]):
            if ex < 0:
                continue
            enc = batch["input_ids"][r][batch["segment_ids"][r] == s + 1]
            tgt = batch["labels"][r][batch["decoder_segment_ids"][r] == s + 1]
            out.append((int(ex), enc, tgt))
    return out
