"""The sweep spec: the shipped presets parse and every trial solves; bad specs are refused with
errors that name the problem; trials carry the earlier winners; results files from a plan."""

from __future__ import annotations

import csv
import json
import math

import pytest

from ankh.config import PRESETS
from ankh_platform.ablate import results
from ankh_platform.ablate.params import param_count, within
from ankh_platform.ablate.spec import AblateConfig, model_config, plan_group, validate
from ankh_platform.core.config import PRESETS_DIR, ConfigError, load_config
from jobs import ablate as job

SPLIT = (
    "[{name: split, variable: model_overrides, solve: d_ff, values: "
    "[{num_layers: 2, num_decoder_layers: 2}, {num_layers: 3, num_decoder_layers: 1}]}]"
)


def spec(*overrides: str, config: str | None = "smoke") -> AblateConfig:
    return load_config(AblateConfig, config, list(overrides), presets_dir=PRESETS_DIR)


def test_smoke_preset_plans_four_tiny_trials_in_two_groups():
    s = spec()
    groups = validate(s)
    assert len(groups) >= 2 and sum(map(len, groups)) >= 4
    target = param_count(PRESETS["tiny"])
    for trial in (t for g in groups for t in g):
        assert within(trial.params, target, 0.02) and trial.params == param_count(
            model_config(trial.config)
        )
        assert trial.config.steps == s.budget.steps and trial.config.seed == 0
        assert trial.config.source.kind == "local" and trial.config.model == "tiny"
    split = groups[1]
    assert [t.config.model_overrides["num_layers"] for t in split] == [2, 3]
    assert (
        split[1].config.model_overrides["d_ff"] % 8 == 0
        and split[1].config.model_overrides["d_ff"] != 128
    )


def test_paper_preset_parses_and_every_trial_solves_at_base_scale():
    s = spec(config="paper")
    groups = validate(s)  # under every possible earlier winner, too
    names = [g.name for g in s.groups]
    assert {
        "masking-probability",
        "encoder-decoder-split",
        "depth-vs-width",
        "activation",
        "relative-position",
        "dataset",
    } <= set(names)
    target = param_count(PRESETS["base"])
    steps = groups[0][0].config.steps
    assert steps == math.ceil(s.budget.tokens / (32 * 4 * 1040))  # tokens -> steps, 4 TPU hosts
    for trial in (t for g in groups for t in g):
        assert within(trial.params, target, 0.02), (trial.id, trial.params)
        assert trial.config.steps == steps and trial.config.scale.use_tpu
    relu = next(t for t in groups[names.index("activation")] if t.value["dense_act_fn"] == "relu")
    assert relu.config.model_overrides["d_ff"] > 3072  # no gate: a wider FFN keeps the size


def test_later_groups_carry_the_winner_and_add_to_its_model_changes():
    s = spec()
    first = plan_group(s, 0, {})
    second = plan_group(s, 1, first[1].changes)
    assert all(t.config.data.mask_prob == 0.30 for t in second)
    # a winner's model changes survive a later model group that sets other fields
    s2 = spec(
        "groups=" + SPLIT[:-1] + ", {name: act, variable: model_overrides, solve: d_ff, "
        "values: [{dense_act_fn: relu, is_gated_act: false}, {dense_act_fn: silu}]}]"
    )
    split = plan_group(s2, 0, {})
    act = plan_group(s2, 1, split[1].changes)
    assert all(t.config.model_overrides["num_layers"] == 3 for t in act)
    assert all(within(t.params, param_count(PRESETS["tiny"]), 0.02) for t in act)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["groups=[{name: a, variable: data.mask_probb, values: [0.1, 0.2]}]"], "data.mask_probb"),
        (["groups=[{name: a, variable: seed, values: [0, 1]}]"], "seed is fixed"),
        (["groups=[{name: a, variable: data.mask_prob, values: [0.1]}]"], "at least two"),
        (["groups=[{name: a, variable: data.mask_prob, values: [0.1, 0.1]}]"], "repeated values"),
        (["groups=[]"], "at least one group"),
        (["select_by.metric=val_acc"], "not among metrics"),
        (["budget.tokens=1000"], "exactly one of steps and tokens"),
        (
            ["groups=[{name: a, variable: model_overrides.num_layers, values: [2, 6]}]"],
            r"\+.*%.*name a dimension to `solve`",
        ),
        (
            [
                "groups=[{name: a, variable: model_overrides.num_layers, values: [2, 40], solve: d_ff}]"
            ],
            r"num_layers=40: d_ff=8 gives",
        ),
        (
            ["groups=[{name: a, variable: model_overrides.d_ff, values: [64, 96], solve: d_ff}]"],
            "is the variable itself",
        ),
        (
            ["groups=[{name: a, variable: model_overrides.d_fff, values: [64, 96]}]"],
            "unknown AnkhConfig field",
        ),
        (["base.model=/some/checkpoint", "groups=" + SPLIT], "needs a preset"),
        (["base.eval.probe=false"], "ss3_q3 but base.eval.probe is false"),
        (
            ["metrics=[val_residue_loss, ss3_q3, ss8_q8]"],
            r"ss8_q8 but base.eval.probe_tasks is \[ss3\].*set base.eval.probe_tasks: \[ss3, ss8\]",
        ),
        (
            [
                "metrics=[val_residue_loss, ss8_q8]",
                "select_by.metric=ss8_q8",
                "base.eval.probe_tasks=[ss3]",
            ],
            r"ss8_q8 but base.eval.probe_tasks is \[ss3\]",
        ),
        (
            [
                "metrics=[val_residue_loss, ss8_q8_onehot]",
                "select_by.metric=val_residue_loss",
                "base.eval.probe_tasks=[ss3, ss8]",
            ],
            "ss8_q8_onehot but base.eval.baselines is false",
        ),
    ],
)
def test_bad_specs_are_refused_naming_the_problem(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(spec(*overrides))


def test_cli_flags_and_overrides_reach_the_spec():
    s, args = job.parse(
        [
            "--config",
            "smoke",
            "--max-concurrent-trials",
            "2",
            "--name",
            "x",
            "budget.steps=7",
            "base.data.rows=4",
        ]
    )
    assert (s.max_concurrent_trials, s.name, s.budget.steps) == (2, "x", 7)
    assert plan_group(s, 0, {})[0].config.data.rows == 4 and args.address is None


def test_results_files_from_a_plan(tmp_path):
    s = spec()
    done = []
    for k in range(2):
        trials = plan_group(
            s,
            k,
            done[-1]["trials"][done[-1]["winner"]].changes if done else {},
            str(tmp_path / "runs"),
        )
        metrics = [
            {"val_residue_loss": 3.0 - 0.1 * i, "val_loss": 2.5, "ss3_q3": 0.5 + 0.01 * i}
            for i in range(len(trials))
        ]
        done.append({"trials": trials, "metrics": metrics, "winner": 1, "run_of": {}})
    paths = results.write_all(str(tmp_path), s, done)
    rows = list(csv.DictReader(open(paths["csv"])))
    assert len(rows) == 4 and {
        "trial",
        "group",
        "variable",
        "value",
        "params",
        "eval_loss",
        "ss3_q3",
        "selected",
    } <= set(rows[0])
    assert [r["selected"] for r in rows] == ["False", "True", "False", "True"]
    md = open(paths["markdown"]).read()
    assert md.count("**winner**") == 2 and "## 1. enc-dec-split" in md
    data = json.load(open(paths["json"]))
    assert data["groups"][1]["trials"][0]["config"]["data"]["mask_prob"] == 0.3
    assert all(
        (tmp_path / p).stat().st_size > 1000 for p in ("group-0.png", "group-1.png", "curves.png")
    )


def test_results_carry_an_extra_probe_metric(tmp_path):
    """A spec that lists ss8_q8 (its base probing ss8) validates, selects by it, and every
    results file carries it after the fixed columns."""
    s = spec(
        "metrics=[val_residue_loss, val_loss, ss3_q3, ss8_q8]",
        "select_by.metric=ss8_q8",
        "base.eval.probe_tasks=[ss3, ss8]",
    )
    groups = validate(s)
    assert groups[0][0].config.eval.probe_tasks == ("ss3", "ss8") and s.select_by.best() == "max"
    trials = plan_group(s, 0, {}, str(tmp_path / "runs"))
    metrics = [
        {"val_residue_loss": 3.0, "val_loss": 2.5, "ss3_q3": 0.5, "ss8_q8": 0.31 + 0.1 * i}
        for i in range(len(trials))
    ]
    paths = results.write_all(
        str(tmp_path), s, [{"trials": trials, "metrics": metrics, "winner": 1}]
    )
    reader = csv.DictReader(open(paths["csv"]))
    assert reader.fieldnames == [*results.COLUMNS, "ss8_q8"]
    assert [float(r["ss8_q8"]) for r in reader] == pytest.approx([0.31, 0.41])
    md = open(paths["markdown"]).read()
    assert "| ss3_q3 | ss8_q8 | |" in md and "| 0.5000 | 0.4100 | **winner** |" in md
    data = json.load(open(paths["json"]))
    assert data["groups"][0]["trials"][1]["metrics"]["ss8_q8"] == pytest.approx(0.41)


def test_winner_selection_and_repeated_runs():
    from ankh_platform.ablate.sweep import run_key, select

    s = spec()
    m = [{"ss3_q3": math.nan}, {"ss3_q3": 0.4}, {"ss3_q3": 0.6}, {"ss3_q3": 0.6}]
    assert select(s, m) == 2  # max; NaN never wins; a tie goes to the earlier value
    assert (
        select(
            spec("select_by.metric=val_loss", "select_by.mode="),
            [{"val_loss": 2.0}, {"val_loss": 1.5}],
        )
        == 1
    )  # a loss: min
    first = plan_group(s, 0, {})
    second = plan_group(s, 1, first[1].changes)
    # the split group's first value is the winner so far (d_ff spelled out): one run, not two
    assert run_key(second[0]) == run_key(first[1]) != run_key(second[1])
    assert run_key(first[0]) != run_key(first[1])


def test_mask_cpu_study_plans_learn_cpu_trials_and_warns_about_unseen_sentinels(caplog):
    """The real small study's spec (docs/ablation.md): the learn-cpu shape, one trial per masking
    probability, every trial scored at the same held-out rate -- and the trial trained below
    that rate is named at planning time, since its model never sees the sentinel ids used."""
    import logging

    from ankh_platform.train.config import PretrainConfig, model_shape

    learn = load_config(PretrainConfig, "learn-cpu", [], presets_dir=PRESETS_DIR)
    with caplog.at_level(logging.WARNING, logger="ankh_platform.ablate.spec"):
        (group,) = validate(spec(config="mask-cpu"))
    assert [t.config.data.mask_prob for t in group] == [0.10, 0.15, 0.20, 0.30]
    for t in group:
        assert model_shape(t.config) == model_shape(learn) and t.config.steps == 2000
        assert t.config.source.eval_mask_prob == 0.15 and t.config.data.paths == learn.data.paths
    warned = [r.getMessage() for r in caplog.records if "sentinel" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("trial g0-mask-prob-0")


def test_objective_is_an_ablation_variable():
    """Issue 29's arms as one group: the sentinel objective, one shared mask token, encoder-only
    MLM -- the same network (the same parameter count) and budget; a combination the objective
    refuses (mlm with span masking) is a ConfigError before anything trains."""
    (group,) = validate(spec(config="objective-cpu"))
    got = [(t.config.data.objective, t.config.data.shared_mask) for t in group]
    assert got == [("ankh", False), ("ankh", True), ("mlm", False)]
    assert len({t.params for t in group}) == 1 and len({t.config.steps for t in group}) == 1
    assert all(t.config.source.eval_mask_prob == 0.15 for t in group)
    one = "groups=[{name: o, variable: data.objective, values: [ankh, mlm]}]"
    assert [t.config.data.objective for t in plan_group(spec(one), 0, {})] == ["ankh", "mlm"]
    with pytest.raises(ConfigError, match="mlm"):
        validate(spec(one, "base.data.mean_span=3.0"))
