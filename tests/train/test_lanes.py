"""Data lanes (``ankh_platform.train.lanes``): a run's global batches, and its saved data
position, do not depend on how many workers it has -- real batches from the bundled sample."""

from __future__ import annotations

import numpy as np
import pytest

from ankh_platform.data.pipeline import DataConfig
from ankh_platform.train.config import SourceConfig
from ankh_platform.train.lanes import LaneSource, accum_factor, lanes_of, merge_states
from tests.train.helpers import TRAIN, VALID

LANES = 3  # 2 workers: one runs two lanes, the other one lane and a padding slot


def _workers(world: int, kind: str = "local", **data) -> list[LaneSource]:
    cfg = DataConfig(paths=(TRAIN,), rows=2, max_residues=32, prefetch=0, **data)
    src = SourceConfig(kind=kind, eval_paths=(VALID,), eval_batches=2)
    return [LaneSource(cfg, src, r, world, LANES) for r in range(world)]


def _by_lane(w: LaneSource, batch: dict, key: str) -> dict[int, np.ndarray]:
    """A worker's batch split back into its lanes' rows (padding slots checked, dropped)."""
    rows = batch[key].reshape(w.slots, -1, *batch[key].shape[1:])
    if key == "example_ids":
        assert (rows[len(w.lanes) :] == -1).all()  # padding slots hold no example
    return dict(zip(w.lanes, rows))


def _global(workers: list[LaneSource]) -> dict[int, np.ndarray]:
    """One step's global batch, by lane: {lane: example ids of its rows}."""
    out = {}
    for w in workers:
        batch = w.next()
        assert batch["loss_mask"][len(w.lanes) * w.spec.rows :].sum() == 0  # no padding targets
        out |= _by_lane(w, batch, "example_ids")
    return out


def test_lane_assignment_and_micro_batches():
    assert [lanes_of(r, 2, 4) for r in range(2)] == [[0, 2], [1, 3]]
    assert [lanes_of(r, 2, 3) for r in range(2)] == [[0, 2], [1]]
    assert [lanes_of(r, 3, 4) for r in range(3)] == [[0, 3], [1], [2]]
    assert [accum_factor(w, 4) for w in (1, 2, 3, 4)] == [4, 2, 2, 1]


@pytest.mark.parametrize("world", [1, 2])
def test_every_worker_count_trains_on_the_same_global_batches(world):
    full = _workers(LANES)
    other = _workers(world)
    for _ in range(3):
        a, b = _global(full), _global(other)
        assert sorted(a) == sorted(b) == list(range(LANES))
        for lane in a:
            np.testing.assert_array_equal(a[lane], b[lane])
    # Held-out batches too: the same held-out set whatever the worker count.
    for i in range(2):
        a = {k: v for w in full for k, v in _by_lane(w, w.eval_batches()[i], "labels").items()}
        b = {k: v for w in other for k, v in _by_lane(w, w.eval_batches()[i], "labels").items()}
        assert sorted(a) == sorted(b) == list(range(LANES))
        for lane in a:
            np.testing.assert_array_equal(a[lane], b[lane])
    for w in full + other:
        w.close()


def test_a_position_saved_by_three_workers_restores_onto_one_and_two():
    three = _workers(3)
    for _ in range(5):
        _global(three)
    saved = merge_states([w.state() for w in three])
    assert len(saved) == LANES and all(s["position"] == 5 for s in saved)
    expect = _global(three)
    for world in (1, 2):
        resumed = _workers(world)
        for w in resumed:
            w.restore(saved)
        got = _global(resumed)
        for lane in expect:
            np.testing.assert_array_equal(got[lane], expect[lane])
    one = _workers(1)
    with pytest.raises(ValueError, match="data lane positions"):
        one[0].restore(saved[:2])


def test_every_example_once_per_epoch_across_a_change_of_worker_count():
    """Half an epoch on two workers, the rest on one after a restore: each example once."""
    probe = _workers(1)[0]
    n = len(probe.sources[0].train)
    steps = n // (LANES * 2)  # 2 rows per lane: whole global batches of one epoch
    two = _workers(2)
    seen = [ids for _ in range(steps // 2) for ids in _global(two).values()]
    one = _workers(1)
    one[0].restore(merge_states([w.state() for w in two]))
    seen += [ids for _ in range(steps - steps // 2) for ids in _global(one).values()]
    flat = np.concatenate([s[:, 0] for s in seen])  # local source: one sequence per row
    assert len(flat) == len(set(flat.tolist())) == steps * LANES * 2


@pytest.mark.parametrize("kind", ["local", "stream"])
def test_no_held_out_batches_when_eval_batches_is_0(kind):
    """``source.eval_batches=0``: no held-out evaluation, from either source (the stream read
    its whole validation range instead)."""
    cfg = DataConfig(paths=(TRAIN,), rows=2, max_residues=32, prefetch=0)
    src = SourceConfig(kind=kind, eval_paths=(VALID,), eval_batches=0)
    w = LaneSource(cfg, src, 0, 1, 2)
    assert w.eval_batches() == []
    w.close()
