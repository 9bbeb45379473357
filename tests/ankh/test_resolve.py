"""The model-reference resolver (``ankh.resolve``): each kind of reference, local and gs://,
the pinned checkpoint step, clear errors -- and that the jobs name models through it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import ankh
from ankh import checkpoint as ackpt
from ankh import convert
from ankh.config import PRESETS
from ankh.resolve import resolve
from ankh.tokenizer import AnkhTokenizer

CFG = PRESETS["tiny"].replace(num_layers=1, num_decoder_layers=1)


@pytest.fixture(scope="module")
def model():
    return ankh.Ankh.random(CFG, seed=5)


def _odd_vocab() -> dict[str, int]:
    """A vocabulary that differs from the default (as ankh3's does): "J" becomes <unk>."""
    return dict(AnkhTokenizer(vocab_size=CFG.vocab_size).vocab, J=2)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_preset():
    ref = resolve("tiny")
    assert (ref.kind, ref.location, ref.config) == ("preset", "tiny", PRESETS["tiny"])
    assert ref.load_params() is None  # weights come from a seed
    assert ref.tokenizer.vocab == AnkhTokenizer(vocab_size=PRESETS["tiny"].vocab_size).vocab


def test_hf_directory_with_its_tokenizer(tmp_path, model):
    hf = tmp_path / "hf"
    convert.write_hf_dir(str(hf), model.flat_params(), CFG, _odd_vocab())
    ref = resolve(str(hf))
    assert (ref.kind, ref.location, ref.config) == ("hf", str(hf), CFG)
    assert ref.tokenizer.vocab == _odd_vocab()
    assert _same(ref.load_params(), model.flat_params())
    assert ankh.load(str(hf)).tokenizer.vocab == _odd_vocab()


def test_checkpoint_pinned_to_newest_good_step(tmp_path, model, caplog):
    run = str(tmp_path / "run")
    other = ankh.Ankh.random(CFG, seed=6)
    ackpt.save_model(model, run, step=1)
    step2 = ackpt.save_model(other, run, step=2)
    assert resolve(run).location == step2
    (Path(step2) / ackpt.MANIFEST).unlink()  # step 2's save never finished
    ref = resolve(run)
    assert (ref.kind, ref.config) == ("checkpoint", CFG)
    assert ref.location == str(tmp_path / "run" / "checkpoints" / "1")
    assert len(ref.skipped) == 1 and "did not finish" in ref.skipped[0]
    assert "skipping bad checkpoint" in caplog.text
    assert _same(ref.load_params(), model.flat_params())
    for also in (f"{run}/checkpoints", ref.location):  # the checkpoints dir or the step dir
        assert resolve(also).location == ref.location
    with pytest.raises(ackpt.CheckpointError, match="no usable checkpoint"):
        resolve(step2)


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a preset"):
        resolve(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not an HF directory"):
        resolve(str(tmp_path / "empty"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps({"d_model": 8}))
    with pytest.raises(ValueError, match="config.json is not a usable T5 config"):
        resolve(str(tmp_path / "bad"))


@pytest.mark.timeout(300)
def test_gcs_hf_directory_and_checkpoint(tmp_path, model, gcs_bucket):
    """gs:// references, the HF directory's tokenizer.json included (read through fsspec)."""
    from ankh.storage import gcs_filesystem

    convert.write_hf_dir(str(tmp_path / "hf"), model.flat_params(), CFG, _odd_vocab())
    fs, bucket = gcs_filesystem(), gcs_bucket.removeprefix("gs://")
    for p in (tmp_path / "hf").iterdir():
        fs.put(str(p), f"{bucket}/hf/{p.name}")
    ref = resolve(f"{gcs_bucket}/hf")
    assert (ref.kind, ref.config, ref.location) == ("hf", CFG, f"{gcs_bucket}/hf")
    assert ref.tokenizer.vocab == _odd_vocab()
    assert _same(ref.load_params(), model.flat_params())

    step_dir = ackpt.save_model(model, f"{gcs_bucket}/run")
    ref = resolve(f"{gcs_bucket}/run")
    assert (
        ref.kind == "checkpoint" and ref.location == step_dir == f"{gcs_bucket}/run/checkpoints/0"
    )
    assert _same(ref.load_params(), model.flat_params())

    # The batch-embedding job and evaluation name models through the resolver too.
    from ankh_platform.embed.job import _describe
    from ankh_platform.evaluate.embedders import make_extractor

    assert _describe(f"{gcs_bucket}/hf") == (f"{gcs_bucket}/hf", CFG, _odd_vocab())
    assert _describe(f"{gcs_bucket}/run")[0] == step_dir
    feats = make_extractor(f"{gcs_bucket}/hf")
    assert feats.model.tokenizer.vocab == _odd_vocab() and feats.dim == CFG.d_model
    assert make_extractor(f"random:{gcs_bucket}/run").model.config == CFG
