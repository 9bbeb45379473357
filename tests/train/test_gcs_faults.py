"""Storage faults while a checkpoint is written to ``gs://`` (the GCS emulator behind a
fault-injecting proxy on loopback, ``tests/faultproxy.py``): the emulator unreachable for a few
seconds, a 503 on one object, slow uploads, an object refused outright. Each ends in either a
complete checkpoint or none that a resume (or ``ankh.load``) would pick -- never a half one --
the "run" (saves between steps, as ``worker.Run`` makes them) keeps going, and the next save
succeeds.
"""

from __future__ import annotations

import itertools
import time

import jax
import numpy as np
import pytest

import ankh
from ankh import checkpoint as ackpt
from ankh import sharding, storage
from ankh.config import PRESETS
from ankh.training import OptimConfig, Trainer
from tests.faultproxy import FaultProxy

CFG = PRESETS["tiny"].replace(num_layers=1, num_decoder_layers=1)
DATA = "params/ocdbt.process_0/d/"  # the objects holding the weights' bytes (tensorstore)


@pytest.fixture
def proxied(gcs_emulator, monkeypatch):
    """(proxy, bucket URL): every GCS client of this process goes through the proxy."""
    proxy = FaultProxy(gcs_emulator.split("://", 1)[1]).start()
    monkeypatch.setenv(storage.EMULATOR_VAR, proxy.url)
    monkeypatch.setenv(storage.TENSORSTORE_VAR, proxy.url)
    bucket = f"faults-{time.monotonic_ns()}"
    storage.gcs_filesystem().mkdir(bucket)
    yield proxy, f"gs://{bucket}"
    proxy.stop()


@pytest.fixture(scope="module")
def trainer():
    return Trainer(CFG, OptimConfig(total_steps=10), sharding.make_mesh({"data": -1}))


def _states(trainer, n: int) -> dict[int, dict]:
    """Steps 1..n of distinct states (float leaves scaled from one step to the next)."""
    state, out = trainer.init_state(), {}
    for step in range(1, n + 1):
        out[step] = state
        state = jax.tree.map(lambda x: x * 1.01 if x.dtype == np.float32 else x, state)
    return out


def _meta(step: int, state: dict) -> dict:
    rng = np.asarray(state["rng"]).tolist()
    return {"step": step, "rng": rng, "data": [{"position": step}], "model": CFG.to_hf_dict()}


def _train_through(store, steps: int = 20, limit_s: float = 300.0) -> None:
    """What the loop does between steps while a save runs: poll (never block on it), for
    ``steps`` steps and on until the save has ended. The next save must come after it: one
    begun while it still runs would carry its error (Orbax raises it there), and on a busy
    machine a save outlasts any fixed number of steps."""
    end = time.monotonic() + limit_s
    for i in itertools.count():
        store.poll()
        if (i >= steps and not store.mgr.is_saving_in_progress()) or time.monotonic() > end:
            break
        time.sleep(0.1)
    store.poll()


def _faulty_save(trainer, bucket: str, fault) -> tuple[str, dict, object]:
    """Save 1 cleanly, 2 under ``fault()`` (training on meanwhile), 3 after; returns
    (checkpoints root, states, store)."""
    from ankh_platform.train.checkpoints import CheckpointStore

    root, states = f"{bucket}/run/checkpoints", _states(trainer, 3)
    store = CheckpointStore(root, every=1, keep=5)
    store.save(1, states[1], _meta(1, states[1]))
    store.wait()
    fault()
    store.save(2, states[2], _meta(2, states[2]))
    _train_through(store)
    store.save(3, states[3], _meta(3, states[3]))  # the next save: after the fault
    store.close()
    return root, states, store


def _assert_complete_or_none(trainer, root: str, states: dict, bucket: str) -> list[int]:
    """Every step listed is whole and holds what was saved; resume and ``ankh.load`` pick 3."""
    from ankh_platform.train.checkpoints import CheckpointStore

    steps = ackpt.list_steps(root)
    assert {1, 3} <= set(steps) <= {1, 2, 3}, steps
    for step in steps:
        assert ackpt.verify(f"{root}/{step}") is None, step
        got = ankh.load(f"{root}/{step}").flat_params()
        want = dict(ackpt._flatten(jax.tree.map(np.asarray, states[step]["params"])))
        assert all(np.array_equal(got[k], want[k]) for k in want), step
    store = CheckpointStore(root, every=1, keep=5)
    _, meta = store.restore(trainer.abstract_state())
    store.close()
    assert meta["step"] == 3
    return steps


def test_503_on_one_object_is_retried_into_a_complete_checkpoint(proxied, trainer):
    proxy, bucket = proxied
    root, states, store = _faulty_save(trainer, bucket, lambda: proxy.fail(DATA, 503, times=1))
    hit = [r for r in proxy.log if r[2] == 503]
    assert len(hit) == 1 and "checkpoints/2/params/" in hit[0][1], hit
    assert _assert_complete_or_none(trainer, root, states, bucket) == [1, 2, 3]
    assert not store.failed


def test_refused_object_leaves_no_checkpoint_and_the_next_save_succeeds(proxied, trainer):
    """An object the store refuses for good (403: not retried): the save fails, nothing of
    step 2 is left to pick (before this was handled, a manifest was written over the half
    step, so it verified, and the next save raised the old error and stopped the run)."""
    proxy, bucket = proxied
    root, states, store = _faulty_save(trainer, bucket, lambda: proxy.fail(DATA, 403, times=-1))
    assert any(r[2] == 403 for r in proxy.log)
    assert store.failed == {2}
    assert _assert_complete_or_none(trainer, root, states, bucket) == [1, 3]


@pytest.mark.slow
def test_storage_unreachable_for_seconds_during_a_save(proxied, trainer):
    proxy, bucket = proxied
    outage = []
    root, states, _ = _faulty_save(trainer, bucket, lambda: outage.append(proxy.outage(4)))
    outage[0].join()
    _assert_complete_or_none(trainer, root, states, bucket)


@pytest.mark.slow
def test_slow_uploads_finish_while_training_goes_on(proxied, trainer):
    proxy, bucket = proxied
    root, states, _ = _faulty_save(trainer, bucket, lambda: proxy.slow(0.5))
    assert _assert_complete_or_none(trainer, root, states, bucket) == [1, 2, 3]
