"""``jobs.benchmark finetune`` on the tiny preset: both modes measured in their own process."""

import pytest

from jobs import benchmark


@pytest.mark.slow
def test_finetune_bench_reports_both_modes(capsys):
    benchmark.main(
        ["finetune", "--preset", "tiny", "--steps", "1", "--length", "32", "--rows", "2"]
    )
    import json

    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    lora, full = res["modes"]["lora"], res["modes"]["full"]
    assert lora["total_params"] > full["total_params"] == full["trainable_params"]
    assert 0 < lora["trainable_params"] < full["trainable_params"] / 10
    assert res["full_over_lora_step_time"] > 0 and res["lora_over_full_memory"] > 0
