"""Data lanes: what makes a checkpoint independent of how many workers wrote it.

A run has ``lanes`` = ``scale.num_workers`` (the max of its worker range) data lanes, fixed for
its whole life. Lane ``l`` is the source a worker ``l`` of a full-size run would have
(``make_source(..., rank=l, world=lanes)``: the stream's ``l``-th range of every epoch, the local
source's ``l``-th rows of every global batch), and global step ``k`` trains on batch ``k`` of
every lane -- ``data.rows x lanes`` rows, whatever the worker count.

With ``world`` workers, worker ``r`` runs lanes ``r, r + world, ...`` and hands the step their
batches concatenated, padded to ``ceil(lanes / world)`` lanes with all-padding rows (no targets:
the loss is normalised by the global batch's target tokens, so padding changes nothing) when
``world`` does not divide ``lanes``. The trainer accumulates gradients over that many
micro-batches (``accum_factor``), so each device holds the activations of ``data.rows`` rows as
in a full-size run. A checkpoint saves every lane's position (``meta["data"]``, in lane order --
the same list a full-size run saved per rank before lanes existed), and any worker count
restores it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ankh.tokenizer import AnkhTokenizer
from ankh_platform.data.pipeline import DataConfig
from ankh_platform.train.config import SourceConfig
from ankh_platform.train.source import make_source


def lanes_of(rank: int, world: int, lanes: int) -> list[int]:
    """The lanes worker ``rank`` of ``world`` runs (strided: balanced when uneven)."""
    return list(range(rank, lanes, world))


def accum_factor(world: int, lanes: int) -> int:
    """Lane slots per worker = micro-batches each step accumulates (1 in a full-size run)."""
    return -(-lanes // world)


class LaneSource:
    """This worker's lanes behind the single-source interface (``next state restore
    eval_batches close spec``); one lane and one slot is that lane's source, untouched."""

    def __init__(
        self,
        data: DataConfig,
        src: SourceConfig,
        rank: int,
        world: int,
        lanes: int,
        tokenizer: AnkhTokenizer | None = None,
    ):
        if world > lanes:
            raise ValueError(f"{world} workers for {lanes} data lanes (scale.num_workers)")
        self.lanes, self.total = lanes_of(rank, world, lanes), lanes
        self.slots = accum_factor(world, lanes)
        self.sources = [make_source(data, src, lane, lanes, tokenizer) for lane in self.lanes]
        self.spec = self.sources[0].spec  # one lane's batch: data.rows rows

    def _join(self, parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        if len(parts) == 1 and self.slots == 1:
            return parts[0]  # a full-size run: exactly the lane's batch (bit-exact resume)
        pad = [_padding(parts[0], self.spec.pad_id)] * (self.slots - len(parts))
        return {k: np.concatenate([p[k] for p in parts + pad]) for k in parts[0]}

    def next(self) -> dict[str, np.ndarray]:
        return self._join([s.next() for s in self.sources])

    def state(self) -> dict[str, Any]:
        """This worker's lane positions, by lane (``merge_states`` joins every worker's)."""
        return {str(lane): s.state() for lane, s in zip(self.lanes, self.sources)}

    def restore(self, saved: list[dict[str, Any]]) -> None:
        """Restore from the run's saved positions (one per lane, in lane order)."""
        if len(saved) != self.total:
            raise ValueError(
                f"the checkpoint holds {len(saved)} data lane positions but this run has "
                f"{self.total} lanes (scale.num_workers, the max of the range, must not change "
                "within a run)"
            )
        for lane, s in zip(self.lanes, self.sources):
            s.restore(saved[lane])

    def eval_batches(self) -> list[dict[str, np.ndarray]]:
        """Every lane's held-out batches joined like the training ones: the same held-out
        set whatever the worker count."""
        per_lane = [s.eval_batches() for s in self.sources]
        return [self._join(list(parts)) for parts in zip(*per_lane)]

    def close(self) -> None:
        for s in self.sources:
            s.close()


def merge_states(per_worker: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every worker's ``LaneSource.state()`` -> one position per lane, in lane order."""
    by_lane = {int(k): v for st in per_worker for k, v in st.items()}
    if sorted(by_lane) != list(range(len(by_lane))):
        raise ValueError(f"data lanes {sorted(by_lane)} are not 0..n-1")
    return [by_lane[i] for i in range(len(by_lane))]


def _padding(like: dict[str, np.ndarray], pad_id: int) -> dict[str, np.ndarray]:
    """An all-padding lane batch shaped like ``like``: ``ankh.packing.empty_batch``'s values
    (no targets, no segments, no examples)."""
    out = {k: np.zeros_like(v) for k, v in like.items()}
    for k in ("input_ids", "decoder_input_ids", "labels"):
        if k in out:
            out[k][:] = pad_id
    if "example_ids" in out:
        out["example_ids"][:] = -1
    return out
