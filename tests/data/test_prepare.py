"""FASTA -> Parquet shards: content, bad records, atomic/resumable writes, split, CLI."""

from __future__ import annotations

import gzip
import json

import pyarrow.parquet as pq
import pytest

import ankh_platform.data.prepare as prep
from ankh import storage
from ankh_platform.data.fasta import FastaError, FastaStats, parse_id, read_fasta
from ankh_platform.data.prepare import PrepareConfig, prepare, split_of


@pytest.fixture(scope="module")
def records(bundled_fasta):
    with gzip.open(bundled_fasta, "rt") as f:
        text = f.read()
    out = []
    for chunk in text.split(">")[1:]:
        head, *lines = chunk.splitlines()
        out.append((head.split()[0], "".join(lines)))
    return out


def _rows(root, split="train"):
    t = pq.read_table(f"{root}/{split}")
    return t.to_pydict()


def test_prepare_local_shards_and_manifest(tmp_path, bundled_fasta, records):
    m = prepare(
        PrepareConfig(input=str(bundled_fasta), output=str(tmp_path / "o"), rows_per_shard=700)
    )
    files = sorted((tmp_path / "o" / "train").iterdir())
    assert [f.name for f in files] == [f"shard-{i:05d}.parquet" for i in range(5)]
    rows = {}
    for f in files:  # sorted shard order = input order
        for k, v in pq.read_table(f).to_pydict().items():
            rows.setdefault(k, []).extend(v)
    assert list(zip(rows["id"], rows["sequence"])) == records
    assert rows["length"] == [len(s) for _, s in records]
    assert rows["idx"] == list(range(len(records)))
    tr = m["splits"]["train"]
    assert tr["rows"] == len(records) == m["records"]["kept"] == m["records"]["read"]
    assert tr["residues"] == sum(len(s) for _, s in records)
    assert sum(tr["length_histogram"]["counts"]) == len(records)
    assert [s["rows"] for s in tr["shards"]] == [700, 700, 700, 700, len(records) - 2800]
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["source"] == str(
        bundled_fasta
    )


def test_bad_records_counted_per_category(tmp_path, records):
    good = records[:5]
    text = (
        "MKVLA\n"  # sequence before any header
        + "".join(f">sp|{i}|X_HUMAN desc\n{s}\n" for i, s in good[:2])
        + ">\nMKV\n"  # empty header
        + ">empty1\n\n"  # no residues
        + f">bad1\n{good[2][1][:20]}J1{good[2][1][20:40]}\n"  # invalid characters
        + f">stop1\n{good[3][1]}*\n"  # stop mark
        + f">{good[4][0]}\n{good[4][1].lower()}\n"
    )  # lower case is fine
    path = tmp_path / "bad.fasta"
    path.write_text(text)
    st = FastaStats()
    kept = list(read_fasta(str(path), "skip", st))
    assert [k for k, _ in kept] == [good[0][0], good[1][0], good[4][0]]
    assert kept[2][1] == good[4][1]
    assert st.bad == {
        "no_header": 2,
        "bad_header_encoding": 0,
        "empty": 1,
        "invalid_chars": 1,
        "stop_marks": 1,
    }
    assert st.records == 8 and st.dropped == 5 and st.kept == 3
    st = FastaStats()
    cleaned = dict(read_fasta(str(path), "clean", st))
    assert cleaned["stop1"] == good[3][1]
    assert cleaned["bad1"] == good[2][1][:20] + "XX" + good[2][1][20:40]
    assert st.cleaned == 2 and st.dropped == 3
    with pytest.raises(FastaError, match="before the first '>'"):
        list(read_fasta(str(path), "fail"))
    path.write_text(f">{good[0][0]}\n{good[0][1]}\n>bad1\n{good[2][1][:20]}J1{good[2][1][20:40]}\n")
    with pytest.raises(FastaError, match=r"bad1.*invalid_chars.*'J' at residue 21"):
        list(read_fasta(str(path), "fail"))
    path.write_text(text)
    m = prepare(PrepareConfig(input=str(path), output=str(tmp_path / "o")))
    assert m["bad_records"] == {
        "no_header": 2,
        "bad_header_encoding": 0,
        "empty": 1,
        "invalid_chars": 1,
        "stop_marks": 1,
    }
    assert m["records"]["dropped_bad"] == 5 and m["splits"]["train"]["rows"] == 3


def test_headers():
    assert parse_id("sp|P69905|HBA_HUMAN Hemoglobin subunit alpha OS=Homo sapiens") == "P69905"
    assert parse_id("tr|A0A0B4J2F0|A0A0B4J2F0_HUMAN x") == "A0A0B4J2F0"
    assert (
        parse_id("UniRef50_Q6GZX4 Putative transcription factor n=1 Tax=FV-3") == "UniRef50_Q6GZX4"
    )
    assert parse_id("my_protein") == "my_protein" and parse_id("  ") == ""


def test_interrupted_run_resumes_atomically(tmp_path, bundled_fasta, monkeypatch):
    cfg = PrepareConfig(input=str(bundled_fasta), output=str(tmp_path / "o"), rows_per_shard=700)
    real_write, calls = prep.atomic_write, []

    def killed_on_third(path, write, fs=None):
        calls.append(path)
        if len(calls) == 3:  # as SIGKILL mid-write: the temporary exists, the shard does not
            write(storage.temp_path(path))
            raise KeyboardInterrupt("simulated crash while writing shard 3")
        return real_write(path, write, fs=fs)

    monkeypatch.setattr(prep, "atomic_write", killed_on_third)
    with pytest.raises(KeyboardInterrupt):
        prepare(cfg)
    out = tmp_path / "o" / "train"
    assert sorted(f.name for f in out.glob("shard-*")) == [
        "shard-00000.parquet",
        "shard-00001.parquet",
    ]
    assert len(list(out.glob(".*.tmp-*"))) == 1  # the half-done shard has a name readers ignore
    assert not (tmp_path / "o" / "manifest.json").exists()
    monkeypatch.setattr(prep, "atomic_write", real_write)
    m = prepare(cfg)
    assert (m["shards_reused"], m["shards_written"]) == (2, 3)
    assert not list(out.glob(".*.tmp-*"))
    ref = prepare(
        PrepareConfig(input=str(bundled_fasta), output=str(tmp_path / "ref"), rows_per_shard=700)
    )
    assert _rows(tmp_path / "o") == _rows(tmp_path / "ref")
    assert m["splits"] == ref["splits"]
    with pytest.raises(ValueError, match="different job"):
        prepare(
            PrepareConfig(input=str(bundled_fasta), output=str(tmp_path / "o"), rows_per_shard=500)
        )


def test_split_and_length_filter(tmp_path, bundled_fasta, records):
    m = prepare(
        PrepareConfig(
            input=str(bundled_fasta),
            output=str(tmp_path / "o"),
            validation_fraction=0.1,
            min_length=50,
            max_length=1000,
        )
    )
    kept = [(i, s) for i, s in records if 50 <= len(s) <= 1000]
    assert m["records"]["filtered_too_short"] == sum(len(s) < 50 for _, s in records)
    assert m["records"]["filtered_too_long"] == sum(len(s) > 1000 for _, s in records)
    val = _rows(tmp_path / "o", "validation")["id"]
    assert val == [i for i, _ in kept if split_of(i, 0.1) == "validation"]
    assert 0.06 < len(val) / len(kept) < 0.14
    assert len(_rows(tmp_path / "o")["id"]) + len(val) == len(kept)


def test_cli_gzip_and_plain_agree(tmp_path, bundled_fasta, capsys):
    from ankh_platform.core.cli import run
    from jobs.prepare import main

    plain = tmp_path / "x.fasta"
    with gzip.open(bundled_fasta, "rt") as f:
        plain.write_text(f.read())
    assert (
        main(["--input", str(plain), "--output", str(tmp_path / "a"), "rows_per_shard=1000"]) == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["splits"]["train"]["shards"] == 3
    assert (
        main(
            ["--input", str(bundled_fasta), "--output", str(tmp_path / "b"), "rows_per_shard=1000"]
        )
        == 0
    )
    assert _rows(tmp_path / "a") == _rows(tmp_path / "b")
    capsys.readouterr()
    assert (
        run(main, ["--input", str(tmp_path / "missing.fa"), "--output", str(tmp_path / "c")]) == 2
    )
    err = capsys.readouterr().err  # a user error: one line, no traceback
    assert err.startswith("error: ") and "missing.fa" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
