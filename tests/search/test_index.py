"""jobs.index / jobs.search on real proteins embedded by the tiny model (docs/search.md)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from ankh_platform.search import build, manifest
from ankh_platform.search.index import SearchIndex
from jobs.index import main as index_main
from jobs.search import main as search_main
from tests.search.helpers import real_proteins, write_embeddings

N_INDEX, N_QUERY = 200, 50


@pytest.fixture(scope="module")
def emb(tmp_path_factory, protein_parquet):
    import ankh

    root = tmp_path_factory.mktemp("search")
    model = ankh.load("tiny")
    prot = real_proteins(protein_parquet, N_INDEX + N_QUERY, max_len=150)
    ids, x = write_embeddings(model, prot.slice(0, N_INDEX), root / "emb", shards=3)
    _, q = write_embeddings(model, prot.slice(N_INDEX), root / "queries", shards=1)
    return {"root": root, "ids": ids, "x": x, "q": q, "prot": prot, "model": model}


def _build(emb, out, *extra):
    argv = ["-q", "--embeddings", str(emb["root"] / "emb"), "--output", str(out)]
    return index_main([*argv, "--metadata", str(emb["root"] / "meta.parquet"), *extra])


@pytest.fixture(scope="module")
def index(emb):
    pq.write_table(
        emb["prot"].select(["id", "go_mf", "go_bp", "go_cc"]), emb["root"] / "meta.parquet"
    )
    summary = _build(emb, emb["root"] / "index")
    return emb["root"] / "index", summary


def test_index_finds_the_exact_top1(emb, index):
    path, summary = index
    assert summary["count"] == N_INDEX and summary["exactly_once"]["distinct_ids"] == N_INDEX
    m = manifest.require(str(path))
    assert m["source"]["model"] == "tiny" and m["source"]["dim"] == 64
    assert m["source"]["metric"] == "cosine" and m["source"]["pooling"] == "mean"
    ix = SearchIndex(str(path))
    scores, labels = ix.search(emb["q"], 10)
    exact_s, exact_l = ix.exact(emb["q"], 10)
    assert np.mean(labels[:, 0] == exact_l[:, 0]) >= 0.95
    np.testing.assert_allclose(scores[:, 0], exact_s[:, 0], atol=1e-5)  # re-ranked: exact scores
    # an indexed vector finds itself first, with cosine 1
    # (or an identical sequence's: the data repeats some sequences under other accessions)
    s, lab = ix.search(emb["x"][:20], 1)
    np.testing.assert_allclose(s[:, 0], 1.0, atol=1e-5)
    x = emb["x"][:20] / np.linalg.norm(emb["x"][:20], axis=1, keepdims=True)
    np.testing.assert_allclose(ix.vectors[lab[:, 0]], x, atol=1e-5)


def test_metadata_beside_vectors(emb, index):
    ix = SearchIndex(str(index[0]))
    assert ix.columns == ["go_mf", "go_bp", "go_cc"]
    row = ix.rows(np.array([0]))
    want = emb["prot"].filter(pc.equal(emb["prot"]["id"], row["id"][0])).to_pylist()[0]
    assert row["go_mf"][0].as_py() == want["go_mf"] and row["length"][0].as_py() == want["length"]


def test_interrupted_build_resumes_exactly_once(emb, index, tmp_path, monkeypatch):
    """Stopped at the commit of the second part (its files written, the manifest not yet):
    the re-run redoes that part only, and every id is in the index exactly once."""
    real_write, calls = manifest.write, []

    def stop_at_second_part(path, m):
        calls.append(len(m["parts"]))
        if len(m["parts"]) == 2:
            raise KeyboardInterrupt("killed")
        real_write(path, m)

    monkeypatch.setattr(manifest, "write", stop_at_second_part)
    with pytest.raises(KeyboardInterrupt):
        _build(emb, tmp_path / "ix")
    monkeypatch.setattr(manifest, "write", real_write)
    assert len(manifest.require(str(tmp_path / "ix"))["parts"]) == 1
    summary = _build(emb, tmp_path / "ix")
    assert summary["parts"] == {"total": 3, "added": 2, "skipped_done": 1}
    assert summary["exactly_once"] == {"vectors": N_INDEX, "distinct_ids": N_INDEX, "parts": 3}
    a, b = SearchIndex(str(tmp_path / "ix")), SearchIndex(str(index[0]))
    assert a.table["id"].to_pylist() == b.table["id"].to_pylist()
    np.testing.assert_array_equal(a.search(emb["q"], 5)[1], b.search(emb["q"], 5)[1])


def test_incremental_add_and_rerun(emb, index, tmp_path):
    src = emb["root"] / "emb"
    part = tmp_path / "emb"
    part.mkdir()
    for name in ("_job.json", "part-000.parquet", "part-001.parquet"):
        shutil.copy(src / name, part / name)
    argv = ["-q", "--embeddings", str(part), "--output", str(tmp_path / "ix")]
    meta = ["--metadata", str(emb["root"] / "meta.parquet")]
    first = index_main([*argv, *meta])
    shutil.copy(src / "part-002.parquet", part / "part-002.parquet")
    # the index keeps GO columns: new parts without them would lose them, so it refuses
    with pytest.raises(ValueError, match=r"keeps metadata columns \['go_mf'.*give --metadata"):
        index_main(argv)
    second = index_main([*argv, *meta])
    assert second["added"] == N_INDEX - first["count"] and second["count"] == N_INDEX
    assert index_main(argv)["added"] == 0  # nothing new: nothing added twice (nor refused)
    assert (
        SearchIndex(str(tmp_path / "ix")).rows(np.arange(N_INDEX)).column("go_mf").null_count
        < N_INDEX
    )
    with pytest.raises(ValueError, match="already in the index"):  # same ids, other directory
        index_main(["-q", "--embeddings", str(src), "--output", str(tmp_path / "ix"), *meta])


def test_other_space_is_refused(emb, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(emb["root"] / "emb", other)
    job = json.loads((other / "_job.json").read_text())
    (other / "_job.json").write_text(json.dumps({**job, "checkpoint": "small", "layer": 1}))
    index_main(["-q", "--embeddings", str(emb["root"] / "emb"), "--output", str(tmp_path / "ix")])
    with pytest.raises(ValueError, match=r"model: index has 'tiny', .* has 'small'.*layer"):
        index_main(["-q", "--embeddings", str(other), "--output", str(tmp_path / "ix")])


def test_search_job_writes_hits_and_tsv(emb, index, tmp_path):
    prot = emb["prot"]
    fasta = tmp_path / "q.fasta"
    seqs = prot["sequence"].to_pylist()
    long_seq = (seqs[0] * 8)[:1500]  # over the tiny model's 1024: windowed as the job does
    fasta.write_text(
        f">{prot['id'][0]}\n{seqs[0]}*\n>bad\nACDJ1\n>long\n{long_seq}\n>{prot['id'][210]}\n{seqs[210]}\n"
    )
    out = tmp_path / "hits"
    summary = search_main(
        ["-q", "--index", str(index[0]), "--query", str(fasta), "--k", "5", "--output", str(out)]
        + ["--transfer", "go_mf,go_cc"]
    )
    assert summary["searched"] == 3 and [i["id"] for i in summary["invalid"]] == ["bad"]
    hits = pq.read_table(out / "hits.parquet")
    assert hits.column_names[:4] == ["query_id", "target_id", "score", "rank"]
    assert hits.num_rows == 15 and "go_mf" in hits.column_names
    first = hits.slice(0, 1).to_pylist()[0]
    assert first["target_id"] == first["query_id"] and first["rank"] == 1
    assert first["score"] == pytest.approx(1.0, abs=1e-4)  # the trailing * was dropped
    # query 210 was not indexed: its hits equal the exact search over the same vectors
    ix = SearchIndex(str(index[0]))
    _, exact = ix.exact(emb["q"][210 - N_INDEX : 211 - N_INDEX], 5)
    got = hits.filter(pc.equal(hits["query_id"], prot["id"][210]))
    assert got["target_id"].to_pylist()[0] == ix.rows(exact[0])["id"][0].as_py()
    tsv = [line.split("\t") for line in (out / "hits.tsv").read_text().splitlines()]
    assert len(tsv) == 15 and all(len(r) == 12 for r in tsv)
    assert float(tsv[0][11]) == pytest.approx(first["score"], abs=1e-4)
    transfer = pq.read_table(out / "transfer.parquet")
    assert set(transfer["ontology"].to_pylist()) <= {"go_mf", "go_cc"} and transfer.num_rows > 0


def test_choose_params_small_and_large():
    from ankh_platform.search.config import IndexConfig

    small = build.choose_params(200, 200, 64, IndexConfig())
    assert small["nlist"] == 5 and small["pq_m"] == 32 and small["pq_bits"] == 4
    big = build.choose_params(60_000_000, 100_000, 768, IndexConfig())
    assert big["nlist"] == 2564 and big["pq_m"] == 384 and big["pq_bits"] == 8


def test_index_on_gcs(emb, gcs_bucket):
    """Embeddings read from and the index written to gs:// (the emulator), then opened there."""
    from ankh import storage

    fs = storage.gcs_filesystem()
    bucket = gcs_bucket.removeprefix("gs://")
    for f in (emb["root"] / "emb").iterdir():
        fs.put_file(str(f), f"{bucket}/emb/{f.name}")
    argv = ["-q", "--embeddings", f"{gcs_bucket}/emb", "--output", f"{gcs_bucket}/index"]
    assert index_main(argv)["count"] == N_INDEX
    assert index_main(argv)["added"] == 0  # the manifest on gs:// resumes too
    ix = SearchIndex(f"{gcs_bucket}/index")
    _, labels = ix.search(emb["q"], 10)
    assert np.mean(labels[:, 0] == ix.exact(emb["q"], 1)[1][:, 0]) >= 0.95


def test_defaults_are_calibrated_to_the_target_recall(emb, index):
    """The build stores the cheapest nprobe/refine whose measured recall@10 reaches 0.95, and
    searching with those defaults gives that recall on the queries the calibration sampled."""
    from ankh_platform.search.calibrate import K

    path, _ = index
    ix = SearchIndex(str(path))
    cal = ix.params["calibration"]
    assert cal["target"] == 0.95 and cal["recall_at_10"] - 2 * cal["stderr"] >= 0.95
    assert (ix.params["nprobe"], ix.params["refine"]) == (cal["nprobe"], cal["refine"])
    # the ladder stopped at the first setting reaching the target: every earlier one missed it
    assert all(t["recall_at_10"] - 2 * t["stderr"] < 0.95 for t in cal["tried"][:-1])
    # the chunked exact scan equals one brute-force product, chunk boundaries included
    q = ix.vectors[:7]
    brute = np.argsort(-(q @ ix.vectors.T), axis=1, kind="stable")[:, :K]
    np.testing.assert_array_equal(ix.exact(q, K, chunk=13)[1], brute)
    # on new queries too the defaults find (nearly) all of the exact top 10
    _, found = ix.search(emb["q"], K)
    _, truth = ix.exact(emb["q"], K)
    assert np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth)]) >= 0.9


def _same_index(a_path, b_path):
    """Same parts (names, labels, rows), same encoded bytes, same tables (ids, vectors, meta)."""
    a, b = manifest.require(str(a_path)), manifest.require(str(b_path))
    key = ("name", "source", "rows", "first_label")
    assert [[p[k] for k in key] for p in a["parts"]] == [[p[k] for k in key] for p in b["parts"]]
    assert a["count"] == b["count"] == N_INDEX
    for p in a["parts"]:
        for f in (f"{p['name']}.faiss", f"{p['name']}.parquet"):
            fa, fb = a_path / "parts" / f, b_path / "parts" / f
            if f.endswith(".faiss"):
                assert fa.read_bytes() == fb.read_bytes()
            else:
                assert pq.read_table(fa).equals(pq.read_table(fb))


def test_parallel_build_equals_serial(emb, index, ray_local, tmp_path):
    """Parts encoded by Ray tasks (2 at once, finishing in any order) make the serial index."""
    summary = _build(emb, tmp_path / "ix", "workers=2")
    assert summary["workers"] == 2 and summary["exactly_once"]["distinct_ids"] == N_INDEX
    assert index[1]["workers"] == 0  # the fixture's build: serial (no cluster addressed)
    _same_index(tmp_path / "ix", index[0])


def test_parallel_build_killed_resumes_exactly_once(emb, index, ray_local, tmp_path, monkeypatch):
    """A parallel build stopped at its second commit (parts 2 and 3 written or in flight) and
    re-run in parallel: every id once, the same index as the serial build."""
    real_write = manifest.write

    def stop_at_second_part(path, m):
        if len(m["parts"]) == 2:
            raise KeyboardInterrupt("killed")
        real_write(path, m)

    monkeypatch.setattr(manifest, "write", stop_at_second_part)
    with pytest.raises(KeyboardInterrupt):
        _build(emb, tmp_path / "ix", "workers=2")
    monkeypatch.setattr(manifest, "write", real_write)
    assert len(manifest.require(str(tmp_path / "ix"))["parts"]) == 1
    summary = _build(emb, tmp_path / "ix", "workers=2")
    assert summary["parts"] == {"total": 3, "added": 2, "skipped_done": 1}
    assert summary["exactly_once"] == {"vectors": N_INDEX, "distinct_ids": N_INDEX, "parts": 3}
    _same_index(tmp_path / "ix", index[0])


def test_sharded_search_equals_unsharded(emb, index, ray_local, tmp_path):
    """2 shard actors (parts {1, 2}, {3}: 66 + 67 and 67 rows): the same labels, scores and rows as one
    in-process index, for k below, at and above the PQ shortlist; and through jobs.search."""
    from ankh_platform.search.sharded import ShardedIndex, plan_shards

    m = manifest.require(str(index[0]))
    assert plan_shards(m, 2) == [(0, 2), (2, 3)] and plan_shards(m, 3) == [(0, 1), (1, 2), (2, 3)]
    with pytest.raises(ValueError, match="shards=4, but the index has 3 parts"):
        plan_shards(m, 4)
    one = SearchIndex(str(index[0]))
    with ShardedIndex(str(index[0]), 2) as many:
        # refine=1: a short PQ shortlist, where re-ranking each shard's own shortlist (a
        # superset) would differ from the one index for every query
        for k, nprobe, refine in ((1, 0, 0), (10, 0, 0), (10, 1, 0), (10, 0, 1), (150, 0, 0)):
            s1, l1 = one.search(emb["q"], k, nprobe, refine)
            s2, l2 = many.search(emb["q"], k, nprobe, refine)
            np.testing.assert_array_equal(l1, l2)
            np.testing.assert_array_equal(s1, s2)
        labels = np.array([[-1, 0, N_INDEX - 1], [70, -1, 5]])
        assert many.rows(labels).equals(one.rows(labels))
    argv = ["-q", "--index", str(index[0]), "--query", str(emb["root"] / "queries"), "--k", "5"]
    search_main([*argv, "--output", str(tmp_path / "one")])
    assert search_main([*argv, "--output", str(tmp_path / "two"), "--shards", "2"])["shards"] == 2
    assert pq.read_table(tmp_path / "one" / "hits.parquet").equals(
        pq.read_table(tmp_path / "two" / "hits.parquet")
    )


def test_serve_search_deployment_sharded(emb, index, ray_local):
    """The /v1/search deployment's body with search_shards=2 answers as with one index."""
    from ankh_platform.serve.search import SearchDeployment

    body = SearchDeployment.func_or_class
    one, two = body({"u": str(index[0])}), body({"u": str(index[0])}, shards=2)
    try:
        assert two.search("u", emb["q"][:8], 5, None) == one.search("u", emb["q"][:8], 5, None)
    finally:
        two.indexes["u"].close()
