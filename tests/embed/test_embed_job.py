"""Batch embedding job: packing, exactness against the offline API, resume after a kill, GCS.

Fast tests run the job's parts in-process (pack -> replica -> part files -> merge) on real
proteins; the slow ones run the whole Ray Data job (local Ray; a killed driver; gs:// I/O
through the GCS emulator).
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ankh_platform.embed import outputs
from ankh_platform.embed.job import EmbedJobConfig, _check_output
from ankh_platform.embed.pack import EmbedPackSpec, pack, prepare
from ankh_platform.embed.replica import EmbedReplica, pack_udf
from tests.embed.helpers import offline_reference, reader_batch

REPO = Path(__file__).resolve().parents[2]
WIDTH, OVERLAP = 256, 32  # a small max_length so some real proteins need windows
BAD_FASTA = [("BAD1", "MKTJJQ"), ("BAD2", "")]  # J is not an amino-acid letter; empty record


def _real(protein_parquet: Path, start: int, n: int) -> dict:
    t = pq.read_table(protein_parquet, columns=["id", "sequence"])
    return t.slice(start, n).to_pydict()


_MODEL = {}


def _offline():
    import ankh

    if "m" not in _MODEL:
        _MODEL["m"] = ankh.load("tiny")
    return _MODEL["m"]


def _reference(seq: str, width: int = WIDTH) -> tuple[np.ndarray, np.ndarray]:
    """Pooled and per-residue embedding of one sequence alone through ``ankh.load().embed``."""
    return offline_reference(_offline(), seq, width, OVERLAP)


def _check_against_offline(table: pa.Table, seqs: dict[str, str]) -> float:
    got = table.to_pydict()
    worst = 0.0
    for ident, emb in zip(got["id"], got["embedding"]):
        pooled, per_res = _reference(seqs[ident])
        worst = max(worst, float(np.abs(np.asarray(emb) - pooled).max()))
        if "per_residue" in got:
            res = np.asarray(got["per_residue"][got["id"].index(ident)])
            assert res.shape == per_res.shape
            worst = max(worst, float(np.abs(res - per_res).max()))
    return worst


# ---- fast: no Ray -------------------------------------------------------------------------------
def test_packing_real_proteins_fixed_shapes_little_padding(protein_parquet):
    from ankh.tokenizer import AnkhTokenizer

    t = _real(protein_parquet, 0, 4096)
    spec = EmbedPackSpec(max_length=1024)  # the default token budget
    prep = prepare(t["id"], t["sequence"], ["s"] * 4096, AnkhTokenizer(), spec)
    seen, slots, real = [], 0, 0
    for b in pack(prep, spec):
        assert b["ids"].shape in spec.shapes()
        slots, real = slots + b["ids"].size, real + int((b["ids"] > 0).sum())
        for row, start, ntok, s, win, _seg in b["pieces"].tolist():
            tokens = b["ids"][row, start : start + ntok]
            assert tokens[-1] == 1 and (tokens[:-1] > 2).all()  # one whole piece, then </s>
            seen.append((s, win))
    assert sorted(seen) == sorted(zip(prep.piece_seq, prep.piece_win))  # each piece exactly once
    assert real == sum(len(x) for x in prep.tokens)
    assert 1 - real / slots < 0.05, f"padding waste {1 - real / slots:.3f}"
    assert len(spec.shapes()) <= 6


def test_invalid_and_long_sequences_are_reported_not_dropped():
    from ankh.tokenizer import AnkhTokenizer

    spec = EmbedPackSpec(max_length=50, window_overlap=10, long_policy="skip")
    ids = ["ok", "bad", "empty", "none", "", "long", "stop"]
    seqs = ["MKV", "MK1V", "", None, "MKV", "M" * 60, "MKV*"]
    prep = prepare(ids, seqs, ["s"] * 7, AnkhTokenizer(), spec)
    errs = {i: why for _, i, why in prep.errors}
    assert [k[1] for k in prep.seq_key] == ["ok", "stop"]
    assert "'1' at position 3" in errs["bad"] and "empty" in errs["empty"]
    assert "null" in errs["none"] and "missing id" in errs[""] and "max_length 50" in errs["long"]
    trunc = prepare(
        ["long"],
        ["M" * 60],
        ["s"],
        AnkhTokenizer(),
        EmbedPackSpec(max_length=50, window_overlap=10, long_policy="truncate"),
    )
    assert trunc.seq_len == [50] and "truncated 60 -> 50" in trunc.notes[0][2]
    win = prepare(
        ["long"],
        ["M" * 60],
        ["s"],
        AnkhTokenizer(),
        EmbedPackSpec(max_length=50, window_overlap=10),
    )
    assert win.seq_nwin == [2] and win.piece_win == [0, 10] and "2 windows" in win.notes[0][2]


@pytest.mark.parametrize("steps_per_octave", [1, 2])
def test_job_stages_in_process_equal_offline_api(tmp_path, protein_parquet, steps_per_octave):
    """pack -> replica -> part files -> merge, on real proteins: equals embedding each alone,
    with the doubling row ladder and with the finer one (row_steps_per_octave=2)."""
    t = _real(protein_parquet, 0, 48)
    seqs = dict(zip(t["id"], t["sequence"]))
    assert sum(len(s) > WIDTH for s in seqs.values()) >= 3  # windows are exercised
    ids = t["id"] + [i for i, _ in BAD_FASTA]
    batch = reader_batch(ids, t["sequence"] + [s for _, s in BAD_FASTA])
    spec = EmbedPackSpec(
        max_length=WIDTH,
        batch_tokens=1024,
        window_overlap=OVERLAP,
        steps_per_octave=steps_per_octave,
    )
    assert spec.row_lengths() == (
        [128, 256, 320] if steps_per_octave == 1 else [128, 192, 256, 320]
    )
    packed = pack_udf(batch, spec, _offline().tokenizer.vocab)
    out = EmbedReplica("tiny", spec, per_residue=True, layer=0, compute_dtype="float32")(packed)
    n = len(out["id"])
    counts = [
        outputs.write_parts({k: v[i : i + 40] for k, v in out.items()}, str(tmp_path))
        for i in range(0, n, 40)
    ]
    assert sum(int(c["n_first"].sum()) for c in counts) == len(ids)
    report = outputs.merge_shard(str(tmp_path), "shard-a", len(ids), "src", 64, WIDTH, OVERLAP)
    table = pq.read_table(tmp_path / "shard-a.parquet")
    assert sorted(table["id"].to_pylist()) == sorted(t["id"])  # one row per valid id
    assert {x["id"] for x in report["invalid"]} == {"BAD1", "BAD2"}
    assert table.schema.field("embedding").type == pa.list_(pa.float32(), 64)
    assert _check_against_offline(table, seqs) < 1e-5
    assert not (tmp_path / "_parts" / "shard-a").exists()
    from ankh_platform.embed.hdf5 import export_hdf5

    for per_res in (False, True):  # the HDF5 export holds exactly the Parquet rows
        h5 = export_hdf5(str(tmp_path), str(tmp_path / f"emb-{per_res}.h5"), ["shard-a"], per_res)
        _check_hdf5(Path(h5), [table], per_res)
    assert not list(tmp_path.glob("*.tmp-*"))


def _check_hdf5(path: Path, tables: list[pa.Table], per_residue: bool = False) -> None:
    """One dataset per id (bio_embeddings layout), values equal to the Parquet rows."""
    import h5py

    rows = {
        i: (v, n)
        for t in tables
        for i, v, n in zip(
            t["id"].to_pylist(),
            t["per_residue" if per_residue else "embedding"].to_pylist(),
            t["length"].to_pylist(),
        )
    }
    with h5py.File(path, "r") as h5:
        assert sorted(h5.keys()) == sorted(rows)  # ids here contain no '/'
        for key, ds in h5.items():
            want, n = rows[ds.attrs["original_id"]]
            assert key == ds.attrs["original_id"] and ds.attrs["length"] == n
            assert ds.shape == ((n, len(want[0])) if per_residue else (len(want),))
            np.testing.assert_array_equal(ds[()], np.asarray(want, ds.dtype))


def test_hdf5_names_and_missing_h5py_error(tmp_path):
    from ankh_platform.embed.hdf5 import dataset_name

    assert dataset_name("sp|P1/2|X") == "sp|P1_2|X" and dataset_name(".") == "_."
    code = (
        "import sys; sys.modules['h5py'] = None\n"  # as if h5py were not installed
        "from ankh_platform.embed.job import EmbedJobConfig, run\n"
        f"run(EmbedJobConfig(checkpoint='tiny', input='{tmp_path}', output='{tmp_path}/o',"
        f" hdf5='{tmp_path}/e.h5'))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert r.returncode != 0 and "pip install h5py" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "o").exists()  # refused before any work


def test_row_ladder_setting_is_checked():
    with pytest.raises(ValueError, match="row_steps_per_octave must be 1 or 2"):
        EmbedPackSpec(max_length=1024, steps_per_octave=3)
    assert EmbedPackSpec(max_length=1024, steps_per_octave=2).row_lengths() == [
        128,
        192,
        256,
        384,
        512,
        768,
        1088,
    ]


def test_output_of_other_settings_is_refused(tmp_path):
    _check_output(EmbedJobConfig(checkpoint="tiny", input="x", output=str(tmp_path)))
    with pytest.raises(ValueError, match="other settings"):
        _check_output(EmbedJobConfig(checkpoint="small", input="x", output=str(tmp_path)))


def test_cli_help():
    r = subprocess.run(
        [sys.executable, "-m", "jobs.embed", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert r.returncode == 0 and "--model" in r.stdout and "long_policy" in r.stdout


# ---- slow: the whole Ray Data job -----------------------------------------------------------------
def _write_inputs(root: Path, protein_parquet: Path, shards: int, per: int) -> dict[str, str]:
    root.mkdir(parents=True, exist_ok=True)
    t = _real(protein_parquet, 100, shards * per + 12)
    for k in range(shards):
        part = {c: v[k * per : (k + 1) * per] for c, v in t.items()}
        pq.write_table(pa.table(part), root / f"part-{k:03d}.parquet")
    fasta = [(i, s) for i, s in zip(t["id"][-12:], t["sequence"][-12:])] + BAD_FASTA
    with gzip.open(root / "extra.fasta.gz", "wt") as fh:
        for i, s in fasta:
            fh.write(f">sp|{i}|X_HUMAN desc\n{s}\n")
    return dict(zip(t["id"], t["sequence"]))


def _job_args(inp: str, out: str) -> list[str]:
    return [
        "--model",
        "tiny",
        "--input",
        inp,
        "--output",
        out,
        f"max_length={WIDTH}",
        f"window_overlap={OVERLAP}",
        "batch_tokens=1024",
        "group_rows=16",
        "write_rows=16",
        "block_bytes=20000",
    ]


def _check_output_dir(out: Path, seqs: dict[str, str]) -> None:
    tables = [pq.read_table(p) for p in sorted(out.glob("*.parquet"))]
    ids = [i for t in tables for i in t["id"].to_pylist()]
    assert len(ids) == len(set(ids)), "duplicate ids"
    assert sorted(ids) == sorted(seqs), "missing or extra ids"
    assert max(_check_against_offline(t, seqs) for t in tables) < 1e-5


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_job_killed_mid_run_resumes_without_gaps_or_recompute(tmp_path, protein_parquet, ray_local):
    from ankh_platform.core.config import load_config
    from ankh_platform.embed.job import run

    seqs = _write_inputs(tmp_path / "in", protein_parquet, shards=6, per=24)
    out, h5 = tmp_path / "out", tmp_path / "emb.h5"
    env = dict(os.environ, RAY_ADDRESS=ray_local.get_runtime_context().gcs_address)
    log = open(tmp_path / "driver.log", "wb")
    driver = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jobs.embed",
            "--hdf5",
            str(h5),
            *_job_args(str(tmp_path / "in"), str(out)),
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 900
        while not list(out.glob("*.parquet")) and driver.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        driver.send_signal(signal.SIGKILL)  # the driver dies mid-run: no cleanup, no summary
    finally:
        driver.kill()
        driver.wait()
        log.close()
    _wait_for_released_cpus(ray_local)
    done = {p.name: p.stat().st_mtime_ns for p in out.glob("*.parquet")}
    assert 0 < len(done) < 7, f"kill did not land mid-run: {sorted(done)}"
    assert not (out / "_summary.json").exists() and not h5.exists()

    cfg = load_config(EmbedJobConfig, None, [f"{a}" for a in _job_args("", "")[6:]])
    import dataclasses

    summary = run(
        dataclasses.replace(
            cfg, checkpoint="tiny", input=str(tmp_path / "in"), output=str(out), hdf5=str(h5)
        )
    )
    assert summary["shards"] == {"total": 7, "written": 7 - len(done), "skipped_done": len(done)}
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.parquet") if p.name in done} == done
    valid = {i: s for i, s in seqs.items() if i not in dict(BAD_FASTA)}
    _check_output_dir(out, valid)
    bad = {x["id"]: x["reason"] for x in json.loads((out / "_summary.json").read_text())["invalid"]}
    assert set(bad) == {"BAD1", "BAD2"} and "'J'" in bad["BAD1"]
    assert not (out / "_parts").exists()
    assert summary["hdf5_file"] == str(h5)  # built from all shards, the resumed ones included
    _check_hdf5(h5, [pq.read_table(p) for p in out.glob("*.parquet")])


def _wait_for_released_cpus(ray, timeout: float = 120.0) -> None:
    """Ray reaps a dead driver's tasks asynchronously: until their CPUs are back, one may still
    write a part file after the resumed run has cleaned up (a killed job's late writer)."""
    deadline = time.time() + timeout
    total = ray.cluster_resources().get("CPU", 0)
    while ray.available_resources().get("CPU", 0) < total and time.time() < deadline:
        time.sleep(0.5)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_job_reads_and_writes_gcs(tmp_path, protein_parquet, ray_local, gcs_bucket):
    import dataclasses

    from ankh.storage import gcs_filesystem
    from ankh_platform.core.config import load_config
    from ankh_platform.embed.job import run

    seqs = _write_inputs(tmp_path / "in", protein_parquet, shards=2, per=16)
    fs = gcs_filesystem()
    bucket = gcs_bucket.removeprefix("gs://")
    for p in (tmp_path / "in").iterdir():
        fs.put(str(p), f"{bucket}/in/{p.name}")
    cfg = load_config(EmbedJobConfig, None, _job_args("", "")[6:] + ["per_residue=true"])
    summary = run(
        dataclasses.replace(
            cfg,
            checkpoint="tiny",
            input=f"{gcs_bucket}/in",
            output=f"{gcs_bucket}/out",
            hdf5_per_residue=f"{gcs_bucket}/h5/emb.h5",
        )
    )
    assert summary["shards"]["written"] == 3 and summary["invalid_count"] == 2
    local = tmp_path / "out"
    local.mkdir()
    for name in fs.ls(f"{bucket}/out", detail=False):
        if name.endswith(".parquet"):
            fs.get(name, str(local / name.rsplit("/", 1)[1]))
    valid = {i: s for i, s in seqs.items() if i not in dict(BAD_FASTA)}
    _check_output_dir(local, valid)
    assert fs.exists(f"{bucket}/out/_summary.json")
    fs.get(f"{bucket}/h5/emb.h5", str(tmp_path / "emb.h5"))
    _check_hdf5(tmp_path / "emb.h5", [pq.read_table(p) for p in local.glob("*.parquet")], True)


def test_checkpoint_is_described_without_loading_weights(tmp_path):
    from ankh_platform.embed.job import _describe

    _offline().save_hf(tmp_path / "hf")
    path, cfg, vocab = _describe(str(tmp_path / "hf"))
    assert path == str(tmp_path / "hf") and cfg == _offline().config and vocab["A"] == 3
    with pytest.raises(ValueError, match="not an HF directory"):  # ankh.resolve's error
        _describe(str(tmp_path))
