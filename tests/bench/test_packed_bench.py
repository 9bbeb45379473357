"""``jobs.benchmark packed`` at a tiny size: the three ways of running packed rows' attention
give the same pooled vectors, and each variant is timed in every round; the opt-in ``noattn``
ceiling really removes attention from the program it times, and only from that one."""

import json

import numpy as np
import pytest

from ankh_platform.bench import packed


@pytest.mark.slow  # compiles three variants' shapes
def test_packed_benchmark_variants_agree(capsys):
    out = packed.main(
        ["--model", "tiny", "--sequences", "10", "--min-residues", "50", "--max-residues", "300"]
        + ["--rounds", "2", "--peak-seconds", "0", "--variants", "skip,mask,unpacked,noattn"]
    )
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == out
    assert out["sequences"] == 10 and out["length_max"] <= 300
    assert out["max_abs_diff"] < 1e-5  # skip == mask == one protein per row
    for v in packed.VARIANTS:
        assert len(out[f"{v}_rounds_s"]) == 2 and out[f"{v}_model_s"] > 0
    assert out["unpacked_padding"] > out["skip_padding"] == out["mask_padding"]
    assert out["noattn_score_elements"] == 0 < out["skip_score_elements"]
    assert "attention_share_of_time" in out and out["noattn_model_s"] > 0
    assert 0 < out["attention_flop_share"] < 1


def test_noattn_removes_attention_only_while_its_program_is_traced():
    import ankh.layers
    from ankh.api import Ankh
    from ankh.config import PRESETS
    from ankh.embedding import jit_encoder
    from ankh_platform.bench.fasta import pick_proteins

    model = Ankh.random(PRESETS["tiny"], seed=0)
    proteins = pick_proteins(None, None, 4, 30, 120)
    calls, _, _ = packed.batches(model, proteins, {})
    keep = ankh.layers.attend

    def pooled(removed: bool) -> np.ndarray:
        fn = jit_encoder(model.graphdef, max_segments=64)
        with packed.attention_removed(removed):
            return np.asarray(fn(model.params, *calls[0])["pooled"])

    with_attention, without = pooled(False), pooled(True)
    assert ankh.layers.attend is keep  # restored
    assert np.abs(with_attention - without).max() > 1e-3  # attention really gone
    np.testing.assert_array_equal(pooled(False), with_attention)


def test_packed_benchmark_refuses_unknown_variant():
    with pytest.raises(SystemExit, match="--variants"):
        packed.main(["--variants", "skip,fast"])
