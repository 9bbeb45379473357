"""``jobs.benchmark packed`` at a tiny size: the three ways of running packed rows' attention
give the same pooled vectors, and each variant is timed in every round."""

import json

import pytest

from ankh_platform.bench import packed


@pytest.mark.slow  # compiles three variants' shapes
def test_packed_benchmark_variants_agree(capsys):
    out = packed.main(
        ["--model", "tiny", "--sequences", "10", "--min-residues", "50", "--max-residues", "300"]
        + ["--rounds", "2", "--peak-seconds", "0"]
    )
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == out
    assert out["sequences"] == 10 and out["length_max"] <= 300
    assert out["max_abs_diff"] < 1e-5  # skip == mask == one protein per row
    for v in packed.VARIANTS:
        assert len(out[f"{v}_rounds_s"]) == 2 and out[f"{v}_model_s"] > 0
    assert out["unpacked_padding"] > out["skip_padding"] == out["mask_padding"]


def test_packed_benchmark_refuses_unknown_variant():
    with pytest.raises(SystemExit, match="--variants"):
        packed.main(["--variants", "skip,fast"])
