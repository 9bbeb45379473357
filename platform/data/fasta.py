"""Streaming FASTA / FASTA.gz reader (local or ``gs://``) with record validation.

Parsing streams a lazily decompressed text stream, so memory stays flat whatever the file size.
It follows the format as bioinformatics tools read it: ``;`` comment lines and blank lines are
ignored wherever they appear (Biopython's ``SimpleFastaParser`` glued a comment after a record
onto its sequence, which then failed validation), whitespace inside sequences is dropped, and
headers are UTF-8: an undecodable byte is kept losslessly while reading and reported as the
record's ``bad_header_encoding`` problem (never silently replaced, so ids stay byte-exact).
Every record is checked; problems are counted per category (``no_header``,
``bad_header_encoding``, ``empty``, ``invalid_chars``, ``stop_marks``: a record may have several)
and every record has exactly one outcome: kept, or dropped with one reason, its first problem
(header before sequence; ``dropped_by_reason``), so ``records == kept + sum(dropped_by_reason)``. Policies:

- ``skip``  drop the record (counted),
- ``clean`` repair what can be repaired: ``*`` removed, invalid letters -> ``X``; records with
  no header or no residues cannot be repaired and are dropped (counted),
- ``fail``  raise :class:`FastaError` naming the record and the problem.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import re
import zlib
from collections.abc import Iterable, Iterator
from typing import Literal

from ankh.storage import filesystem, open_sequential
from ankh.tokenizer import AMINO_ACIDS

Policy = Literal["skip", "clean", "fail"]
CATEGORIES = ("no_header", "bad_header_encoding", "empty", "invalid_chars", "stop_marks")
_INVALID = re.compile(f"[^{AMINO_ACIDS}*]")
_MAX_EXAMPLES = 5


class FastaError(ValueError):
    """A malformed record under ``policy='fail'`` (the message names record and problem)."""


@dataclasses.dataclass
class FastaStats:
    records: int = 0  # records seen (including bad ones)
    kept: int = 0  # records yielded
    cleaned: int = 0  # yielded after repair (policy clean)
    dropped: int = 0  # bad records not yielded
    # problems per category (a record with two problems counts in both) ...
    bad: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))
    # ... and dropped records by their one primary reason (the first problem ``check`` finds)
    dropped_by_reason: dict[str, int] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(CATEGORIES, 0)
    )
    examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # a few per category

    def note(self, category: str, where: str) -> None:
        self.bad[category] += 1
        ex = self.examples.setdefault(category, [])
        if len(ex) < _MAX_EXAMPLES:
            ex.append(where)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def parse_id(title: str) -> str:
    """Accession from UniProt (``sp|P12345|NAME ...``), UniRef (``UniRef50_X ...``) or plain headers."""
    word = title.split(None, 1)[0] if title.strip() else ""
    parts = word.split("|")
    if len(parts) >= 3 and parts[0] in ("sp", "tr"):
        return parts[1]
    return word


def open_text(path: str) -> io.TextIOBase:
    """Text stream of a (possibly gzipped) file; gzip is detected by its magic bytes."""
    fs, p = filesystem(path)
    raw = open_sequential(fs, p)
    try:
        magic = raw.read(2)
        raw.seek(0)
    except Exception:
        raw.close()
        raise
    stream = gzip.GzipFile(fileobj=raw, mode="rb") if magic == b"\x1f\x8b" else raw
    # surrogateescape: an undecodable header byte survives as a lone surrogate, which ``check``
    # reports by record instead of corrupting the id (errors="replace" made ids collide).
    return io.TextIOWrapper(stream, encoding="utf-8", errors="surrogateescape", newline=None)


_WHITESPACE = re.compile(r"\s+")


def _is_undecodable(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def escape_undecodable(text: str) -> str:
    """Undecodable header bytes as ``\\xNN`` (lossless: distinct bytes stay distinct ids)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def records(lines: Iterable[str]) -> Iterator[tuple[str | None, str]]:
    """``(title, sequence)`` per ``>`` record; ``;`` comments and blank lines skipped anywhere.

    Sequence data before the first header comes out once as ``(None, data)``: a record without
    a header, reported rather than dropped silently.
    """
    title: str | None = None
    chunks: list[str] = []
    started = False
    for line in lines:
        if not line.strip() or line.startswith(";"):
            continue
        if line.startswith(">"):
            if started or chunks:
                yield title, "".join(chunks)
            title, chunks, started = line[1:].rstrip("\r\n"), [], True
        else:
            chunks.append(_WHITESPACE.sub("", line))
    if started or chunks:
        yield title, "".join(chunks)


def check(
    title: str | None, seq: str, stats: FastaStats, policy: Policy, where: str
) -> tuple[str, str] | None:
    """``(id, sequence)`` to keep, or None to drop; counts every problem found."""
    seq = seq.upper()
    problems = []
    ident = parse_id(title or "")
    if not ident:
        problems.append("no_header")
    elif _is_undecodable(title):
        problems.append("bad_header_encoding")
    if not seq.replace("*", ""):
        problems.append("empty")
    else:
        if "*" in seq:
            problems.append("stop_marks")
        bad = _INVALID.search(seq)
        if bad:
            problems.append("invalid_chars")
    if not problems:
        stats.kept += 1
        return ident, seq
    shown = escape_undecodable(ident) if ident else "no id"
    for p in problems:
        stats.note(p, f"{where} ({shown})")
    if policy == "fail":
        detail = ""
        if "invalid_chars" in problems:
            m = _INVALID.search(seq)
            detail = f": invalid character {m.group(0)!r} at residue {m.start() + 1}"
        raise FastaError(f"{where} ({shown}): {', '.join(problems)}{detail}")
    if policy == "clean" and not {"no_header", "empty"} & set(problems):
        seq = _INVALID.sub("X", seq.replace("*", ""))
        stats.kept += 1
        stats.cleaned += 1
        return escape_undecodable(ident), seq
    stats.dropped += 1
    stats.dropped_by_reason[problems[0]] += 1  # one record, one outcome
    return None


def read_fasta(
    path: str, policy: Policy = "skip", stats: FastaStats | None = None
) -> Iterator[tuple[str, str]]:
    """Yield ``(id, SEQUENCE)`` of the good (or cleaned) records of a FASTA[.gz] file."""
    if policy not in ("skip", "clean", "fail"):
        raise ValueError(f"policy must be skip, clean or fail, got {policy!r}")
    stats = stats if stats is not None else FastaStats()
    for title, seq in read_records(path):
        stats.records += 1
        where = (
            f"{path} record {stats.records}"
            if title is not None
            else f"{path}: sequence data before the first '>' header (record without a header)"
        )
        out = check(title, seq, stats, policy, where)
        if out is not None:
            yield out


def read_records(path: str) -> Iterator[tuple[str | None, str]]:
    """``records`` of a FASTA[.gz] file; a truncated or corrupt gzip is a ``FastaError`` naming
    the file and how many records were read before it (the last one may be cut short)."""
    n = 0
    with open_text(path) as fh:
        try:
            for rec in records(fh):
                n += 1
                yield rec
        except (EOFError, OSError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
            raise FastaError(
                f"{path}: truncated or corrupt gzip after {n} complete record(s) "
                f"({type(e).__name__}: {e}); re-download or re-compress the file"
            ) from None
