"""goPredSim transfer and the CAFA Fmax on hand-checked examples."""

from __future__ import annotations

import pyarrow as pa
import pytest

from ankh_platform.search.transfer import fmax, naive, predictions, transfer


def test_fmax_hand_checked():
    # C has no true term: not benchmarked. By hand, per threshold t:
    #   t <= 0.2: A {a,c} p 1/2 r 1/2; B {c,a} p 1/2 r 1  -> pr .5,  rc .75 -> F .6
    #   t <= 0.4: A {a,c} p 1/2 r 1/2; B {c}   p 1   r 1  -> pr .75, rc .75 -> F .75
    #   t <= 0.5: A {a}   p 1   r 1/2; B {c}   p 1   r 1  -> pr 1,   rc .75 -> F 6/7
    #   t <= 0.9: A {a}   p 1   r 1/2; B none             -> pr 1,   rc .25 -> F .4
    truth = {"A": {"a", "b"}, "B": {"c"}, "C": set()}
    preds = {"A": {"a": 0.9, "c": 0.4}, "B": {"c": 0.5, "a": 0.2}, "C": {"a": 1.0}}
    f, t = fmax(truth, preds)
    assert f == pytest.approx(6 / 7)
    assert t == pytest.approx(0.41)
    assert fmax({"A": {"a"}}, {})[0] == 0.0  # nothing predicted: F 0, never a division error


def test_naive_baseline_is_term_frequency():
    scores = naive([["a", "b"], ["a"], None, []], ["q1", "q2"])
    assert scores["q1"] == {"a": 1.0, "b": 0.5} and scores["q2"] == scores["q1"]


def test_transfer_keeps_the_best_neighbour_score_per_term():
    hits = pa.table(
        {
            "query_id": ["q", "q", "q", "r"],
            "target_id": ["t1", "t2", "t3", "t1"],
            "score": pa.array([0.9, 0.8, 0.7, 0.6], pa.float32()),
            "rank": [1, 2, 3, 1],
            "go_mf": [["m1"], ["m1", "m2"], None, ["m1"]],
            "go_cc": [[], ["c1"], ["c1"], None],
        }
    )
    out = transfer(hits, ["go_mf", "go_cc"])
    mf, cc = predictions(out, "go_mf"), predictions(out, "go_cc")
    assert mf == {
        "q": {"m1": pytest.approx(0.9), "m2": pytest.approx(0.8)},
        "r": {"m1": pytest.approx(0.6)},
    }
    assert cc == {
        "q": {"c1": pytest.approx(0.8)}
    }  # t1 holds no cc term: t2 is the nearest labelled
    with pytest.raises(ValueError, match="go_bp"):
        transfer(hits, ["go_bp"])


def test_go_transfer_evaluation_end_to_end(tmp_path, protein_parquet):
    """``jobs.evaluate --task go-transfer`` on train/test rows of the real uniprot_go data."""
    import json

    from jobs.evaluate import main

    out = tmp_path / "gt"
    args = ["-q", "--task", "go-transfer", "--model", "tiny", "--output", str(out)]
    report = main([*args, f"data={protein_parquet}", "lookup=60", "queries=8", "max_length=200"])
    assert report["lookup"] == 60 and report["queries"] == 8
    for onto in ("go_mf", "go_bp", "go_cc"):
        r = report["results"][onto]
        assert 0.0 <= r["goPredSim_fmax"] <= 1.0 and 0.0 <= r["naive_fmax"] <= 1.0
        assert 0 < r["queries_benchmarked"] <= 8
    assert json.loads((out / "results.json").read_text())["results"] == report["results"]
    assert "| go_mf |" in (out / "results.md").read_text()
