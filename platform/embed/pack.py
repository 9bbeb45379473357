"""Token-budget packing for the batch-embedding job (numpy only; no Ray, no JAX).

A group of sequences (one Ray Data batch) becomes a few model calls of *fixed* shapes:

- every sequence (or window of a long one) is a *piece* of ``residues + 1`` tokens (``</s>``);
- rows have one of a few lengths (a doubling ladder, e.g. 128, 256, ..., plus one top row
  that fits ``max_length + 1``); a row is opened by the longest piece left and its gap is filled
  with the longest pieces that still fit, each in its own segment (``segment_ids`` 1..k,
  positions restarting at 0), so padding is a few percent and attention never crosses pieces;
- rows of one length are stacked ``batch_tokens // length`` at a time, so a replica compiles
  one shape per row length, once.

Long sequences follow ``long_policy``: ``window`` (default) cuts windows of ``max_length``
residues overlapping by ``window_overlap``; a residue's embedding is the mean over the windows
that cover it and the pooled vector is the mean over residues of that. ``truncate`` keeps the
first ``max_length`` residues; ``skip`` reports the sequence as invalid. Never silent: every
windowed/truncated id is listed in the job summary.
"""

from __future__ import annotations

import bisect
import dataclasses
from collections import defaultdict
from typing import TYPE_CHECKING, Iterator

import numpy as np

if TYPE_CHECKING:  # importing ankh pulls in JAX: the merge tasks (combine_windows) need none
    from ankh.tokenizer import AnkhTokenizer

# Columns of the per-piece table that travels with each model batch.
P_ROW, P_START, P_NTOK, P_SEQ, P_WIN_START, P_SEG = range(6)


@dataclasses.dataclass(frozen=True)
class PackSpec:
    max_length: int  # residues per piece (the model's limit)
    batch_tokens: int = 8192  # token slots per model call
    min_row_tokens: int = 128
    max_segments: int = 64  # pieces per row (size of the pooling one-hot)
    long_policy: str = "window"  # window | truncate | skip
    window_overlap: int = 128
    strip_stop: bool = True  # drop one trailing '*' (translation stop), as FASTA tools emit

    def __post_init__(self) -> None:
        if self.long_policy not in ("window", "truncate", "skip"):
            raise ValueError(f"long_policy must be window, truncate or skip, got {self.long_policy!r}")
        if not 0 <= self.window_overlap < self.max_length // 2 + 1:
            raise ValueError(f"window_overlap must be in [0, max_length/2], got {self.window_overlap}")
        if self.max_segments < 1 or self.min_row_tokens < 2:
            raise ValueError("max_segments must be >= 1 and min_row_tokens >= 2")

    def row_lengths(self) -> list[int]:
        """Doubling ladder from ``min_row_tokens``; the top row fits ``max_length + 1`` tokens.

        A rung within 25% of the top is dropped (1024 next to 1088): one shape fewer to compile
        on every replica, for the same padding (its rows fill the top ones' gaps instead).
        """
        top = -(-(self.max_length + 1) // 64) * 64
        out, n = [], self.min_row_tokens
        while n < top:
            out.append(n)
            n *= 2
        if len(out) > 1 and out[-1] * 1.25 > top:
            out.pop()
        return out + [top]

    def shapes(self) -> list[tuple[int, int]]:
        """Every ``(rows, length)`` a model call can have (what a replica warms up)."""
        return [(max(1, self.batch_tokens // n), n) for n in self.row_lengths()]


def windows(n: int, width: int, overlap: int) -> list[int]:
    """Start residues of full-width windows covering ``n`` residues (the last one ends at n)."""
    if n <= width:
        return [0]
    stride = max(1, width - overlap)
    starts = list(range(0, n - width, stride))
    return starts + [n - width]


def coverage(n: int, width: int, overlap: int) -> np.ndarray:
    """How many windows cover each residue ``[n]``."""
    c = np.zeros(n, np.float32)
    for s in windows(n, width, overlap):
        c[s: s + width] += 1
    return c


@dataclasses.dataclass
class Prepared:
    """Validated pieces of one group, plus the per-sequence facts and the problems found."""

    tokens: list[np.ndarray] = dataclasses.field(default_factory=list)  # per piece, with </s>
    piece_seq: list[int] = dataclasses.field(default_factory=list)
    piece_win: list[int] = dataclasses.field(default_factory=list)  # first residue of the piece
    seq_key: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (shard, id)
    seq_len: list[int] = dataclasses.field(default_factory=list)  # residues embedded
    seq_nwin: list[int] = dataclasses.field(default_factory=list)
    errors: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)  # shard, id, why
    notes: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)  # windowed/truncated


def prepare(ids, seqs, shards, tok: AnkhTokenizer, spec: PackSpec) -> Prepared:
    """Tokenize and check each sequence; bad ones become ``errors`` (never an exception)."""
    from ankh.tokenizer import TokenizerError

    out = Prepared()
    for ident, seq, shard in zip(ids, seqs, shards):
        ident = "" if ident is None else str(ident)
        if not ident:
            out.errors.append((shard, ident, "missing id (record without a header or null id)"))
            continue
        if not isinstance(seq, str):
            out.errors.append((shard, ident, "missing sequence (null)"))
            continue
        if spec.strip_stop and seq.endswith("*"):
            seq = seq[:-1]
        try:
            ids_ = tok.encode(seq, allow_sentinels=False)
        except TokenizerError as e:
            out.errors.append((shard, ident, str(e)))
            continue
        n = len(ids_) - 1
        if n == 0:
            out.errors.append((shard, ident, "empty sequence"))
            continue
        w = spec.max_length
        if n > w:
            if spec.long_policy == "skip":
                out.errors.append((shard, ident, f"{n} residues > max_length {w} (long_policy=skip)"))
                continue
            if spec.long_policy == "truncate":
                out.notes.append((shard, ident, f"truncated {n} -> {w} residues"))
                ids_, n = np.append(ids_[:w], ids_[-1]), w
        s = len(out.seq_key)
        starts = windows(n, w, spec.window_overlap)
        if len(starts) > 1:
            out.notes.append((shard, ident, f"{n} residues: {len(starts)} windows of {w}"))
        for st in starts:
            piece = ids_[:-1][st: st + w]
            out.tokens.append(np.append(piece, ids_[-1]).astype(np.int32))
            out.piece_seq.append(s)
            out.piece_win.append(st)
        out.seq_key.append((shard, ident))
        out.seq_len.append(n)
        out.seq_nwin.append(len(starts))
    return out


class _Pool:
    """Pieces left to place, by length: largest remaining, or largest that fits a gap."""

    def __init__(self, lengths: list[int]):
        self.by_len: dict[int, list[int]] = defaultdict(list)
        for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
            self.by_len[lengths[i]].append(i)
        for v in self.by_len.values():
            v.reverse()  # pop() takes the earliest of equal lengths (deterministic)
        self.keys = sorted(self.by_len)

    def take(self, at_most: int | None = None) -> int | None:
        k = len(self.keys) if at_most is None else bisect.bisect_right(self.keys, at_most)
        if k == 0:
            return None
        length = self.keys[k - 1]
        bucket = self.by_len[length]
        i = bucket.pop()
        if not bucket:
            del self.keys[k - 1]
        return i


def pack_rows(lengths: list[int], spec: PackSpec) -> list[tuple[int, list[int]]]:
    """``[(row_length, [piece index, ...]), ...]``: open with the longest, fill gaps greedily."""
    ladder = spec.row_lengths()
    pool, rows = _Pool(lengths), []
    while (first := pool.take()) is not None:
        row_len = ladder[bisect.bisect_left(ladder, lengths[first])]
        members, gap = [first], row_len - lengths[first]
        while gap > 0 and len(members) < spec.max_segments:
            nxt = pool.take(gap)
            if nxt is None:
                break
            members.append(nxt)
            gap -= lengths[nxt]
        rows.append((row_len, members))
    return rows


def pack(prep: Prepared, spec: PackSpec) -> Iterator[dict]:
    """Model batches of fixed shapes: ``ids [B, L]`` and ``pieces [P, 6]`` (see ``P_*``).

    Rows of a length that do not fill a whole batch move up the ladder, merged into longer rows
    (segments are independent), so only the top length ever pads a batch with empty rows.
    """
    lengths = [len(t) for t in prep.tokens]
    ladder = spec.row_lengths()
    by_len: dict[int, list[list[int]]] = defaultdict(list)
    for row_len, members in pack_rows(lengths, spec):
        by_len[row_len].append(members)
    for li, row_len in enumerate(ladder):
        group = by_len.pop(row_len, [])
        nrows = max(1, spec.batch_tokens // row_len)
        full = len(group) - len(group) % nrows
        if li + 1 < len(ladder) and full < len(group):
            by_len[ladder[li + 1]].extend(_merge_rows(group[full:], lengths, ladder[li + 1], spec))
            group = group[:full]
        for b in range(0, len(group), nrows):
            yield _batch(group[b: b + nrows], nrows, row_len, prep)


def _merge_rows(rows: list[list[int]], lengths: list[int], row_len: int,
                spec: PackSpec) -> list[list[int]]:
    """First-fit the members of short rows into rows of ``row_len``."""
    out: list[list[int]] = []
    used: list[int] = []
    for members in rows:
        n = sum(lengths[p] for p in members)
        for k, m in enumerate(out):
            if used[k] + n <= row_len and len(m) + len(members) <= spec.max_segments:
                m.extend(members)
                used[k] += n
                break
        else:
            out.append(list(members))
            used.append(n)
    return out


def _batch(rows: list[list[int]], nrows: int, row_len: int, prep: Prepared) -> dict:
    ids = np.zeros((nrows, row_len), np.int32)  # [B, L]
    table = []
    for r, members in enumerate(rows):
        off = 0
        for seg, p in enumerate(members, start=1):
            t = prep.tokens[p]
            ids[r, off: off + len(t)] = t
            table.append((r, off, len(t), prep.piece_seq[p], prep.piece_win[p], seg))
            off += len(t)
    return {"ids": ids, "pieces": np.asarray(table, np.int32).reshape(-1, 6)}


def layout(ids: np.ndarray, pieces: np.ndarray, seq_len: np.ndarray, seq_nwin: np.ndarray,
           width: int, overlap: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``segment_ids``, ``positions`` and pooling ``weights`` ``[B, L]`` of a packed batch.

    A residue's weight is ``1 / (coverage * residues)`` so the per-piece weighted sums of all a
    sequence's windows add up to its pooled embedding; ``</s>`` and padding weigh 0.
    """
    seg = np.zeros(ids.shape, np.int32)
    pos = np.zeros(ids.shape, np.int32)
    wt = np.zeros(ids.shape, np.float32)
    for row, start, ntok, s, win, sid in pieces.tolist():
        seg[row, start: start + ntok] = sid
        pos[row, start: start + ntok] = np.arange(ntok)
        n = int(seq_len[s])
        if seq_nwin[s] == 1:
            wt[row, start: start + ntok - 1] = 1.0 / n
        else:
            cov = coverage(n, width, overlap)[win: win + ntok - 1]
            wt[row, start: start + ntok - 1] = 1.0 / (cov * n)
    return seg, pos, wt


def combine_windows(n: int, width: int, overlap: int, starts: list[int],
                    hidden: list[np.ndarray]) -> np.ndarray:
    """Per-residue ``[n, e]``: each residue averaged over the windows covering it."""
    acc = np.zeros((n, hidden[0].shape[-1]), np.float64)
    for st, h in zip(starts, hidden):
        acc[st: st + len(h)] += h
    return (acc / coverage(n, width, overlap)[:, None]).astype(np.float32)
