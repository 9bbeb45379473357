"""``jobs.benchmark learn``: a budget becomes a number of steps of exactly the given config, and
the line reports where that run ended against the unigram entropy and the probe baselines."""

import json
import os

import pytest

from ankh_platform.bench import learn
from ankh_platform.core.config import PRESETS_DIR, ConfigError, load_config
from ankh_platform.train.config import PretrainConfig


def test_plan_steps_fills_what_the_budget_leaves():
    # 80 s of the budget, minus the calibration (10 s) and a start-up as long as its own
    # (10 s - 4 steps x 0.5 s = 8 s): 62 s of 0.5 s steps
    assert learn.plan_steps(100.0, 10.0, 4, 0.5, 0.2) == 124
    assert learn.plan_steps(100.0, 95.0, 4, 0.5, 0.2) == 1  # nothing left: still one step


def test_measured_config_caps_warmup_and_evaluates_four_times():
    cfg = load_config(PretrainConfig, "learn-cpu", [], presets_dir=PRESETS_DIR)
    run = learn.measured_config(cfg, 800, "/tmp/x")
    assert run.steps == 800 and run.output == "/tmp/x"
    assert run.optim.warmup_steps == 80 < cfg.optim.warmup_steps  # 300 in the preset
    assert run.eval_every == run.checkpoint.every == 200 and run.log_every == 50
    assert run.model_overrides == cfg.model_overrides and run.data == cfg.data
    long = learn.measured_config(cfg, 100_000, "/tmp/x")
    assert long.optim.warmup_steps == cfg.optim.warmup_steps  # a cap, never a stretch


def test_report_compares_with_unigram_and_the_best_baseline():
    summary = {
        "val_residue_loss": 2.5,
        "unigram_entropy": 2.9,
        "ss3_q3": 0.55,
        "ss3_q3_onehot": 0.48,
        "ss3_q3_random_init": 0.50,
        "run_dir": "r",
        "last": {"tokens_per_s": 10.0, "mfu": 0.4},
    }
    out = learn.report(summary, 7)
    assert out["steps"] == 7 and out["below_unigram_nats"] == pytest.approx(0.4)
    assert out["ss3_q3_vs_best_baseline"] == pytest.approx(0.05)
    assert "ss8_q8" not in out


def test_learn_benchmark_runs_a_budgeted_pretraining(tmp_path, capsys):
    out = learn.main(
        [
            "--config",
            "tiny",
            "--budget-s",
            "45",
            "--calibrate-steps",
            "4",
            "--output",
            str(tmp_path),
            "source.kind=local",
            "data.max_residues=64",
            "eval.probe_train_chains=40",
            "eval.probe_test_chains=20",
            "eval.probe_steps=20",
            "eval.curves=false",
        ]
    )
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == out
    assert out["benchmark"] == "learn" and out["platform"] == "cpu"
    assert out["calibration_step_s"] > 0 and out["steps"] >= 1
    # The measured run trained exactly the planned steps and checkpointed its last one.
    assert os.path.isdir(os.path.join(out["run_dir"], "checkpoints", str(out["steps"])))
    assert out["below_unigram_nats"] == pytest.approx(
        out["unigram_entropy"] - out["val_residue_loss"], abs=1e-4
    )
    assert 0 < out["ss3_q3"] < 1 and out["ss3_q3_onehot"] > 0 and out["ss3_q3_random_init"] > 0
    # The calibration ran beside it, under its own name, and left the measured run alone.
    assert os.path.isdir(tmp_path / "ankh-tiny-calibrate" / "checkpoints" / "4")


def test_bad_budget_is_refused():
    with pytest.raises(SystemExit):
        learn.main(["--budget-s", "0"])


@pytest.mark.parametrize(
    "argv", [["--max-steps", "-1"], ["--max-steps", "5", "--reference", "none"]]
)
def test_bad_max_steps_is_refused(argv, capsys):
    with pytest.raises(SystemExit):
        learn.main(argv)
    assert "--max-steps" in capsys.readouterr().err


def test_an_output_holding_the_run_is_refused(tmp_path):
    # Same name + output resumes a pretraining run: a benchmark must not silently do that.
    (tmp_path / "ankh-tiny").mkdir()
    with pytest.raises(ConfigError, match="already holds a run"):
        learn.main(["--config", "tiny", "--output", str(tmp_path)])


@pytest.mark.parametrize("preset", ["learn-cpu", "learn-gpu"])
def test_learn_presets_load_with_their_shapes(preset):
    from ankh_platform.train.config import model_shape

    cfg = load_config(PretrainConfig, preset, [], presets_dir=PRESETS_DIR)
    shape = model_shape(cfg)
    assert shape.d_model == cfg.model_overrides["d_model"] and cfg.eval.probe
    assert cfg.source.eval_paths and cfg.data.paths != cfg.source.eval_paths  # held out
