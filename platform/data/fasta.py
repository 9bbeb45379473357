"""Streaming FASTA / FASTA.gz reader (local or ``gs://``) with record validation.

Parsing is Biopython's ``SimpleFastaParser`` over a lazily decompressed text stream, so memory
stays flat whatever the file size. Every record is checked; problems are counted per category
(``no_header``, ``empty``, ``invalid_chars``, ``stop_marks``) and handled by a policy:

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
from typing import Iterable, Iterator, Literal

from Bio.SeqIO.FastaIO import SimpleFastaParser

from ankh.tokenizer import AMINO_ACIDS
from ankh_platform.core.storage import filesystem, open_sequential

Policy = Literal["skip", "clean", "fail"]
CATEGORIES = ("no_header", "empty", "invalid_chars", "stop_marks")
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
    bad: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(CATEGORIES, 0))
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
    return io.TextIOWrapper(stream, encoding="ascii", errors="replace", newline=None)


def _leading_guard(lines: Iterable[str], stats: FastaStats, policy: Policy, path: str) -> Iterator[str]:
    """Lines before the first ``>`` are a record without a header: Biopython would skip them."""
    it = iter(lines)
    orphan = False
    for line in it:
        if line.startswith(">"):
            yield line
            break
        if line.strip() and not line.startswith(";"):
            orphan = True
    if orphan:
        stats.records += 1
        if policy == "fail":
            raise FastaError(f"{path}: sequence data before the first '>' header (record without a header)")
        stats.note("no_header", "line 1")
        stats.dropped += 1
    yield from it


def check(title: str, seq: str, stats: FastaStats, policy: Policy,
          where: str) -> tuple[str, str] | None:
    """``(id, sequence)`` to keep, or None to drop; counts every problem found."""
    seq = seq.upper()
    problems = []
    ident = parse_id(title)
    if not ident:
        problems.append("no_header")
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
    for p in problems:
        stats.note(p, f"{where} ({ident or 'no id'})")
    if policy == "fail":
        detail = ""
        if "invalid_chars" in problems:
            m = _INVALID.search(seq)
            detail = f": invalid character {m.group(0)!r} at residue {m.start() + 1}"
        raise FastaError(f"{where} ({ident or 'no id'}): {', '.join(problems)}{detail}")
    if policy == "clean" and "no_header" not in problems and "empty" not in problems:
        seq = _INVALID.sub("X", seq.replace("*", ""))
        stats.kept += 1
        stats.cleaned += 1
        return ident, seq
    stats.dropped += 1
    return None


def read_fasta(path: str, policy: Policy = "skip",
               stats: FastaStats | None = None) -> Iterator[tuple[str, str]]:
    """Yield ``(id, SEQUENCE)`` of the good (or cleaned) records of a FASTA[.gz] file."""
    if policy not in ("skip", "clean", "fail"):
        raise ValueError(f"policy must be skip, clean or fail, got {policy!r}")
    stats = stats if stats is not None else FastaStats()
    with open_text(path) as fh:
        for title, seq in SimpleFastaParser(_leading_guard(fh, stats, policy, path)):
            stats.records += 1
            out = check(title, seq, stats, policy, f"{path} record {stats.records}")
            if out is not None:
                yield out
