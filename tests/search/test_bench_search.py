"""``python -m jobs.benchmark search`` at a tiny size: every figure, both sides (slow)."""

from __future__ import annotations

import json

import pytest

from ankh_platform.search import baselines


@pytest.mark.slow
def test_search_benchmark_tiny(tmp_path, capsys, protein_parquet):
    from jobs.benchmark import main

    methods = ["naive", "composition"] + (["mmseqs"] if baselines.mmseqs_binary() else [])
    argv = ["search", "--real", "60", "--queries", "12", "--synthetic", "1500"]
    argv += ["--latency-queries", "5", "--batch", "4", "--max-length", "200", "--nprobe", "0,1000"]
    argv += ["--refine", "0,1000"]
    argv += ["--data", str(protein_parquet), "--baselines", ",".join(methods)]
    main([*argv, "--workdir", str(tmp_path / "w")])
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    figs = {}
    for line in lines:
        figs.setdefault(line["figure"], []).append(line)
    assert {b["set"]: b["n"] for b in figs["build"]} == {"real": 60, "synthetic": 1500}
    assert all(b["vectors_per_s"] > 0 for b in figs["build"])
    for m in figs["memory"]:
        assert m["ram_parts_mib_per_million"]["rerank_vectors"] == pytest.approx(
            64 * 4e6 / 2**20, rel=0.01
        )
        assert m["disk_mib_per_million"] > 0
    recalls = figs["recall@10"]
    assert len(recalls) == 8 and all(r["exact"] == 1.0 for r in recalls)
    assert all(0.0 <= r["index"] <= 1.0 for r in recalls)
    # every list probed and every candidate re-ranked exactly: the index is exact search
    for name in ("real", "synthetic"):
        full = [r for r in recalls if r["set"] == name and r["nprobe"] == r["nlist"]]
        assert max(r["refine"] for r in full) == 1000
        assert next(r for r in full if r["refine"] == 1000)["index"] == 1.0
    for fig in ("latency_1", "latency_4"):
        for r in figs[fig]:
            assert r["index"]["p99_ms"] >= r["index"]["p50_ms"] > 0 and r["exact"]["p50_ms"] > 0
    t = figs["go_transfer_time"][0]
    assert t["queries"] <= 12 and t["lookup"] == 60
    assert t["ours"]["with_embedding_s"] >= t["ours"]["without_embedding_s"]
    fmax = figs["go_transfer_fmax"][0]["fmax"]
    for onto in ("go_mf", "go_bp", "go_cc"):
        assert set(fmax[onto]) == {"goPredSim", *methods, "queries"}
        assert all(0.0 <= fmax[onto][m] <= 1.0 for m in ("goPredSim", *methods))
