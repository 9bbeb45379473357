"""Infilling helpers: choose masked spans, write the sentinel input, splice model outputs back.

Masks follow Ankh's pretraining objective (1-gram partial de-masking): with a masking
fraction every selected residue is its own span and gets its own sentinel (``<extra_id_0>``,
``<extra_id_1>``, ... left to right); the model answers ``<extra_id_0> R0 <extra_id_1> R1 ...
</s>``. Explicit spans ``(start, end)`` (0-based, end exclusive) may be longer than one residue.
A malformed answer is rejected with one reason from ``REJECT_REASONS``; nothing is guessed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ankh.tokenizer import AnkhTokenizer

REJECT_REASONS = (
    "no_eos",  # hit max_new_tokens before </s> (truncated answer)
    "leading_residues",  # residues before the first sentinel
    "wrong_sentinel_order",  # a sentinel other than the next expected one
    "extra_sentinel",  # more sentinels than masked spans
    "missing_spans",  # </s> before every span was filled
    "empty_span",  # a sentinel immediately followed by another sentinel or </s>
    "length_mismatch",  # a fill whose length differs from its span (same_length=True)
    "invalid_token",  # <pad>/<unk>/unknown id inside a fill
)

Span = tuple[int, int]


def num_sentinels(tok: AnkhTokenizer) -> int:
    return sum(1 for t in tok.vocab if t.startswith("<extra_id_"))


def random_spans(
    length: int, fraction: float, rng: np.random.Generator, max_spans: int
) -> list[Span]:
    """round(fraction * length) distinct residues (at least one), each its own 1-residue span."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"mask_fraction must be in (0, 1], got {fraction}")
    k = max(1, int(round(fraction * length)))
    if k > max_spans:
        raise ValueError(
            f"masking {k} of {length} residues needs {k} sentinels but the vocabulary "
            f"has {max_spans}; lower mask_fraction or pass explicit longer spans"
        )
    pos = np.sort(rng.choice(length, size=k, replace=False))
    return [(int(p), int(p) + 1) for p in pos]


def check_spans(spans: Sequence[Sequence[int]], length: int, max_spans: int) -> list[Span]:
    """Validate explicit spans: in range, non-empty, sorted, non-overlapping, few enough."""
    out: list[Span] = []
    for i, sp in enumerate(spans):
        if len(sp) != 2:
            raise ValueError(f"span {i}: expected (start, end), got {sp!r}")
        s, e = int(sp[0]), int(sp[1])
        if not 0 <= s < e <= length:
            raise ValueError(
                f"span {i} ({s}, {e}) is empty or outside the parent (length {length})"
            )
        if out and s < out[-1][1]:
            raise ValueError(f"span {i} ({s}, {e}) overlaps or precedes span {i - 1} {out[-1]}")
        out.append((s, e))
    if not out:
        raise ValueError("spans is empty: give at least one (start, end)")
    if len(out) > max_spans:
        raise ValueError(f"{len(out)} spans but the vocabulary has only {max_spans} sentinels")
    return out


def masked_input(parent: str, spans: Sequence[Span]) -> str:
    """The parent with span i replaced by ``<extra_id_i>``."""
    parts, last = [], 0
    for i, (s, e) in enumerate(spans):
        parts += [parent[last:s], f"<extra_id_{i}>"]
        last = e
    parts.append(parent[last:])
    return "".join(parts)


def parse_fills(
    ids: Sequence[int], n_spans: int, tok: AnkhTokenizer
) -> tuple[list[str] | None, str | None]:
    """Generated ids -> one residue string per span, or (None, reason)."""
    fills: list[list[str]] = []
    for i in ids:
        i = int(i)
        if i == tok.eos_id:
            break
        name = tok.inv.get(i, "")
        if name.startswith("<extra_id_"):
            k = int(name[len("<extra_id_") : -1])
            if k >= n_spans:
                return None, "extra_sentinel"
            if k != len(fills):
                return None, "wrong_sentinel_order"
            if fills and not fills[-1]:
                return None, "empty_span"
            fills.append([])
        elif len(name) == 1 and name.isalpha():
            if not fills:
                return None, "leading_residues"
            fills[-1].append(name)
        else:
            return None, "invalid_token"
    else:
        return None, "no_eos"
    if len(fills) < n_spans:
        return None, "missing_spans"
    if not fills[-1]:
        return None, "empty_span"
    return ["".join(f) for f in fills], None


def splice(
    parent: str, spans: Sequence[Span], ids: Sequence[int], tok: AnkhTokenizer, same_length: bool
) -> tuple[str | None, str | None]:
    """The full variant (fills written into the parent's spans), or (None, reason)."""
    fills, reason = parse_fills(ids, len(spans), tok)
    if fills is None:
        return None, reason
    if same_length and any(len(f) != e - s for f, (s, e) in zip(fills, spans)):
        return None, "length_mismatch"
    parts, last = [], 0
    for f, (s, e) in zip(fills, spans):
        parts += [parent[last:s], f]
        last = e
    parts.append(parent[last:])
    return "".join(parts), None


def identity(a: str, b: str) -> float:
    """Fraction of identical residues: Hamming for equal lengths, else a global alignment."""
    if len(a) == len(b):
        return (
            float(
                np.mean(np.frombuffer(a.encode(), np.uint8) == np.frombuffer(b.encode(), np.uint8))
            )
            if a
            else 1.0
        )
    from Bio import Align  # only needed when infills changed the length

    aligner = Align.PairwiseAligner(
        mode="global", match_score=1, mismatch_score=0, open_gap_score=-1, extend_gap_score=-0.5
    )
    aln = aligner.align(a, b)[0]
    same = sum(1 for x, y in zip(aln[0], aln[1]) if x == y and x != "-")
    return same / max(len(a), len(b))
