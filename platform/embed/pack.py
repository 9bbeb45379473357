"""The batch-embedding job's pieces and packed batches (numpy only; no Ray, no JAX).

A group of sequences (one Ray Data batch) becomes a few model calls of *fixed* shapes:

- every sequence (or window of a long one) is a *piece* of ``residues + 1`` tokens (``</s>``),
  plus the task token first for a model with task prefixes (ankh3's ``[NLU]``, ``prefix``):
  every window gets it, the pooled mean and the per-residue rows leave it out;
- rows have one of a few lengths (``EmbedPackSpec.row_lengths``: a doubling
  ``ankh.batching.length_ladder``, e.g. 128, 256, ..., plus one top row that fits
  ``max_length + 1``, + the prefix), filled by ``ankh.batching.ladder_batches``: each piece
  in its own segment
  (``segment_ids`` 1..k, positions restarting at 0), so padding is a few percent and attention
  never crosses pieces;
- rows of one length are stacked ``batch_tokens // length`` at a time, so a replica compiles
  one shape per row length, once.

Long sequences follow ``long_policy``: ``window`` (default) cuts windows of ``max_length``
residues overlapping by ``window_overlap``; a residue's embedding is the mean over the windows
that cover it and the pooled vector is the mean over residues of that. ``truncate`` keeps the
first ``max_length`` residues; ``skip`` reports the sequence as invalid. Never silent: every
windowed/truncated id is listed in the job summary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

# numpy-only parts of ankh (no JAX): the merge tasks import this module for combine_windows.
from ankh.batching import DEFAULT_BATCH_TOKENS, full_rows, ladder_batches, length_ladder
from ankh.tokenizer import AnkhTokenizer, TokenizerError

# Columns of the per-piece table that travels with each model batch.
PIECE_COLUMNS = ("row", "start", "ntok", "seq", "win_start", "seg")
P_ROW, P_START, P_NTOK, P_SEQ, P_WIN_START, P_SEG = range(len(PIECE_COLUMNS))


@dataclasses.dataclass(frozen=True)
class EmbedPackSpec:
    max_length: int  # residues per piece (the model's limit)
    batch_tokens: int = DEFAULT_BATCH_TOKENS  # token slots per model call
    min_row_tokens: int = 128
    steps_per_octave: int = 1  # row lengths per doubling of the ladder (1 or 2)
    max_segments: int = 64  # pieces per row (size of the pooling one-hot)
    long_policy: str = "window"  # window | truncate | skip
    window_overlap: int = 128
    strip_stop: bool = True  # drop one trailing '*' (translation stop), as FASTA tools emit
    # Task token put first in every piece: ``Ankh.task_prefix("[NLU]")`` of the model (ankh3),
    # None for models without task prefixes. The replica checks it against its loaded model.
    prefix: str | None = None

    def __post_init__(self) -> None:
        if self.long_policy not in ("window", "truncate", "skip"):
            raise ValueError(
                f"long_policy must be window, truncate or skip, got {self.long_policy!r}"
            )
        if not 0 <= self.window_overlap < self.max_length // 2 + 1:
            raise ValueError(
                f"window_overlap must be in [0, max_length/2], got {self.window_overlap}"
            )
        if self.steps_per_octave not in (1, 2):
            raise ValueError(f"row_steps_per_octave must be 1 or 2, got {self.steps_per_octave}")
        if self.max_segments < 1 or self.min_row_tokens < 2:
            raise ValueError("max_segments must be >= 1 and min_row_tokens >= 2")

    @property
    def num_prefix(self) -> int:
        """Tokens before the residues of each piece (1 with ``[NLU]``, else 0)."""
        return int(self.prefix is not None)

    def row_lengths(self) -> list[int]:
        """Doubling ladder from ``min_row_tokens``; the top row fits ``max_length + 1`` tokens,
        plus the task token if any (rounded up to 64, a friendly size for accelerator tiles),
        e.g. 128, 256, 512, 1088.

        Doubling by default, not the offline 1.5x/2x series: packed rows fill their gaps
        anyway, so half the rungs cost little padding and save compiles on every replica.
        ``steps_per_octave=2`` takes the 1.5x/2x series (128, 192, 256, 384, ...): fewer
        proteins share a row, so less attention is spent across proteins, for more padding.
        """
        return length_ladder(
            self.max_length + 1 + self.num_prefix,
            self.min_row_tokens,
            steps_per_octave=self.steps_per_octave,
            align=64,
        )

    def shapes(self) -> list[tuple[int, int]]:
        """Every ``(rows, length)`` a model call can have (what a replica warms up)."""
        return [(full_rows(self.batch_tokens, n), n) for n in self.row_lengths()]


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
        c[s : s + width] += 1
    return c


@dataclasses.dataclass
class Prepared:
    """Validated pieces of one group, plus the per-sequence facts and the problems found."""

    tokens: list[np.ndarray] = dataclasses.field(default_factory=list)  # per piece: [NLU]?, </s>
    piece_seq: list[int] = dataclasses.field(default_factory=list)
    piece_win: list[int] = dataclasses.field(default_factory=list)  # first residue of the piece
    seq_key: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (shard, id)
    seq_len: list[int] = dataclasses.field(default_factory=list)  # residues embedded
    seq_nwin: list[int] = dataclasses.field(default_factory=list)
    errors: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)  # shard, id, why
    notes: list[tuple[str, str, str]] = dataclasses.field(
        default_factory=list
    )  # windowed/truncated


def prepare(ids, seqs, shards, tok: AnkhTokenizer, spec: EmbedPackSpec) -> Prepared:
    """Tokenize and check each sequence; bad ones become ``errors`` (never an exception)."""
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
            ids_ = tok.encode(seq, allow_sentinels=False, prefix=spec.prefix)
            if spec.prefix is not None and ids_[0] != tok.task_id(spec.prefix):
                raise TokenizerError(f"starts with another task token than {spec.prefix}")
        except TokenizerError as e:
            out.errors.append((shard, ident, str(e)))
            continue
        lead = spec.num_prefix
        head, body, eos = ids_[:lead], ids_[lead:-1], ids_[-1:]  # [NLU]?, residues, </s>
        n = len(body)
        if n == 0:
            out.errors.append((shard, ident, "empty sequence"))
            continue
        w = spec.max_length
        if n > w:
            if spec.long_policy == "skip":
                out.errors.append(
                    (shard, ident, f"{n} residues > max_length {w} (long_policy=skip)")
                )
                continue
            if spec.long_policy == "truncate":
                out.notes.append((shard, ident, f"truncated {n} -> {w} residues"))
                body, n = body[:w], w
        s = len(out.seq_key)
        starts = windows(n, w, spec.window_overlap)
        if len(starts) > 1:
            out.notes.append((shard, ident, f"{n} residues: {len(starts)} windows of {w}"))
        for st in starts:
            out.tokens.append(np.concatenate([head, body[st : st + w], eos]).astype(np.int32))
            out.piece_seq.append(s)
            out.piece_win.append(st)
        out.seq_key.append((shard, ident))
        out.seq_len.append(n)
        out.seq_nwin.append(len(starts))
    return out


def pack(prep: Prepared, spec: EmbedPackSpec) -> Iterator[dict]:
    """Model batches of fixed shapes: ``ids [B, L]`` and ``pieces [P, len(PIECE_COLUMNS)]``."""
    lengths = [len(t) for t in prep.tokens]
    for row_len, nrows, rows in ladder_batches(
        lengths, spec.row_lengths(), spec.batch_tokens, spec.max_segments
    ):
        yield _batch(rows, nrows, row_len, prep)


def _batch(rows: list[list[int]], nrows: int, row_len: int, prep: Prepared) -> dict:
    ids = np.zeros((nrows, row_len), np.int32)  # [B, L]
    table = []
    for r, members in enumerate(rows):
        off = 0
        for seg, p in enumerate(members, start=1):
            t = prep.tokens[p]
            ids[r, off : off + len(t)] = t
            table.append((r, off, len(t), prep.piece_seq[p], prep.piece_win[p], seg))
            off += len(t)
    return {"ids": ids, "pieces": np.asarray(table, np.int32).reshape(-1, len(PIECE_COLUMNS))}


def layout(
    ids: np.ndarray,
    pieces: np.ndarray,
    seq_len: np.ndarray,
    seq_nwin: np.ndarray,
    width: int,
    overlap: int,
    lead: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``segment_ids``, ``positions`` and pooling ``weights`` ``[B, L]`` of a packed batch.

    A residue's weight is ``1 / (coverage * residues)`` so the per-piece weighted sums of all a
    sequence's windows add up to its pooled embedding; ``</s>``, padding and the ``lead`` task
    token(s) at the start of each piece weigh 0.
    """
    seg = np.zeros(ids.shape, np.int32)
    pos = np.zeros(ids.shape, np.int32)
    wt = np.zeros(ids.shape, np.float32)
    for row, start, ntok, s, win, sid in pieces.tolist():
        seg[row, start : start + ntok] = sid
        pos[row, start : start + ntok] = np.arange(ntok)
        n, r0, r1 = int(seq_len[s]), start + lead, start + ntok - 1  # residues: [r0, r1)
        if seq_nwin[s] == 1:
            wt[row, r0:r1] = 1.0 / n
        else:
            wt[row, r0:r1] = 1.0 / (coverage(n, width, overlap)[win : win + r1 - r0] * n)
    return seg, pos, wt


def combine_windows(
    n: int, width: int, overlap: int, starts: list[int], hidden: list[np.ndarray]
) -> np.ndarray:
    """Per-residue ``[n, e]``: each residue averaged over the windows covering it."""
    acc = np.zeros((n, hidden[0].shape[-1]), np.float64)
    for st, h in zip(starts, hidden):
        acc[st : st + len(h)] += h
    return (acc / coverage(n, width, overlap)[:, None]).astype(np.float32)
