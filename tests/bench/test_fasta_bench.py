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


def test_fasta_file_is_real_proteins_in_file_order(tmp_path):
    from ankh_platform.data.fasta import read_fasta

    picked = fasta.real_fasta(str(tmp_path / "x.fasta"), None, 5, 300)
    back = list(read_fasta(str(tmp_path / "x.fasta")))
    assert [(i, s) for i, s in back] == list(picked.items())
    assert all(
        len(s) <= 300 and set(s) <= set("ACDEFGHIKLMNPQRSTVWYXBZUO") for s in picked.values()
    )


def test_fasta_benchmark_refuses_unknown_hf_mode():
    with pytest.raises(SystemExit, match="b1 and/or b8"):
        fasta.main(["--hf", "b3"])
