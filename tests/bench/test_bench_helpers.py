"""Arithmetic of the benchmark helpers (the figures in docs/benchmarks.md are computed by these)."""

import json

import pytest

from ankh_platform.bench.serve import steady_tokens_per_s


def test_steady_rate_excludes_first_wait_and_counts_rounds():
    # Two rounds of 4 requests (100 tokens each) completing at t=10 and t=15: the sustained
    # rate is the second round's 400 tokens over the 5 s between rounds, not 800 / 15 s.
    ok = [(200, 10.0, 100, 10.0 + c * 1e-3, c) for c in range(4)]
    ok += [(200, 5.0, 100, 15.0 + c * 1e-3, c) for c in range(4)]
    assert steady_tokens_per_s(ok) == pytest.approx(400 / 5)
    assert steady_tokens_per_s(ok[:4]) is None  # one reply per client: no sustained rate


def test_embed_benchmark_reports_its_keys(capsys):
    from ankh_platform.bench import embed

    embed.main(
        [
            "--model",
            "tiny",
            "--batch",
            "2",
            "--length",
            "32",
            "--repeats",
            "1",
            "--reference",
            "none",
        ]
    )
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {
        "ours_tokens_per_s",
        "ours_gflops",
        "matmul_peak_gflops",
        "ours_fraction_of_peak",
    } <= set(out)
    assert out["ours_fraction_of_peak"] == pytest.approx(
        out["ours_gflops"] / out["matmul_peak_gflops"]
    )


def test_train_benchmark_reports_its_keys(capsys):
    from ankh_platform.bench import train

    out = train.main(
        [
            "--preset",
            "tiny",
            "--steps",
            "1",
            "--rows",
            "2",
            "--max-residues",
            "32",
            "--matmul-n",
            "128",
        ]
    )
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == out
    assert out["batch_shape"] == {
        "rows": 2,
        "enc_len": 33,
        "dec_len": out["batch_shape"]["dec_len"],
    }
    assert out["mfu"] == pytest.approx(out["achieved_flops_per_s"] / out["matmul_peak_flops_per_s"])
    assert {"tokens_per_s", "step_time_s", "data_wait_frac", "final_loss"} <= set(out)
