"""``jobs.benchmark generate`` at tiny shapes: exactly the asked number of steps on both sides,
outputs compared with HF token for token, and the decode-step profile of the compiled program."""

import json

import pytest

from ankh_platform.bench import decode_profile, generate


def test_generate_benchmark_reports_ratio_steps_and_profile(capsys):
    out = generate.main(
        [
            "--preset",
            "tiny",
            "--batch",
            "2",
            "--input-len",
            "24",
            "--max-new-tokens",
            "24",
            "--strategies",
            "greedy,beam2",
            "--torch-threads",
            "1",
            "--peak-seconds",
            "0.1",
        ]
    )
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == out
    assert out["min_new_tokens"] == out["max_new_tokens"] == 24
    for name in ("greedy", "beam2"):
        res = out["results"][name]
        assert res["identical_to_hf"] is True, name
        assert res["tokens_ours"] == res["tokens_hf"] > 0
        assert res["ratio"] > 0 and res["ours_ms_per_step"] > 0 and res["hf_steps_per_s"] > 0
        # The floor is computed for HF's unpadded inputs (24 residues + sentinel + </s>).
        assert res["ceiling_ratio"] == pytest.approx(
            res["hf_seconds"] / res["floor_seconds"], rel=0.01
        )
    assert out["floor"]["enc_len"] == 26
    assert out["floor"]["matmul_peak_gflops"] > 0 and out["floor"]["read_bandwidth_gb_s"] > 0
    # A beam's extra rows cost FLOPs and cache bytes, never a second read of the weights.
    assert 0 < out["results"]["greedy"]["floor_seconds"] < out["results"]["beam2"]["floor_seconds"]
    greedy = out["profile"]["greedy"]
    # The whole loop runs inside the one compiled program, and a step never copies its KV
    # cache or the cross-attention keys/values (they are stored in the layout the dots read).
    assert greedy["loop_in_program"] and greedy["host_round_trips_per_batch"] == 1
    assert greedy["cache_sized_copies_per_step"] == 0
    assert greedy["dots_per_step"] >= 4 * 2  # 2 decoder layers: scores and PV, self and cross
    assert greedy["ours_one_token_call_s"] > 0 and greedy["hf_one_token_call_s"] > 0
    # Beam search reorders beams by their slot table, never by moving a cache.
    assert out["profile"]["beam2"]["cache_sized_copies_per_step"] == 0


def test_floor_is_setup_at_peak_plus_each_step_at_its_bound():
    from ankh.config import get_preset
    from ankh.flops import cross_kv_flops, decode_step_bytes, decode_step_flops, encoder_flops

    cfg = get_preset("tiny")
    peak, bw = 1e11, 2e10
    setup = (encoder_flops(cfg, 4, 50) + cross_kv_flops(cfg, 4, 50)) / peak
    for beams in (1, 4):
        steps = [
            max(
                decode_step_flops(cfg, 4 * beams, 50, t) / peak,
                decode_step_bytes(cfg, 4 * beams, 4, 50, t) / bw,
            )
            for t in range(1, 11)
        ]
        assert decode_profile.floor_seconds(cfg, 4, 50, 10, beams, peak, bw) == setup + sum(steps)
    # Few rows: every step is bound by its bytes; doubling the bandwidth halves the steps' part.
    fast = decode_profile.floor_seconds(cfg, 4, 50, 10, 1, peak, 2 * bw)
    assert fast - setup == (decode_profile.floor_seconds(cfg, 4, 50, 10, 1, peak, bw) - setup) / 2


def test_step_profile_counts_cache_copies():
    hlo = """HloModule m
%body (p: (s32[], f32[8,8,64,65])) -> (s32[], f32[8,8,64,65]) {
  %p = (s32[], f32[8,8,64,65]) parameter(0)
  %a = f32[8,8,64,65]{3,2,1,0} get-tuple-element(%p), index=1
  %transpose_copy_fusion.1 = f32[8,8,65,64]{3,2,1,0} fusion(%a), kind=kLoop, calls=%f
  %dot.1 = f32[8,8,1,65]{3,2,1,0} dot(%a, %a)
  ROOT %t = (s32[], f32[8,8,64,65]) tuple(%a, %a)
}

ENTRY %main (x: f32[8,8,64,65]) -> f32[8,8,64,65] {
  %w = (s32[], f32[8,8,64,65]) while(%x), condition=%cond, body=%body
}
"""
    prof = decode_profile.step_profile(hlo, cache_bytes=8 * 8 * 64 * 65 * 4)
    assert prof["kernels_per_step"] == 2 and prof["dots_per_step"] == 1
    assert prof["cache_sized_copies_per_step"] == 1
    assert prof["cache_copy_mb_per_step"] == round(8 * 8 * 64 * 65 * 4 / 2**20, 1)
    assert decode_profile.step_profile("ENTRY %m {\n}", 1) == {"loop_in_program": False}
