"""GO-transfer baselines: composition vectors, the MMseqs2 best-hit parser, and mmseqs itself."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from ankh_platform.search import baselines
from ankh_platform.search.transfer import predictions, transfer


def test_composition_hand_checked():
    x = baselines.composition(["ACAX", "", "xxA"])
    assert x.shape == (3, 420)
    a, c = baselines.AMINO.index("A"), baselines.AMINO.index("C")
    # ACAX: residues A, C, A counted (X skipped): A 2/3, C 1/3; pairs AC, CA (AX skipped): 1/2 each
    np.testing.assert_allclose(x[0, a], 2 / 3, rtol=1e-6)
    np.testing.assert_allclose(x[0, c], 1 / 3, rtol=1e-6)
    np.testing.assert_allclose(x[0, 20 + a * 20 + c], 0.5)
    np.testing.assert_allclose(x[0, 20 + c * 20 + a], 0.5)
    assert x[0, :20].sum() == pytest.approx(1) and x[0, 20:].sum() == pytest.approx(1)
    assert not x[1].any()  # empty: a zero row, no division error
    # lower case is upper case; "XXA" has one standard residue and no standard pair
    assert x[2, a] == 1.0 and not x[2, 20:].any()


M8 = """\
q1\tt1\t0.500\t100\t50\t0\t1\t100\t1\t100\t1e-10\t80
q1\tt2\t0.900\t100\t10\t0\t1\t100\t1\t100\t1e-20\t150
q1\tt3\t0.950\t50\t2\t0\t1\t50\t1\t50\t1e-20\t150
q2\tt3\t87.5\t40\t5\t0\t1\t40\t1\t40\t1e-5\t40

"""


def test_mmseqs_best_hit_parser_hand_checked():
    best = baselines.best_hits(M8)
    # q1: highest bit score 150, held by t2 and t3: the first listed (t2) wins
    assert best == {"q1": ("t2", 0.9, 150.0), "q2": ("t3", 0.875, 40.0)}  # 87.5 %: 0.875
    lookup = pa.table(
        {"id": ["t1", "t2", "t3"], "go_mf": [["a"], ["b", "c"], None], "go_cc": [["x"], [], ["y"]]}
    )
    hits = baselines.best_hit_table(best, lookup, ["go_mf", "go_cc"])
    assert hits["target_id"].to_pylist() == ["t2", "t3"]
    preds = transfer(hits, ["go_mf", "go_cc"])
    assert predictions(preds, "go_mf") == {"q1": {"b": pytest.approx(0.9), "c": pytest.approx(0.9)}}
    assert predictions(preds, "go_cc") == {"q2": {"y": pytest.approx(0.875)}}
    with pytest.raises(ValueError, match="line 1 .* 3 columns"):
        baselines.best_hits("q\tt\t1\n")


def test_mmseqs_easy_search_finds_itself(protein_parquet):
    """Real proteins searched against themselves: each one's best hit is itself (identity 1)."""
    if baselines.mmseqs_binary() is None:
        pytest.skip("mmseqs (Debian package mmseqs2) is not installed: the MMseqs2 baseline")
    import pyarrow.parquet as pq

    t = pq.read_table(protein_parquet, columns=["id", "sequence"]).slice(0, 40)
    ids, seqs = t["id"].to_pylist(), t["sequence"].to_pylist()
    m8, wall = baselines.easy_search((ids[:5], seqs[:5]), (ids, seqs), threads=1)
    best = baselines.best_hits(m8)
    assert wall > 0 and set(best) == set(ids[:5])
    for q in ids[:5]:
        target, ident, _ = best[q]
        assert ident == pytest.approx(1.0)
        assert seqs[ids.index(target)] == seqs[ids.index(q)]  # itself, or the same sequence
