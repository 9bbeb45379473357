"""Orbax checkpoints: exact round trip, bad checkpoints named and skipped, ankh.load, HF export."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import jax
import numpy as np
import pytest

import ankh
from ankh import checkpoint as ackpt
from ankh import sharding
from ankh.config import PRESETS
from ankh.training import OptimConfig, Trainer
from ankh_platform.train.checkpoints import CheckpointStore

CFG = PRESETS["tiny"].replace(num_layers=1, num_decoder_layers=1)


@pytest.fixture(scope="module")
def trainer():
    return Trainer(CFG, OptimConfig(total_steps=10), sharding.make_mesh({"data": -1}))


def _meta(step: int, state: dict) -> dict:
    return {
        "step": step,
        "rng": np.asarray(state["rng"]).tolist(),
        "data": [{"position": step}],
        "model": CFG.to_hf_dict(),
    }


def _save(store: CheckpointStore, trainer: Trainer, steps: list[int]) -> dict:
    state = trainer.init_state()
    for s in steps:
        store.save(s, state, _meta(s, state))
    store.wait()
    return state


def _truncate_a_file(step_dir: Path) -> Path:
    files = sorted(
        p for p in (step_dir / "params").rglob("*") if p.is_file() and p.stat().st_size > 100
    )
    victim = files[-1]
    with open(victim, "r+b") as fh:
        fh.truncate(victim.stat().st_size // 2)
    return victim


def test_round_trip_is_exact_and_manifest_written(tmp_path, trainer):
    store = CheckpointStore(str(tmp_path / "run" / "checkpoints"), every=1, keep=2)
    state = _save(store, trainer, [1, 2, 3])
    assert ackpt.list_steps(str(tmp_path / "run" / "checkpoints")) == [2, 3]  # keep=2
    assert (tmp_path / "run" / "checkpoints" / "3" / ackpt.MANIFEST).exists()
    assert ackpt.verify(str(tmp_path / "run" / "checkpoints" / "3")) is None
    store.close()
    store = CheckpointStore(str(tmp_path / "run" / "checkpoints"), every=1, keep=2)
    got, meta = store.restore(trainer.abstract_state())
    assert meta["step"] == 3 and meta["data"] == [{"position": 3}]
    assert int(got["step"]) == 3  # the step comes from the checkpoint's meta
    for key in ("params", "opt_state", "rng"):
        for a, b in zip(jax.tree.leaves(state[key]), jax.tree.leaves(got[key])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert jax.tree.structure(state["opt_state"]) == jax.tree.structure(got["opt_state"])
    store.close()


def test_truncated_newest_checkpoint_is_reported_and_skipped(tmp_path, trainer, caplog):
    root = tmp_path / "run" / "checkpoints"
    store = CheckpointStore(str(root), every=1, keep=3)
    _save(store, trainer, [1, 2])
    store.close()
    victim = _truncate_a_file(root / "2")
    why = ackpt.verify(str(root / "2"))
    assert why is not None and victim.name in why and "truncated" in why
    # ankh.load on the run skips it (with a warning) and loads step 1 ...
    with caplog.at_level(logging.WARNING):
        model = ankh.load(str(tmp_path / "run"))
    assert model.config.d_model == CFG.d_model
    assert any(
        "skipping bad checkpoint" in r.message and victim.name in r.message for r in caplog.records
    )
    # ... and on the bad step itself raises an error that names the file.
    with pytest.raises(ackpt.CheckpointError, match=victim.name):
        ankh.load(str(root / "2"))
    # Resume: names the bad checkpoint, moves it aside, continues from step 1.
    caplog.clear()
    store = CheckpointStore(str(root), every=1, keep=3)
    with caplog.at_level(logging.WARNING):
        _, meta = store.restore(trainer.abstract_state())
    assert meta["step"] == 1
    assert any(str(root / "2") in r.getMessage() for r in caplog.records)
    assert ackpt.list_steps(str(root)) == [1]
    assert [p.name.split("-")[0] for p in (tmp_path / "run" / "corrupt").iterdir()] == ["2"]
    store.close()


def _flip_a_byte(step_dir: Path) -> Path:
    """Flip one bit in the middle of the largest array file (same size: only a checksum sees it)."""
    victim = max(
        (p for p in (step_dir / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
    )
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x10
    victim.write_bytes(bytes(data))
    return victim


def test_flipped_byte_is_named_and_resume_falls_back(tmp_path, trainer, caplog):
    root = tmp_path / "run" / "checkpoints"
    store = CheckpointStore(str(root), every=1, keep=3)
    state = _save(store, trainer, [1, 2])
    store.close()
    manifest = json.loads((root / "2" / ackpt.MANIFEST).read_text())
    assert manifest["crc32c"].keys() == manifest["files"].keys()  # every file has a checksum
    victim = _flip_a_byte(root / "2")
    why = ackpt.verify(str(root / "2"))
    assert why is not None and victim.name in why and "checksum" in why
    assert ackpt.verify(str(root / "2"), checksums=False) is None  # the sizes alone cannot tell
    with pytest.raises(ackpt.CheckpointError, match=f"{victim.name}.*checksum"):
        ankh.load(str(root / "2"))
    with caplog.at_level(logging.WARNING):
        model = ankh.load(str(tmp_path / "run"))  # the newest good step: 1
    assert any("checksum" in r.message and victim.name in r.message for r in caplog.records)
    want = {k: np.asarray(v) for k, v in ackpt._flatten(jax.device_get(state["params"]))}
    got = model.flat_params()
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in got)
    # Resume: names the file, moves step 2 aside, restores step 1.
    caplog.clear()
    store = CheckpointStore(str(root), every=1, keep=3)
    with caplog.at_level(logging.WARNING):
        _, meta = store.restore(trainer.abstract_state())
    assert meta["step"] == 1
    assert any(
        victim.name in r.getMessage() and "checksum" in r.getMessage() for r in caplog.records
    )
    assert ackpt.list_steps(str(root)) == [1]
    assert [p.name.split("-")[0] for p in (tmp_path / "run" / "corrupt").iterdir()] == ["2"]
    store.close()


def test_size_only_manifest_still_loads(tmp_path):
    """Checkpoints written before checksums (manifest format 1: sizes only) still verify."""
    step_dir = Path(ackpt.save_model(ankh.Ankh.random(CFG, seed=1), str(tmp_path / "old")))
    manifest = json.loads((step_dir / ackpt.MANIFEST).read_text())
    (step_dir / ackpt.MANIFEST).write_text(json.dumps({"format": 1, "files": manifest["files"]}))
    _flip_a_byte(step_dir)
    assert ackpt.verify(str(step_dir), ackpt.MODEL_ITEMS) is None  # nothing to compare with


def test_missing_shard_and_unfinished_save_are_detected(tmp_path, trainer):
    root = tmp_path / "run" / "checkpoints"
    store = CheckpointStore(str(root), every=1, keep=3)
    _save(store, trainer, [1, 2])
    store.close()
    victim = next(
        p for p in (root / "2" / "opt_state").rglob("*") if p.is_file() and "ocdbt" in str(p)
    )
    victim.unlink()
    assert "missing" in ackpt.verify(str(root / "2"))
    os.remove(root / "1" / ackpt.MANIFEST)  # a crash between the save and its manifest
    assert "did not finish" in ackpt.verify(str(root / "1"))
    with pytest.raises(ackpt.CheckpointError, match="no usable checkpoint"):
        ankh.load(str(tmp_path / "run"))


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError):
        ankh.load(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not an HF directory"):
        ankh.load(str(tmp_path / "empty"))
    with pytest.raises(ackpt.CheckpointError, match="no checkpoints found"):
        ackpt.newest_good(str(tmp_path / "empty"))


def test_export_to_hf_dir_round_trips(tmp_path, trainer):
    store = CheckpointStore(str(tmp_path / "run" / "checkpoints"), every=1, keep=1)
    _save(store, trainer, [5])
    store.close()
    out = str(tmp_path / "hf")
    ankh.load(str(tmp_path / "run")).save_hf(out)  # the newest good step, as jobs.convert exports
    a, b = ankh.load(str(tmp_path / "run")), ankh.load(out)
    assert (Path(out) / "config.json").exists() and (Path(out) / "model.safetensors").exists()
    seqs = ["MKTAYIAKQRQISFVKSHFSRQ", "MSEQ"]
    np.testing.assert_allclose(a.embed(seqs), b.embed(seqs), atol=1e-6)


def test_save_model_round_trips_bit_exactly(tmp_path, monkeypatch):
    model = ankh.Ankh.random(CFG, seed=3)
    monkeypatch.chdir(tmp_path)  # relative paths work too (Orbax itself needs absolute ones)
    step_dir = ackpt.save_model(model, "conv")
    assert step_dir == str(tmp_path / "conv" / "checkpoints" / "0")
    assert ackpt.verify(step_dir, ackpt.MODEL_ITEMS) is None
    back = ankh.load("conv")
    a, b = model.flat_params(), back.flat_params()
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    with pytest.raises(ackpt.CheckpointError, match="already exists"):
        ackpt.save_model(model, str(tmp_path / "conv"))
