"""Shape and batching policy: every padded ``[rows, length]`` the model runs is decided here.

A leaf module (numpy and the standard library only), shared by the offline API
(``Ankh.embed``, generation, scoring), Ray Serve, the batch-embedding job and evaluation:

- the length ladder (``length_ladder``, ``sequence_ladder``, ``decode_ladder``, ``rung``): the
  few padded lengths that get compiled;
- rows per shape (``full_rows``, ``row_sizes``, ``batch_rows``): a token budget per call, and
  geometric row counts for partly filled batches;
- ``pad_rows``: token lists -> ``ids`` + ``mask`` (the one padding loop);
- which sequences share a call: ``BatchPlan`` / ``token_budget_batches`` (longest first, to a
  token budget), ``sorted_batches`` (fixed row count, for decoding) and ``ladder_batches``
  (several sequences per row on a ladder: segment packing for the batch-embedding job).

Pretraining's pair packer (one fixed shape, encoder + decoder limits) is ``ankh.packing``.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np

# Token slots per model call, the default of every entry point (offline embed and scoring,
# Serve, evaluation, the batch-embedding job). Not more: XLA:CPU's matmuls lose speed once one
# operand or the output outgrows the L3 cache, so more rows per call take longer per token;
# compare `python -m jobs.benchmark fasta --hf b1` with the same plus `batch_tokens=8192`
# (docs/benchmarks.md). On a GPU/TPU a larger budget may pay (``batch_tokens=``; unmeasured).
DEFAULT_BATCH_TOKENS = 4096
# Serve compiles every (rung x row count) at replica start: its ladder starts higher than the
# offline one (16), so short requests share a shape and start-up stays short.
SERVE_MIN_LENGTH = 64


_OCTAVE = {1: (4,), 2: (4, 6), 4: (4, 5, 6, 7)}  # rungs per doubling, in quarters of its start


def _series(minimum: int, steps_per_octave: int) -> Iterator[int]:
    """``minimum`` x (1, 1.5, 2, 3, 4, 6, ...) -- or x (1, 2, 4, ...), or x (1, 1.25, 1.5, 1.75,
    2, ...) -- ascending, unbounded."""
    if minimum < 1 or steps_per_octave not in _OCTAVE:
        raise ValueError(f"bad ladder: minimum={minimum} steps_per_octave={steps_per_octave}")
    size, last = minimum, 0
    while True:
        for r in (size * q // 4 for q in _OCTAVE[steps_per_octave]):
            if r > last:
                yield r
                last = r
        size *= 2


def rung(n: int, minimum: int = 16, steps_per_octave: int = 2) -> int:
    """The smallest length of the unbounded series >= ``n`` (no top: callers without a
    maximum length, e.g. probe heads over embeddings)."""
    return next(r for r in _series(minimum, steps_per_octave) if r >= n)


def length_ladder(
    maximum: int, minimum: int = 16, steps_per_octave: int = 2, align: int = 1
) -> list[int]:
    """The padded lengths, ascending: rungs from ``minimum`` up, the top one fits ``maximum``.

    ``steps_per_octave=2`` is the series 16, 24, 32, 48, 64, 96, ... (x1.5 then x4/3: under 50%
    padding, half the shapes of a linear ladder); ``1`` doubles (fewer shapes, for packed rows
    whose gaps are filled anyway). The first rung >= ``maximum`` is replaced by ``maximum``
    rounded up to ``align``; the rung below it is left out when the top is within a quarter of
    a step of it (1024 next to 1025): one shape fewer to compile for the same padding.
    """
    if maximum < 1 or align < 1:
        raise ValueError(f"bad ladder: maximum={maximum} align={align}")
    top = -(-maximum // align) * align
    rungs: list[int] = []
    for r in _series(minimum, steps_per_octave):
        if r >= top:
            if rungs and top - rungs[-1] < (r - rungs[-1]) / 4:
                rungs.pop()
            return rungs + [top]
        rungs.append(r)
    raise AssertionError("unreachable: the series is unbounded")


def sequence_ladder(max_length: int, minimum: int = 16) -> list[int]:
    """The ladder for sequences of up to ``max_length`` residues plus ``</s>``: the offline
    API's calls (from 16) and Serve's compiled lengths (from ``SERVE_MIN_LENGTH``)."""
    return length_ladder(max_length + 1, minimum)


def decode_ladder(max_length: int, minimum: int = 16) -> list[int]:
    """The ladder for generation's inputs: four rungs per octave (under 25 % padding, 16, 20,
    24, 28, 32, 40, ...). A decoding call runs the encoder on the padded input and reads its
    cross keys/values at every step, so padding costs it more than an embedding call, and a
    new shape compiles in seconds beside a loop of steps (``jobs.benchmark generate``: 202
    tokens pad to 224, not 256)."""
    return length_ladder(max_length + 1, minimum, steps_per_octave=4)


def padded_length(n: int, ladder: Sequence[int]) -> int:
    """The smallest rung >= ``n`` (ValueError past the top one)."""
    k = bisect.bisect_left(ladder, n)
    if k == len(ladder):
        raise ValueError(f"{n} tokens exceed the largest padded length {ladder[-1]}")
    return ladder[k]


def full_rows(batch_tokens: int, length: int) -> int:
    """Rows of ``length`` in one call of ``batch_tokens`` token slots (at least one)."""
    return max(1, batch_tokens // length)


def row_sizes(full: int, growth: int = 2) -> list[int]:
    """Compiled row counts for one length: 1, g, g^2, ... below ``full``, then ``full``."""
    sizes, r = [], 1
    while r < full:
        sizes.append(r)
        r *= max(2, growth)
    return sizes + [full]


def batch_rows(count: int, full: int, growth: int = 2) -> int:
    """Rows a call of ``count`` sequences gets: the smallest compiled row count >= count."""
    return next(r for r in row_sizes(full, growth) if r >= min(count, full))


def pad_rows(
    toks: Sequence[np.ndarray], rows: int | None = None, length: int | None = None, pad_id: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``(ids [rows, length] int32, mask [rows, length] int32)`` with ``toks`` left-aligned.

    Rows past ``len(toks)`` are all padding (mask 0); defaults: one row per token list, the
    longest list's length.
    """
    rows = len(toks) if rows is None else rows
    length = max((len(t) for t in toks), default=0) if length is None else length
    if len(toks) > rows:
        raise ValueError(f"{len(toks)} sequences for {rows} rows")
    ids = np.full((rows, length), pad_id, np.int32)
    mask = np.zeros((rows, length), np.int32)
    for r, t in enumerate(toks):
        if len(t) > length:
            raise ValueError(f"sequence of {len(t)} tokens does not fit a row of {length}")
        ids[r, : len(t)], mask[r, : len(t)] = t, 1
    return ids, mask


class BatchPlan:
    """Which fixed ``[rows, length]`` shapes exist, and how a set of sequences maps onto them."""

    def __init__(
        self, ladder: Sequence[int], batch_tokens: int = DEFAULT_BATCH_TOKENS, growth: int = 2
    ):
        if not ladder or any(b < 2 for b in ladder):
            raise ValueError(f"padded lengths must be >= 2, got {list(ladder)}")
        self.ladder = sorted(set(ladder))
        self.rows = {b: row_sizes(full_rows(batch_tokens, b), growth) for b in self.ladder}

    @property
    def max_tokens(self) -> int:
        return self.ladder[-1]

    def shapes(self) -> list[tuple[int, int]]:
        """Every ``(rows, length)`` a call can have (what a server compiles up front)."""
        return [(r, b) for b in self.ladder for r in self.rows[b]]

    def length(self, n_tokens: int) -> int:
        return padded_length(n_tokens, self.ladder)

    def batches(self, lengths: Sequence[int]) -> list[tuple[list[int], int, int]]:
        """``(indices, length, rows)`` per call, every shape one of ``shapes()``.

        Longest first: a length's sequences fill full calls; a partial call is padded to the
        next compiled row count and its spare rows take the next (shorter) sequences, which
        then cost nothing extra. Every index appears exactly once.
        """
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        out, i = [], 0
        while i < len(order):
            length = self.length(lengths[order[i]])
            full = self.rows[length][-1]
            same = 0
            while (
                i + same < len(order)
                and same < full
                and self.length(lengths[order[i + same]]) == length
            ):
                same += 1
            rows = next(r for r in self.rows[length] if r >= same)
            take = order[i : i + rows]
            out.append((take, length, rows))
            i += len(take)
        return out


def token_budget_batches(
    lengths: Sequence[int], ladder: Sequence[int], batch_tokens: int = DEFAULT_BATCH_TOKENS
) -> list[tuple[list[int], int, int]]:
    """``BatchPlan(ladder, batch_tokens).batches(lengths)`` with power-of-two partial rows."""
    return BatchPlan(ladder, batch_tokens).batches(lengths)


def sorted_batches(lengths: Sequence[int], batch_size: int, ladder: Sequence[int]):
    """Shortest first, ``batch_size`` sequences a call (decoding: its cost grows with rows,
    not with a token budget): yields ``(indices, padded length, rows)``; a short last call
    gets rows rounded up to a power of two."""
    order = np.argsort(lengths, kind="stable")
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        longest = int(max(lengths[j] for j in idx))
        yield idx, padded_length(longest, ladder), batch_rows(len(idx), batch_size)


# ---- segment packing on the ladder (batch embedding) -----------------------------------------
class _Pool:
    """Pieces left to place, by length: the longest remaining, or the longest that fits a gap."""

    def __init__(self, lengths: Sequence[int]):
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


def fill_rows(
    lengths: Sequence[int], ladder: Sequence[int], max_segments: int
) -> list[tuple[int, list[int]]]:
    """``[(row length, [piece index, ...]), ...]``: each row opened by the longest piece left
    (at the smallest rung that holds it), its gap filled greedily with the longest that fit."""
    pool, rows = _Pool(lengths), []
    while (first := pool.take()) is not None:
        row_len = padded_length(lengths[first], ladder)
        members, gap = [first], row_len - lengths[first]
        while gap > 0 and len(members) < max_segments:
            nxt = pool.take(gap)
            if nxt is None:
                break
            members.append(nxt)
            gap -= lengths[nxt]
        rows.append((row_len, members))
    return rows


def merge_rows(
    rows: list[list[int]], lengths: Sequence[int], row_len: int, max_segments: int
) -> list[list[int]]:
    """First-fit the members of (shorter) rows into rows of ``row_len``."""
    out: list[list[int]] = []
    used: list[int] = []
    for members in rows:
        n = sum(lengths[p] for p in members)
        for k, m in enumerate(out):
            if used[k] + n <= row_len and len(m) + len(members) <= max_segments:
                m.extend(members)
                used[k] += n
                break
        else:
            out.append(list(members))
            used.append(n)
    return out


def ladder_batches(
    lengths: Sequence[int], ladder: Sequence[int], batch_tokens: int, max_segments: int
) -> Iterator[tuple[int, int, list[list[int]]]]:
    """``(row length, rows per call, [row members, ...])`` per call; every piece exactly once.

    A call holds ``full_rows(batch_tokens, length)`` rows. Rows of a length that do not fill a
    whole call move up the ladder, merged into longer rows (segments are independent), so only
    the top length ever pads a call with empty rows.
    """
    by_len: dict[int, list[list[int]]] = defaultdict(list)
    for row_len, members in fill_rows(lengths, ladder, max_segments):
        by_len[row_len].append(members)
    for li, row_len in enumerate(ladder):
        group = by_len.pop(row_len, [])
        nrows = full_rows(batch_tokens, row_len)
        full = len(group) - len(group) % nrows
        if li + 1 < len(ladder) and full < len(group):
            by_len[ladder[li + 1]].extend(
                merge_rows(group[full:], lengths, ladder[li + 1], max_segments)
            )
            group = group[:full]
        for b in range(0, len(group), nrows):
            yield row_len, nrows, group[b : b + nrows]
