"""Continued pretraining: ``model=`` an HF directory (local or gs://) trains *that* network.

In-process runs (``run_local_process``, no Ray) of the tiny preset's shape on the bundled real
UniProt sample. The source is an HF directory written with ``Ankh.save_hf`` from a seeded
random init: what matters here is that the run starts from, and stays near, exactly those
weights -- a fresh init (another seed) is the contrast that must fail the same checks.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

import ankh
from ankh.config import PRESETS
from ankh.tokenizer import AnkhTokenizer
from ankh_platform.core.config import ConfigError, load_config
from ankh_platform.train.config import (
    CONTINUED_PEAK_LR,
    FRESH_PEAK_LR,
    PretrainConfig,
    effective_optim,
)
from ankh_platform.train.job import run_local_process
from tests.train.helpers import VALID, pretrain_args

SOURCE_SEED = 7
FAST = [
    "source.kind=local",
    "data.max_residues=32",
    "checkpoint.async_save=false",
    "source.eval_batches=1",
]


def _args(tmp, name: str, model: str, *overrides: str) -> list[str]:
    """A small in-process run from ``model``; peak_lr left unset unless an override sets it."""
    base = [a for a in pretrain_args(tmp, name, *FAST) if not a.startswith("optim.peak_lr=")]
    return base + [f"model={model}", *overrides]


def _train(tmp, name: str, model: str, *overrides: str) -> dict:
    return run_local_process(load_config(PretrainConfig, None, _args(tmp, name, model, *overrides)))


def _flat(ref: str) -> dict:
    return ankh.load(ref).flat_params()


def _proteins(n: int = 8, crop: int = 60) -> list[str]:
    seqs = pq.read_table(f"{VALID}/shard-00000.parquet", columns=["sequence"]).column("sequence")
    return [s[:crop] for s in seqs.to_pylist()[:n]]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.fixture(scope="module")
def hf_source(tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("src") / "ankh-hf")
    ankh.Ankh.random(PRESETS["tiny"], seed=SOURCE_SEED).save_hf(path)
    return path


def test_lr0_first_checkpoint_equals_source_and_records_it(tmp_path, hf_source):
    summary = _train(tmp_path, "lr0", hf_source, "steps=2", "checkpoint.every=1", "optim.peak_lr=0")
    first = f"{tmp_path}/lr0/checkpoints/1"
    got, want = _flat(first), _flat(hf_source)
    assert set(got) == set(want)
    assert all(np.array_equal(got[k], want[k]) for k in want), "weights moved at LR 0"
    meta = json.loads(open(f"{first}/meta/metadata").read())
    assert meta["step"] == 1  # counted from 0, not from anything the source carries
    assert meta["source"] == {
        "ref": hf_source,
        "kind": "hf",
        "location": hf_source,
        "revision": None,
    }
    assert summary["source"]["kind"] == "hf" and summary["peak_lr"] == 0.0


def test_continued_default_lr_stays_near_source_then_resumes_from_its_own_checkpoint(
    tmp_path, hf_source
):
    summary = _train(tmp_path, "cont", hf_source, "steps=4")
    assert summary["peak_lr"] == CONTINUED_PEAK_LR  # unset -> the continued default
    step4 = f"{tmp_path}/cont/checkpoints/4"
    seqs = _proteins()
    src = ankh.load(hf_source).embed(seqs)
    trained = ankh.load(step4).embed(seqs)
    fresh = ankh.Ankh.random(PRESETS["tiny"], seed=0).embed(seqs)
    assert not np.array_equal(
        _flat(step4)[("shared",)], _flat(hf_source)[("shared",)]
    )  # it trained
    assert _cosines(trained, src).min() > 0.9
    assert _cosines(fresh, src).max() < 0.5  # the bound separates: a random init fails it

    # Resume with the source's weights replaced: the run must continue from its own step 4.
    ankh.Ankh.random(PRESETS["tiny"], seed=SOURCE_SEED + 1).save_hf(hf_source + "-other")
    summary = _train(tmp_path, "cont", hf_source + "-other", "steps=6")
    assert summary["step"] == 6
    events = [json.loads(line) for line in open(f"{tmp_path}/cont/metrics.jsonl")]
    assert [e["step"] for e in events if e.get("event") == "resumed"] == [4]
    p4, p6, other = (
        _flat(step4),
        _flat(f"{tmp_path}/cont/checkpoints/6"),
        _flat(hf_source + "-other"),
    )
    key = ("encoder", "block", 0, "SelfAttention", "k")  # weights ~0.1
    assert np.abs(p6[key] - p4[key]).max() < 0.01  # 2 small steps on from step 4
    assert np.abs(p6[key] - other[key]).max() > 0.1  # not the other source's weights


def test_freeze_encoder_keeps_encoder_bit_identical(tmp_path, hf_source):
    _train(tmp_path, "frz", hf_source, "steps=2", "train.freeze=[encoder]", "optim.peak_lr=0.001")
    got, src = _flat(f"{tmp_path}/frz/checkpoints/2"), _flat(hf_source)
    frozen = [k for k in src if k[0] in ("encoder", "shared")]
    trained = [k for k in src if k[0] in ("decoder", "lm_head")]
    assert frozen and trained
    assert all(np.array_equal(got[k], src[k]) for k in frozen)
    assert sum(not np.array_equal(got[k], src[k]) for k in trained) > len(trained) // 2


def test_gs_source_through_the_emulator(tmp_path, gcs_bucket):
    source = f"{gcs_bucket}/models/ankh-hf"
    ankh.Ankh.random(PRESETS["tiny"], seed=SOURCE_SEED).save_hf(source)
    summary = _train(tmp_path, "gs", source, "steps=1", "optim.peak_lr=0")
    assert summary["source"]["kind"] == "hf" and summary["source"]["location"] == source
    got, want = _flat(f"{tmp_path}/gs/checkpoints/1"), _flat(source)
    assert all(np.array_equal(got[k], want[k]) for k in want)


def test_batches_use_the_source_tokenizer(tmp_path):
    """A 256-token vocabulary (ankh3's size): sentinels count down from 255, not Ankh's 143."""
    from ankh_platform.train.config import resolve_paths
    from ankh_platform.train.worker import Run

    cfg256 = PRESETS["tiny"].replace(vocab_size=256)
    path = str(tmp_path / "v256")
    model = ankh.Ankh.random(cfg256, seed=1)
    model.tokenizer = AnkhTokenizer(vocab_size=256)
    model.save_hf(path)
    cfg = load_config(PretrainConfig, None, _args(tmp_path, "v256", path, "steps=1"))
    run = Run(resolve_paths(cfg), 0, 1, report=None)
    run._setup()
    batch = run.source.next()
    run.source.close()
    assert run.model_cfg.vocab_size == 256
    assert batch["labels"].max() == 255 and batch["input_ids"].max() == 255


def test_peak_lr_default_by_origin_and_explicit_wins():
    cfg = PretrainConfig()
    assert cfg.optim.peak_lr is None
    assert effective_optim(cfg, from_weights=False).peak_lr == FRESH_PEAK_LR
    assert effective_optim(cfg, from_weights=True).peak_lr == CONTINUED_PEAK_LR
    assert effective_optim(cfg, from_weights=True).total_steps == cfg.steps
    set_lr = load_config(PretrainConfig, None, ["optim.peak_lr=0.003"])
    assert effective_optim(set_lr, from_weights=True).peak_lr == 0.003


@pytest.mark.parametrize(
    "freeze, needle",
    [("[encodr]", "valid: encoder, decoder"), ("[encoder,decoder]", "nothing would train")],
)
def test_bad_freeze_is_a_config_error(freeze, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(PretrainConfig, None, [f"train.freeze={freeze}"])


def test_convert_import_refuses_a_preset(tmp_path):
    """``jobs.convert import`` reads weights: a preset name has none (it used to write random ones)."""
    from jobs import convert

    with pytest.raises(ValueError, match="not an HF Ankh directory"):
        convert.main(["import", "--model", "tiny", "--output", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
