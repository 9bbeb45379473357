"""``jobs.benchmark finetune`` on the tiny preset: both modes measured in their own process."""

import pytest

from jobs import benchmark


@pytest.mark.slow
def test_finetune_bench_reports_both_modes(capsys):
    benchmark.main(
        ["finetune", "--preset", "tiny", "--steps", "1", "--length", "32", "--rows", "2"]
        + ["--longest", "0.03", "--max-tokens", "2048"]
    )
    import json

    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    lora, full = res["modes"]["lora"], res["modes"]["full"]
    assert lora["total_params"] > full["total_params"] == full["trainable_params"]
    assert 0 < lora["trainable_params"] < full["trainable_params"] / 10
    assert res["full_over_lora_step_time"] > 0 and res["lora_over_full_memory"] > 0
    assert lora["tokens_per_row"] == full["tokens_per_row"] == 32  # --length tokens, no padding
    # XLA's compiled step: LoRA keeps no weight gradients or moments, so it needs less
    assert 0 < lora["step_program_mb"] < full["step_program_mb"]
    # ... and less work: no weight gradients, no update of the frozen weights
    assert 0 < lora["step_gflop"] < full["step_gflop"] and res["full_over_lora_gflop"] > 1
    # the longest protein in 30 MiB: a fitting rung, LoRA at least as long as full
    fl, ll = full["longest"]["0.03"], lora["longest"]["0.03"]
    assert 0 < fl["residues"] <= ll["residues"] and not fl["capped"]
    assert fl["step_program_mb"] <= 0.03 * 1024
