"""The Serve app's parts that need no running app: the shipped Serve config files, ``serve
build`` on the app, the bucket plan the Embedder compiles, and the config's model names.

The app over real HTTP is ``test_serve.py``.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import yaml

from tests.serve.helpers import REPO


def test_serve_config_files_parse():
    from ray.serve.schema import ServeDeploySchema

    from ankh_platform.core.config import from_dict
    from ankh_platform.serve.schema import ServeConfig

    files = sorted((REPO / "cluster").glob("serve-*.yaml"))
    assert len(files) >= 2
    for f in files:
        conf = yaml.safe_load(f.read_text())
        ServeDeploySchema.model_validate(conf)  # what `serve deploy` / `serve run` accept
        (app,) = conf["applications"]
        assert app["import_path"] == "ankh_platform.serve.app:build_app"
        cfg = from_dict(ServeConfig, app.get("args", {}))
        local = conf["http_options"]["host"] == "127.0.0.1"
        assert cfg.auth.enabled is (not local), f  # loopback: off; cluster: bearer token on


def test_serve_build_on_the_app(tmp_path):
    out = tmp_path / "built.yaml"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ray.serve.scripts",
            "build",
            "ankh_platform.serve.app:app",
            "-o",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    conf = yaml.safe_load(out.read_text())
    (app,) = conf["applications"]
    assert app["import_path"] == "ankh_platform.serve.app:app"
    names = {d["name"] for d in app["deployments"]}
    assert names == {"AnkhIngress", "Embedder", "Generator"}


def test_bucket_plan_uses_only_compiled_shapes_and_covers_every_sequence():
    from ankh.batching import SERVE_MIN_LENGTH, BatchPlan, sequence_ladder

    assert sequence_ladder(1024, SERVE_MIN_LENGTH) == [64, 96, 128, 192, 256, 384, 512, 768, 1025]
    plan = BatchPlan([32, 64, 128], batch_tokens=512, growth=2)
    assert plan.rows == {32: [1, 2, 4, 8, 16], 64: [1, 2, 4, 8], 128: [1, 2, 4]}
    rng = np.random.default_rng(0)
    lengths = [int(x) for x in rng.integers(2, 129, size=203)]
    batches = plan.batches(lengths)
    assert sorted(i for idx, _, _ in batches for i in idx) == list(range(len(lengths)))
    for idx, bucket, rows in batches:
        assert (rows, bucket) in plan.shapes() and len(idx) <= rows
        assert all(lengths[i] <= bucket for i in idx)
    # Full batches where a bucket has enough sequences: at most one partial batch per bucket.
    partial = [b for idx, b, rows in batches if len(idx) < plan.rows[b][-1]]
    assert len(partial) <= len(plan.ladder)
    with pytest.raises(ValueError, match="largest padded length 128"):
        plan.length(129)


def test_mux_config_rejects_bad_model_names():
    from ankh_platform.core.config import ConfigError, from_dict
    from ankh_platform.serve.schema import ServeConfig

    cfg = from_dict(ServeConfig, {"checkpoint": "/x/base", "models": {"v2": "gs://b/run"}})
    assert cfg.catalog() == {"base": "/x/base", "v2": "gs://b/run"}
    for bad, words in (
        ({"models": {"has space": "/p"}}, "must match"),
        ({"checkpoint": "/x/base", "models": {"base": "/p"}}, "already the default"),
        ({"models": {"v2": ""}}, "expected a checkpoint path"),
        ({"max_models_per_replica": 0}, ">= 1"),
    ):
        with pytest.raises(ConfigError, match=words):
            from_dict(ServeConfig, bad)
