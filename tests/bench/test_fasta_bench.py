"""``jobs.benchmark fasta`` at a tiny size: our job from the command line and HF's loops over the
same real proteins give the same pooled vectors, every protein accounted for."""

import json

import pytest

from ankh_platform.bench import fasta


def test_fasta_benchmark_runs_the_job_and_matches_hf(capsys, tmp_path):
    out = fasta.main(
        [
            "--model",
            "tiny",
            "--sequences",
            "12",
            "--max-residues",
            "200",
            "--peak-seconds",
            "0.3",
        ]
    )
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == out
    assert out["sequences"] == 12 and out["length_max"] <= 200
    assert out["ids_equal"] is True
    assert out["ours_tokens"] == out["residues"] + out["sequences"]  # residues + one </s> each
    assert out["max_abs_diff_b1"] <= 1e-4 and out["max_abs_diff_b8"] <= 1e-4
    assert out["ours_s"] > out["ours_model_s"] > 0 and out["hf_b1_s"] > 0 and out["hf_b8_s"] > 0
    assert out["ratio_vs_best_hf"] == pytest.approx(
        min(out["hf_b1_s"], out["hf_b8_s"]) / out["ours_s"], rel=1e-3
    )
    # useful work against the measured peak: a fraction, and the ceiling is above every side
    assert out["ours_model_fraction_of_peak"] > 0 and out["hf_b1_fraction_of_peak"] > 0
    assert out["ceiling_ratio_vs_best_hf"] > out["ratio_vs_best_hf_model_only"] > 0


def test_length_mix_is_an_option_from_a_shard_or_a_fasta(tmp_path):
    """``--min-residues``/``--max-residues`` pick real proteins in file order; a FASTA input
    gives the same proteins back (what ``jobs.embed`` is then run on)."""
    from ankh_platform.data.fasta import read_fasta

    picked = fasta.pick_proteins(None, None, 5, 150, 300)
    assert len(picked) == 5 and all(150 <= len(s) <= 300 for s in picked.values())
    assert all(set(s) <= set("ACDEFGHIKLMNPQRSTVWYXBZUO") for s in picked.values())
    path = str(tmp_path / "x.fasta")
    fasta.write_fasta(path, picked)
    assert list(read_fasta(path)) == list(picked.items())
    assert fasta.pick_proteins(None, path, 3, 1, 1000) == dict(list(picked.items())[:3])
    with pytest.raises(SystemExit, match="no protein of 2000..3000"):
        fasta.pick_proteins(None, path, 3, 2000, 3000)


def test_fasta_benchmark_refuses_unknown_hf_mode():
    with pytest.raises(SystemExit, match="b1 and/or b8"):
        fasta.main(["--hf", "b3"])
