"""``gs://`` checkpoints through the production path (Orbax -> tensorstore ``gcs`` kvstore, gcsfs
for JSON/manifests) against the GCS emulator on loopback (``gcs_emulator`` fixture, launched by
``tests/gcs_emulator.py`` which fixes the emulator's object-generation handling).

Proves: saves + manifests land in the bucket; ``ankh.load("gs://...")`` equals the trained
params; a truncated or missing file in the newest ``gs://`` step is named and the previous step
is used (by ``ankh.load`` and by resume, which moves the bad step to ``<run>/corrupt/``); a
pretraining run writing to ``gs://`` is resumed by a second run that continues where it stopped.
"""

from __future__ import annotations

import json
import logging

import jax
import numpy as np
import pytest

import ankh
from ankh import checkpoint as ackpt
from ankh import sharding
from ankh.config import PRESETS
from ankh.training import OptimConfig, Trainer
from tests.train.helpers import pretrain_config

CFG = PRESETS["tiny"].replace(num_layers=1, num_decoder_layers=1)


@pytest.fixture
def gcs(gcs_bucket):
    """(gcsfs filesystem, bucket URL) on the emulator."""
    from ankh.storage import gcs_filesystem

    return gcs_filesystem(), gcs_bucket


def _meta(step: int, state: dict) -> dict:
    return {
        "step": step,
        "rng": np.asarray(state["rng"]).tolist(),
        "data": [{"position": step}],
        "model": CFG.to_hf_dict(),
    }


def _biggest(fs, prefix: str) -> str:
    files = fs.find(prefix, detail=True)
    return max(files, key=lambda p: files[p]["size"])


def _events(fs, run_dir: str) -> list[dict]:
    return [json.loads(l) for l in fs.cat(f"{run_dir}/metrics.jsonl").decode().splitlines()]


@pytest.mark.timeout(300)
def test_store_on_gcs_round_trip_and_bad_steps_fall_back(gcs, caplog):
    from ankh_platform.train.checkpoints import CheckpointStore

    fs, bucket = gcs
    run, root = f"{bucket}/run", f"{bucket}/run/checkpoints"
    trainer = Trainer(CFG, OptimConfig(total_steps=10), sharding.make_mesh({"data": -1}))
    states = {}
    store = CheckpointStore(root, every=1, keep=3)
    state = trainer.init_state()
    for step in (1, 2, 3):  # three different states (float leaves scaled between saves)
        states[step] = jax.tree.map(np.asarray, state["params"])
        store.save(step, state, _meta(step, state))
        state = jax.tree.map(lambda x: x * 1.01 if x.dtype == np.float32 else x, state)
    store.close()
    assert ackpt.list_steps(root) == [1, 2, 3]
    assert all(fs.exists(f"{root[5:]}/{s}/{ackpt.MANIFEST}") for s in (1, 2, 3))
    assert ackpt.verify(f"{root}/3") is None

    # ankh.load from the bucket == the params that were saved (bit-exact).
    got = ankh.load(run).flat_params()
    want = {tuple(k): v for k, v in _flat(states[3])}
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in got)

    # Step 3: truncate its biggest params object; step 2: delete one opt_state object.
    victim3 = _biggest(fs, f"{root[5:]}/3/params")
    fs.pipe(victim3, fs.cat(victim3)[: fs.size(victim3) // 2])
    victim2 = sorted(fs.find(f"{root[5:]}/2/opt_state"))[-1]
    fs.rm(victim2)
    why3, why2 = ackpt.verify(f"{root}/3"), ackpt.verify(f"{root}/2")
    assert "truncated" in why3 and victim3.rsplit("/", 1)[-1] in why3
    assert "missing" in why2 and victim2.rsplit("/", 1)[-1] in why2
    with pytest.raises(ackpt.CheckpointError, match=victim3.rsplit("/", 1)[-1]):
        ankh.load(f"{root}/3")
    with caplog.at_level(logging.WARNING):
        model = ankh.load(run)
    skipped = [
        r.getMessage() for r in caplog.records if "skipping bad checkpoint" in r.getMessage()
    ]
    assert len(skipped) == 2 and f"{root}/3" in skipped[0] and f"{root}/2" in skipped[1]
    assert all(np.array_equal(v, _get(states[1], k)) for k, v in model.flat_params().items())

    # Resume: 3 and 2 are named, moved to <run>/corrupt/ in the bucket, step 1 is restored.
    caplog.clear()
    store = CheckpointStore(root, every=1, keep=3)
    with caplog.at_level(logging.WARNING):
        restored, meta = store.restore(trainer.abstract_state())
    store.close()
    assert meta["step"] == 1 and int(restored["step"]) == 1
    msgs = " ".join(r.getMessage() for r in caplog.records)
    assert f"{root}/3" in msgs and f"{root}/2" in msgs
    assert ackpt.list_steps(root) == [1]
    moved = sorted(fs.ls(f"{run[5:]}/corrupt"))
    assert [p.rsplit("/", 1)[-1].split("-")[0] for p in moved] == ["2", "3"]
    assert fs.exists(f"{moved[1]}/{ackpt.MANIFEST}") and fs.exists(
        f"{moved[1]}/params"
    )  # kept whole
    # The bad steps can be written again (Orbax's cached listing of the bucket is not stale).
    store = CheckpointStore(root, every=1, keep=3)
    store.save(2, restored, _meta(2, restored))
    store.close()
    assert ackpt.list_steps(root) == [1, 2] and ackpt.verify(f"{root}/2") is None
    for a, b in zip(jax.tree.leaves(states[1]), jax.tree.leaves(restored["params"])):
        np.testing.assert_array_equal(a, np.asarray(b))


@pytest.mark.timeout(300)
def test_flipped_byte_on_gcs_is_named_and_skipped(gcs, caplog):
    """A gs:// object rewritten with one bit flipped (same size) fails its CRC32C: named by
    ``verify`` and ``ankh.load``, and ``ankh.load(run)`` uses the step before."""
    from ankh_platform.train.checkpoints import CheckpointStore

    fs, bucket = gcs
    run, root = f"{bucket}/run", f"{bucket}/run/checkpoints"
    trainer = Trainer(CFG, OptimConfig(total_steps=10), sharding.make_mesh({"data": -1}))
    state = trainer.init_state()
    store = CheckpointStore(root, every=1, keep=3)
    for step in (1, 2):
        store.save(step, state, _meta(step, state))
    store.close()
    victim = _biggest(fs, f"{root[5:]}/2/params")
    data = bytearray(fs.cat(victim))
    data[len(data) // 2] ^= 0x10
    fs.pipe(victim, bytes(data))
    name = victim.rsplit("/", 1)[-1]
    why = ackpt.verify(f"{root}/2")
    assert why is not None and name in why and "checksum" in why
    with pytest.raises(ackpt.CheckpointError, match=f"{name}.*checksum"):
        ankh.load(f"{root}/2")
    with caplog.at_level(logging.WARNING):
        model = ankh.load(run)
    assert any(name in r.getMessage() and "checksum" in r.getMessage() for r in caplog.records)
    want = dict(_flat(jax.tree.map(np.asarray, state["params"])))
    assert all(np.array_equal(v, want[k]) for k, v in model.flat_params().items())


def _flat(tree: dict, prefix: tuple = ()) -> list:
    out = []
    for k, v in tree.items():
        out += _flat(v, prefix + (k,)) if isinstance(v, dict) else [(prefix + (k,), v)]
    return out


def _get(tree: dict, key: tuple):
    for k in key:
        tree = tree[k]
    return tree


@pytest.mark.timeout(600)
def test_pretrain_to_gcs_resumes_and_loads(gcs, tmp_path):
    """4 steps to gs://, a second run to 6 continues from gs:// step 4 and equals a straight
    6-step local run; ``ankh.load(gs://run)`` returns exactly those params."""
    from ankh_platform.train.job import run_local_process

    fs, bucket = gcs
    args = (
        "source.kind=local",
        "checkpoint.every=2",
        "checkpoint.keep=5",
        "optim.total_steps=6",
        "source.eval_batches=1",
    )
    first = run_local_process(pretrain_config(f"{bucket}/runs", "r", "steps=4", *args))
    assert first["checkpoint_dir"] == f"{bucket}/runs/r/checkpoints/4"
    assert ackpt.list_steps(f"{bucket}/runs/r/checkpoints") == [2, 4]
    second = run_local_process(pretrain_config(f"{bucket}/runs", "r", "steps=6", *args))
    assert second["step"] == 6
    events = _events(fs, second["run_dir"])
    assert [e["step"] for e in events if e.get("event") == "resumed"] == [4]
    assert [e["step"] for e in events if "loss" in e] == [1, 2, 3, 4, 5, 6]  # continued, no restart
    straight = run_local_process(pretrain_config(tmp_path, "straight", "steps=6", *args))
    a = ankh.load(f"{bucket}/runs/r").flat_params()
    b = ankh.load(straight["checkpoint_dir"]).flat_params()
    assert a.keys() == b.keys()
    worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
    assert worst < 2e-5, f"resumed-from-gs:// run differs from the straight run by {worst}"


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_ray_train_run_on_gcs_falls_back_from_truncated_step(gcs, ray_local, tmp_path):
    """Ray Train ``run`` with ``output=gs://``: a truncated newest step is named, moved to
    ``<run>/corrupt/`` and the second run continues from the previous step to the same params."""
    from ankh_platform.train.job import run, run_local_process

    fs, bucket = gcs
    args = (
        "source.kind=local",
        "checkpoint.every=2",
        "checkpoint.keep=5",
        "optim.total_steps=6",
        "source.eval_batches=1",
        "scale.cpus_per_worker=1",
    )
    first = run(pretrain_config(f"{bucket}/runs", "ray", "steps=4", *args))
    assert first["checkpoint_dir"] == f"{bucket}/runs/ray/checkpoints/4"
    victim = _biggest(fs, f"{bucket[5:]}/runs/ray/checkpoints/4/params")
    fs.pipe(victim, fs.cat(victim)[: fs.size(victim) // 2])
    assert not [e for e in _events(fs, first["run_dir"]) if e.get("event") == "resumed"]
    second = run(pretrain_config(f"{bucket}/runs", "ray", "steps=6", *args))
    assert second["step"] == 6
    # (On this shared machine Ray Train may also restart a worker on its own: more "resumed".)
    # The resume from 2 takes the records of steps 3 and 4 out of metrics.jsonl (lost work).
    events = _events(fs, second["run_dir"])
    resumed = [e["step"] for e in events if e.get("event") == "resumed"]
    assert [e["step"] for e in events if "loss" in e] == [1, 2, 3, 4, 5, 6]
    assert resumed[0] == 2
    assert [
        p.rsplit("/", 1)[-1].split("-")[0] for p in fs.ls(f"{bucket[5:]}/runs/ray/corrupt")
    ] == ["4"]
    straight = run_local_process(pretrain_config(tmp_path, "straight", "steps=6", *args))
    a = ankh.load(f"{bucket}/runs/ray").flat_params()
    b = ankh.load(straight["checkpoint_dir"]).flat_params()
    worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
    assert worst < 2e-5, (
        f"Ray Train run resumed from gs:// differs from the straight run by {worst}"
    )
