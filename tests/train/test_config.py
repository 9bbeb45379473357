"""The pretraining config: one parse, paths resolved once, no setting that silently does nothing."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ankh_platform.core.config import ConfigError, from_dict, load_config, to_dict
from ankh_platform.train.config import STREAM_ONLY, PretrainConfig, resolve_paths


@pytest.mark.parametrize("field", STREAM_ONLY)
def test_local_source_refuses_the_streams_packing_settings(field):
    default = getattr(PretrainConfig().data, field)
    with pytest.raises(ConfigError, match=rf"data\.{field}=.*source\.kind=local"):
        load_config(PretrainConfig, None, ["source.kind=local", f"data.{field}={default + 8}"])
    # The stream honours it; the local source accepts the untouched default.
    assert (
        getattr(load_config(PretrainConfig, None, [f"data.{field}={default + 8}"]).data, field)
        == default + 8
    )
    load_config(PretrainConfig, None, ["source.kind=local", f"data.{field}={default}"])


@pytest.mark.timeout(120)
def test_cli_names_the_refused_field(repo_root):
    res = subprocess.run(
        [sys.executable, "-m", "jobs.pretrain", "source.kind=local", "data.window=64"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert res.returncode == 2 and "data.window=64" in res.stderr, res.stderr[-2000:]


def test_paths_resolved_once_on_the_driver(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the repository: the bundled default is found from anywhere
    cfg = load_config(PretrainConfig, None, ["output=runs", "source.eval_paths=[gs://b/valid]"])
    out = resolve_paths(cfg)
    assert out.output == str(tmp_path / "runs") and out.run_dir() == f"{tmp_path}/runs/ankh-tiny"
    (train,) = out.data.paths
    assert (
        Path(train).is_absolute() and Path(train).is_dir() and not train.startswith(str(tmp_path))
    )
    assert out.source.eval_paths == ("gs://b/valid",)
    assert resolve_paths(out) == out  # idempotent: nothing left to resolve
    # What a Ray Train worker receives and rebuilds: the same config.
    assert from_dict(PretrainConfig, to_dict(out)) == out
    assert os.getcwd() == str(tmp_path)


def test_a_nested_override_keeps_the_runs_other_defaults():
    # data.rows alone must not reset data.enc_len/max_residues/... to DataConfig's own defaults.
    cfg = load_config(PretrainConfig, None, ["data.rows=16", "optim.peak_lr=0.003"])
    assert cfg.data == dataclasses.replace(PretrainConfig().data, rows=16)
    assert cfg.optim == dataclasses.replace(PretrainConfig().optim, peak_lr=0.003)


def test_an_empty_mapping_override_clears_a_presets_model_overrides(repo_root):
    from ankh_platform.train.config import model_shape

    preset = repo_root / "jobs/configs/pretrain-learn-cpu.yaml"
    shaped = load_config(PretrainConfig, preset, [])
    assert shaped.model_overrides["d_model"] == 128
    # Merging: a non-empty mapping keeps the preset's other keys.
    assert load_config(PretrainConfig, preset, ["model_overrides={d_ff: 512}"]).model_overrides == {
        **shaped.model_overrides,
        "d_ff": 512,
    }
    # Continuing from weights: the shape comes from them, so the preset's overrides must go.
    with pytest.raises(ConfigError, match=r"model_overrides=\{\}"):
        model_shape(load_config(PretrainConfig, preset, ["model=/some/checkpoint"]))
    cleared = load_config(PretrainConfig, preset, ["model=/some/checkpoint", "model_overrides={}"])
    assert cleared.model_overrides == {} and cleared.data == shaped.data  # nothing else dropped
    # A cleared nested group is its defaults again (a dataclass group never loses fields).
    assert load_config(PretrainConfig, preset, ["data={}"]).data == PretrainConfig().data


@pytest.mark.parametrize(
    "overrides, want",
    [
        ([], (1, 1)),
        (["scale.num_workers=4"], (4, 4)),
        (["scale.num_workers=1,2"], (1, 2)),
        (["scale.num_workers=[2, 4]"], (2, 4)),
        (["scale.num_workers=4", "scale.min_workers=2"], (2, 4)),
    ],
)
def test_a_worker_range_is_min_max_and_survives_the_trip_to_the_workers(overrides, want):
    cfg = load_config(PretrainConfig, None, overrides)
    assert cfg.scale.worker_range == want and cfg.scale.num_workers == want[1]
    assert cfg.scale.elastic == (want[0] < want[1])
    assert from_dict(PretrainConfig, to_dict(cfg)).scale == cfg.scale  # what a worker rebuilds


@pytest.mark.parametrize(
    "bad", ["scale.num_workers=2,1", "scale.num_workers=a", "scale.num_workers=0"]
)
def test_a_bad_worker_range_is_a_clear_error(bad):
    with pytest.raises(ConfigError, match=r"scale\.num_workers"):
        load_config(PretrainConfig, None, [bad])


def test_a_worker_range_makes_ray_trains_scaling_elastic():
    from ankh_platform.train.job import scaling_config

    cfg = load_config(
        PretrainConfig,
        None,
        ["scale.num_workers=1,2", "scale.resize_interval_s=5", "scale.resources={host: 1}"],
    )
    sc = scaling_config(cfg.scale)
    assert sc.elasticity_enabled and (sc.min_workers, sc.max_workers) == (1, 2)
    assert sc.elastic_resize_monitor_interval_s == 5
    assert sc.resources_per_worker == {"CPU": 1.0, "host": 1}
    fixed = scaling_config(load_config(PretrainConfig, None, ["scale.num_workers=2"]).scale)
    assert not fixed.elasticity_enabled and fixed.num_workers == 2
