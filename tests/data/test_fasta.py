"""FASTA reading as bioinformatics tools read it: comments, blank lines, UTF-8 headers.

Both readers (``jobs.prepare`` through ``read_fasta`` and ``jobs.embed`` through
``embed.inputs.fasta_records``) go through ``data.fasta.records``; these tests pin its rules.
"""

from __future__ import annotations

import gzip

import pytest

from ankh_platform.data.fasta import FastaError, FastaStats, read_fasta, records
from ankh_platform.embed.inputs import fasta_records

GOOD = ["MKTAYIAKQRQISFVKSHFSRQ", "MSDNGPQNQRNAPRITFGGPSDSTG", "MVLSPADKTNVKAAWGKVGAHAGEY"]


def test_comment_after_record_keeps_the_record(tmp_path):
    # A ';' comment line after a record used to be glued onto its sequence -> invalid_chars.
    text = (
        f"; file comment\n>a first\n{GOOD[0]}\n; comment after a record\n\n"
        f">b\n{GOOD[1][:10]}\n;comment inside a record\n{GOOD[1][10:]}\n\n\n>c\n{GOOD[2]}\n"
    )
    path = tmp_path / "c.fasta"
    path.write_text(text)
    st = FastaStats()
    assert list(read_fasta(str(path), "fail", st)) == list(zip("abc", GOOD))
    assert st.records == st.kept == 3 and st.dropped == 0
    assert list(fasta_records(str(path))) == list(zip("abc", GOOD))


def test_whitespace_crlf_and_lowercase_inside_sequences(tmp_path):
    path = tmp_path / "w.fasta"
    path.write_bytes(f">x\r\n{GOOD[0][:5].lower()} {GOOD[0][5:9]}\t{GOOD[0][9:]}\r\n".encode())
    assert list(read_fasta(str(path))) == [("x", GOOD[0])]


def test_utf8_headers_are_byte_exact(tmp_path):
    ids = ["unicode_héader_β", "Ωmega|x", "プロテイン"]
    path = tmp_path / "u.fasta.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(f">{i} desc\n{s}\n" for i, s in zip(ids, GOOD)))
    got = [i for i, _ in read_fasta(str(path), "fail")]
    assert [g.encode("utf-8") for g in got] == [i.encode("utf-8") for i in ids]
    assert [i for i, _ in fasta_records(str(path))] == ids


def test_undecodable_header_byte_is_reported_never_replaced(tmp_path):
    path = tmp_path / "b.fasta"
    path.write_bytes(
        b">ok\n"
        + GOOD[0].encode()
        + b"\n>bad\xff\xfeid\n"
        + GOOD[1].encode()
        + b"\n>bad\xfe\xffid\n"
        + GOOD[2].encode()
        + b"\n"
    )
    st = FastaStats()
    kept = list(read_fasta(str(path), "skip", st))
    assert kept == [("ok", GOOD[0])]
    assert st.bad["bad_header_encoding"] == 2 and st.records == 3 and st.dropped == 2
    assert "record 2" in st.examples["bad_header_encoding"][0]
    with pytest.raises(FastaError, match=r"record 2 \(bad\\xff\\xfeid\): bad_header_encoding"):
        list(read_fasta(str(path), "fail"))
    # 'clean' keeps them under a lossless escape: two different byte strings stay two ids.
    cleaned = dict(read_fasta(str(path), "clean"))
    assert set(cleaned) == {"ok", "bad\\xff\\xfeid", "bad\\xfe\\xffid"}
    assert [i for i, _ in fasta_records(str(path))] == ["ok", "bad\\xff\\xfeid", "bad\\xfe\\xffid"]


def test_records_every_record_accounted_for():
    lines = ["MKV\n", ">a\n", "AC\n", ";x\n", ">\n", "GG\n", ">b\n", "\n"]
    assert list(records(lines)) == [(None, "MKV"), ("a", "AC"), ("", "GG"), ("b", "")]


def test_truncated_gzip_is_a_clear_error(tmp_path):
    full = tmp_path / "f.fasta.gz"
    with gzip.open(full, "wt") as f:
        f.write("".join(f">r{i}\n{GOOD[i % 3] * 40}\n" for i in range(400)))
    cut = tmp_path / "cut.fasta.gz"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(
        FastaError, match=r"cut.fasta.gz: truncated or corrupt gzip after \d+ complete"
    ):
        list(read_fasta(str(cut)))
    with pytest.raises(FastaError, match="truncated or corrupt gzip"):
        list(fasta_records(str(cut)))
