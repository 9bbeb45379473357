"""Helpers for the pretraining tests (not a test file): real batches from the bundled sample."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TRAIN = str(REPO / "data" / "uniprot_sample" / "train")
VALID = str(REPO / "data" / "uniprot_sample" / "validation")


def local_source(rows: int = 4, max_residues: int = 32, rank: int = 0, world: int = 1, seed: int = 0,
                 eval_batches: int = 2):
    from ankh_platform.data.pipeline import DataConfig
    from ankh_platform.train.source import SourceConfig, make_source

    data = DataConfig(paths=(TRAIN,), rows=rows, max_residues=max_residues, seed=seed, prefetch=0)
    return make_source(data, SourceConfig(kind="local", eval_paths=(VALID,), eval_batches=eval_batches), rank, world)


def real_batch(rows: int = 4, max_residues: int = 32, k: int = 0) -> dict:
    """Global batch ``k`` of real UniProt sequences, Ankh-masked, in the data contract format."""
    return local_source(rows, max_residues).batch_at(k)


def pretrain_config(tmp, name: str, *overrides: str):
    from ankh_platform.core.config import load_config
    from ankh_platform.train.job import PretrainConfig

    base = [f"output={tmp}", f"name={name}", f"data.paths=[{TRAIN}]", f"source.eval_paths=[{VALID}]",
            "data.rows=4", "data.enc_len=136", "data.max_residues=64", "data.window=256",
            "log_every=1", "eval_every=0", "source.eval_batches=2", "optim.warmup_steps=2",
            "optim.peak_lr=0.004"]
    return load_config(PretrainConfig, None, base + list(overrides))
