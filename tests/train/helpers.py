"""Helpers for the pretraining tests (not a test file): real batches from the bundled sample."""

from __future__ import annotations

import json
from pathlib import Path

from ankh_platform.core import samples

TRAIN = str(samples.bundled_train())
VALID = str(samples.bundled_validation())
# Data-parallel runs (Ray Train workers, any count) vs one process on the same global batches:
# the same math, summed in another order.
DP_ATOL = 2e-5


def local_source(
    rows: int = 4,
    max_residues: int = 32,
    rank: int = 0,
    world: int = 1,
    seed: int = 0,
    eval_batches: int = 2,
):
    from ankh_platform.data.pipeline import DataConfig
    from ankh_platform.train.config import SourceConfig
    from ankh_platform.train.source import make_source

    data = DataConfig(paths=(TRAIN,), rows=rows, max_residues=max_residues, seed=seed, prefetch=0)
    return make_source(
        data,
        SourceConfig(kind="local", eval_paths=(VALID,), eval_batches=eval_batches),
        rank,
        world,
    )


def real_batch(rows: int = 4, max_residues: int = 32, k: int = 0) -> dict:
    """Global batch ``k`` of real UniProt sequences, Ankh-masked, in the data contract format."""
    return local_source(rows, max_residues).batch_at(k)


def pretrain_args(tmp, name: str, *overrides: str) -> list[str]:
    """The dotted overrides of a small test run (as ``jobs.pretrain`` takes them on its argv)."""
    base = [
        f"output={tmp}",
        f"name={name}",
        f"data.paths=[{TRAIN}]",
        f"source.eval_paths=[{VALID}]",
        "data.rows=4",
        "data.max_residues=64",
        "log_every=1",
        "eval_every=0",
        "source.eval_batches=2",
        "optim.warmup_steps=2",
        "optim.peak_lr=0.004",
        "eval.probe=false",
    ]  # the SS3 probe's seconds: only where tested (test_eval_in_training.py)
    if "source.kind=local" not in overrides:  # the stream packs: short rows, small windows
        base += ["data.enc_len=136", "data.window=256"]
    return base + list(overrides)


def pretrain_config(tmp, name: str, *overrides: str):
    from ankh_platform.core.config import load_config
    from ankh_platform.train.config import PretrainConfig

    return load_config(PretrainConfig, None, pretrain_args(tmp, name, *overrides))


def run_events(run_dir) -> list[dict]:
    """Every record of ``<run_dir>/metrics.jsonl``."""
    return [json.loads(l) for l in Path(run_dir, "metrics.jsonl").read_text().splitlines()]


def step_examples(run_dir) -> dict[int, list[int]]:
    """step -> the example ids every rank trained on (``log_example_ids=true``'s
    ``<run>/examples/rank*.jsonl``). A rank records each step once: a resume drops the records
    of the steps it trains again, whatever the worker count before."""
    out: dict[int, list[int]] = {}
    for f in sorted(Path(run_dir, "examples").glob("rank*.jsonl")):
        recs = [json.loads(line) for line in f.read_text().splitlines()]
        steps = [r["step"] for r in recs]
        assert len(steps) == len(set(steps)), f"{f.name} records a step twice: {steps}"
        for r in recs:
            out.setdefault(r["step"], []).extend(r["ids"])
    return out


def assert_same_params(a: str, b: str, atol: float = DP_ATOL) -> None:
    """The checkpoints ``a`` and ``b`` hold the same parameters within ``atol``."""
    import numpy as np

    import ankh

    pa, pb = ankh.load(a).flat_params(), ankh.load(b).flat_params()
    assert pa.keys() == pb.keys()
    worst = max(float(np.max(np.abs(pa[k] - pb[k]))) for k in pa)
    assert worst < atol, f"max |diff| {worst} between {a} and {b}"
