"""Nothing lost, nothing crashed: a generated hostile FASTA through ``jobs.prepare`` and the
``jobs.embed`` stages, with counts that add up (every record in -> exactly one row out or one
reported entry with its reason) and ids byte-exact in Parquet and HDF5.

The file is built from real proteins; each record carries the outcome expected of each job,
written down from the format's rules (not from running the code), so the test can fail.
"""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from ankh_platform.data.fasta import CATEGORIES, FastaError, read_fasta
from ankh_platform.data.prepare import PrepareConfig, prepare
from ankh_platform.embed import inputs, outputs

LONG = 100_000  # residues of the two long records
MIN_LEN, MAX_LEN = 5, 50_000  # prepare's filters: "MKV" is too short, the long ones too long
WIDTH = 1024  # embed's max_length: the long records become ~110 windows each


def _wrap(seq: str, width: int = 60, eol: str = "\n") -> str:
    return "".join(seq[i : i + width] + eol for i in range(0, len(seq), width)) or eol


def hostile(seqs: list[str]) -> tuple[bytes, list[dict]]:
    """``(file bytes, records)``; each record: ``prep`` = ("kept", id) | ("drop", reason) |
    ("filter", which), ``embed`` = ("row", id) | ("invalid", words in the reason)."""
    s = iter(seqs)
    longs = "".join(seqs)
    assert len(longs) >= 2 * LONG
    recs: list[tuple[bytes, tuple, tuple]] = [
        # sequence data before the first header: a record without a header
        (
            b"; a file comment\n\n" + next(s)[:30].encode() + b"\n",
            ("drop", "no_header"),
            ("invalid", "missing id"),
        ),
        (
            f">sp|P0CRLF|X_HUMAN a description\r\n{_wrap(next(s), eol=chr(13) + chr(10))}".encode(),
            ("kept", "P0CRLF"),
            ("row", "P0CRLF"),
        ),
        (f">lower1\n{_wrap(next(s).lower())}".encode(), ("kept", "lower1"), ("row", "lower1")),
        (
            b">spaces1 x\n" + " \t ".join(_wrap(next(s), 25).split("\n")).encode() + b"\n",
            ("kept", "spaces1"),
            ("row", "spaces1"),
        ),
    ]
    q = next(s)
    stop = next(s)
    recs += [
        (f">digits1\n{q[:20]}12{q[20:]}\n".encode(), ("drop", "invalid_chars"), ("invalid", "'1'")),
        # embed strips one trailing '*' (strip_stop); prepare reports it
        (f">stop1\n{stop}*\n".encode(), ("drop", "stop_marks"), ("row", "stop1")),
    ]
    q = next(s)
    recs += [  # two problems (a '*' inside and a digit): one record, one outcome
        (f">stopdigit\n{q[:10]}*{q[10:]}9\n".encode(), ("drop", "stop_marks"), ("invalid", "'*'")),
        (b">empty1\n\n; a comment in an empty record\n", ("drop", "empty"), ("invalid", "empty")),
        (f">\n{next(s)}\n".encode(), ("drop", "no_header"), ("invalid", "missing id")),
        (b">\n", ("drop", "no_header"), ("invalid", "missing id")),  # no header, no residues
        (f">dup1 first\n{next(s)}\n".encode(), ("kept", "dup1"), ("row", "dup1")),
        (f">long1\n{_wrap(longs[:LONG])}".encode(), ("filter", "too_long"), ("row", "long1")),
        (
            f">プロテイン_β-ünï desc\n{next(s)}\n".encode(),
            ("kept", "プロテイン_β-ünï"),
            ("row", "プロテイン_β-ünï"),
        ),
        (
            b">bad\xff\xfeid\n" + next(s).encode() + b"\n",
            ("drop", "bad_header_encoding"),
            ("row", "bad\\xff\\xfeid"),
        ),
    ]
    q = next(s)
    recs += [
        (
            f">comments1\n{q[:40]}\n; inside a record\n\n{q[40:]}\n".encode(),
            ("kept", "comments1"),
            ("row", "comments1"),
        ),
        (b">short1\nMKV\n", ("filter", "too_short"), ("row", "short1")),
        (f">sl/ash|x\n{next(s)}\n".encode(), ("kept", "sl/ash|x"), ("row", "sl/ash|x")),
        (f">dup1 second\n{next(s)}\n".encode(), ("kept", "dup1"), ("invalid", "duplicate id")),
        (f">long2\n{longs[LONG : 2 * LONG]}\n".encode(), ("filter", "too_long"), ("row", "long2")),
        (f">sp|P0LAST|Y_HUMAN\n{next(s)}".encode(), ("kept", "P0LAST"), ("row", "P0LAST")),
    ]
    data = b"".join(r[0] for r in recs)
    lengths = {"stop1": len(stop), "long1": LONG, "long2": LONG}
    return data, [{"prep": p, "embed": e, "length": lengths.get(e[1])} for _, p, e in recs]


@pytest.fixture(scope="module")
def real(bundled_fasta) -> list[str]:
    return [seq for _, seq in read_fasta(str(bundled_fasta))][:800]


@pytest.fixture(scope="module")
def hostile_file(tmp_path_factory, real) -> tuple[Path, list[dict]]:
    data, recs = hostile(real)
    path = tmp_path_factory.mktemp("hostile") / "hostile.fasta.gz"
    path.write_bytes(gzip.compress(data))
    return path, recs


def test_prepare_every_record_one_outcome(tmp_path, hostile_file):
    path, recs = hostile_file
    m = prepare(
        PrepareConfig(
            input=str(path),
            output=str(tmp_path / "o"),
            min_length=MIN_LEN,
            max_length=MAX_LEN,
            rows_per_shard=5,
        )
    )
    r = m["records"]
    want = Counter(x["prep"][0] for x in recs)
    assert r["read"] == len(recs)
    assert r["written"] == want["kept"] and r["dropped_bad"] == want["drop"]
    assert (
        r["read"]
        == r["written"] + r["dropped_bad"] + r["filtered_too_short"] + r["filtered_too_long"]
    )
    assert r["kept"] == r["written"] + r["filtered_too_short"] + r["filtered_too_long"]
    reasons = Counter(x["prep"][1] for x in recs if x["prep"][0] == "drop")
    assert m["dropped_by_reason"] == {c: reasons[c] for c in CATEGORIES}
    assert r["filtered_too_long"] == 2 and r["filtered_too_short"] == 1
    # problems per category: the two-problem record counts in both, as one dropped record
    assert m["bad_records"]["invalid_chars"] == reasons["invalid_chars"] + 1
    assert m["bad_records"]["empty"] == reasons["empty"] + 1  # '>' alone: no header, no residues
    t = pq.read_table(tmp_path / "o" / "train")
    ids = [x["prep"][1] for x in recs if x["prep"][0] == "kept"]
    assert [i.encode() for i in t["id"].to_pylist()] == [i.encode() for i in ids]  # duplicates kept
    assert sum(s["rows"] for s in m["splits"]["train"]["shards"]) == len(ids)


def test_prepare_truncated_gzip_stops_without_a_manifest(tmp_path, hostile_file):
    path, _recs = hostile_file
    whole = path.read_bytes()
    cut = tmp_path / "cut.fasta.gz"
    cut.write_bytes(whole[: len(whole) * 3 // 4])
    with pytest.raises(
        FastaError,
        match=r"truncated or corrupt gzip after (\d+) complete.*"
        r"stopped after \1 record\(s\).*no manifest.json",
    ):
        prepare(PrepareConfig(input=str(cut), output=str(tmp_path / "o"), rows_per_shard=2))
    assert not (tmp_path / "o" / "manifest.json").exists()
    assert not list((tmp_path / "o").rglob("*.tmp-*"))  # closed shards whole, no partial file
    with pytest.raises(FastaError, match="truncated or corrupt gzip"):
        inputs.count_rows(inputs.InputShard(str(cut), "cut", "fasta"))  # embed: at set-up


@pytest.mark.parametrize(
    "long_policy",
    [
        "truncate",  # fast: the long records cost one model window each
        pytest.param("window", marks=[pytest.mark.slow, pytest.mark.timeout(900)]),
    ],
)
def test_embed_every_record_one_row_or_one_reason(tmp_path, hostile_file, long_policy):
    """read -> pack -> replica -> parts -> merge (the job's stages, in process) -> HDF5."""
    from ankh_platform.embed.hdf5 import dataset_name, export_hdf5
    from ankh_platform.embed.pack import EmbedPackSpec
    from ankh_platform.embed.replica import EmbedReplica, pack_udf

    path, recs = hostile_file
    shard = inputs.discover(str(path))[0]
    n = inputs.count_rows(shard)
    assert n == len(recs)
    spec = EmbedPackSpec(
        max_length=WIDTH, batch_tokens=2048, window_overlap=128, long_policy=long_policy
    )
    replica = EmbedReplica("tiny", spec, per_residue=False, layer=0, compute_dtype="float32")
    item = {"path": np.array([shard.path], object), "fmt": np.array(["fasta"], object)}
    for b in inputs.read_batches(item, chunk=7):  # small chunks: records split across groups
        out = replica(pack_udf(b, spec, replica.model.tokenizer.vocab))
        outputs.write_parts(out, str(tmp_path))
    rep = outputs.merge_shard(str(tmp_path), shard.stem, n, shard.path, 64, WIDTH, 128)
    rows = [x["embed"][1] for x in recs if x["embed"][0] == "row"]
    bad = [x["embed"][1] for x in recs if x["embed"][0] == "invalid"]
    assert rep["sequences"] + len(rep["invalid"]) == n == len(rows) + len(bad)
    assert sorted(r["row"] for r in rep["invalid"]) == [
        i for i, x in enumerate(recs) if x["embed"][0] == "invalid"
    ]
    for why, inv in zip(bad, sorted(rep["invalid"], key=lambda r: r["row"])):
        assert why in inv["reason"], (why, inv)
    table = pq.read_table(tmp_path / f"{shard.stem}.parquet")
    assert sorted(i.encode() for i in table["id"].to_pylist()) == sorted(i.encode() for i in rows)
    noted = {x["id"]: x["note"] for x in rep["notes"]}
    long_note = "windows of 1024" if long_policy == "window" else f"truncated {LONG} -> {WIDTH}"
    assert set(noted) == {"long1", "long2"} and all(long_note in v for v in noted.values())
    lens = dict(zip(table["id"].to_pylist(), table["length"].to_pylist()))
    assert lens["stop1"] == next(x["length"] for x in recs if x["embed"][1] == "stop1")
    assert lens["long1"] == lens["long2"] == (LONG if long_policy == "window" else WIDTH)
    h5 = export_hdf5(str(tmp_path), str(tmp_path / "e.h5"), [shard.stem])
    import h5py

    with h5py.File(h5, "r") as f:
        got = {f[k].attrs["original_id"]: k for k in f}
    assert sorted(i.encode() for i in got) == sorted(i.encode() for i in rows)  # byte-exact ids
    assert all(got[i] == dataset_name(i) for i in got) and got["sl/ash|x"] == "sl_ash|x"
