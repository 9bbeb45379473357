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
