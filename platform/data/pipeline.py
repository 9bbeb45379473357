"""Streaming training batches from Parquet shards (local or ``gs://``) with Ray Data.

Determinism and resume, by construction:

- an epoch's file order is a permutation seeded by ``(seed, epoch)`` (file-level shuffle);
- the epoch's rows, in that order, are split into ``world`` contiguous, equal ranges; rank
  ``r`` streams its range with Ray Data ``read_parquet`` (order preserved);
- the range is cut into windows of ``window`` examples; a window is cropped/masked (randomness
  from ``(seed, epoch, example_id)``), packed into fixed-shape rows and its rows shuffled
  (seeded local shuffle) -- a pure function of the window's examples;
- the pipeline state is ``(epoch, window, batch)``: a restored stream re-reads from the
  window's first row (skipping whole files by their row counts) and drops the batches already
  consumed, so a resumed run neither repeats nor skips an example.

``example_id`` is an example's global index in the sorted file list (file offset + row), the
same in every epoch and on every worker.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import queue
import threading
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np

from ankh.objective import Objective, ObjectiveConfig
from ankh.packing import PackSpec, build_batch, pack_rows
from ankh.seeds import derive_seed
from ankh.tokenizer import AnkhTokenizer
from ankh_platform.data.shards import ParquetShard, epoch_order, list_shards, rank_range

__all__ = ["BatchStream", "DataConfig", "ParquetShard", "PipelineState", "list_shards"]
__all__ += ["epoch_order", "make_batches", "rank_range"]  # shards' names, imported from here

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    paths: tuple[str, ...] = ("data/uniprot_sample/train",)  # dirs, files or globs; local or gs://
    seed: int = 0
    rows: int = 8  # batch rows per worker
    enc_len: int = 1040  # encoder tokens per row (two 512-residue crops + </s> fit)
    dec_len: int = 0  # decoder tokens per row; 0 = derived from the objective
    max_segments: int = 32  # packed sequences per row
    mask_prob: float = 0.20
    max_residues: int = 512  # random crop length, reseeded every epoch
    full_reconstruction: bool = False
    mean_span: float = 1.0  # 1 = Ankh's 1-gram masking; > 1 = T5 span corruption (ObjectiveConfig)
    # ankh: encoder-decoder de-masking (the paper); mlm: encoder-only masked LM (BERT/ESM-style
    # 80/10/10 of the selected residues: mask token / random residue / kept)
    objective: Literal["ankh", "mlm"] = "ankh"
    shared_mask: bool = False  # ankh: one mask token for every masked residue, not sentinels
    mlm_random: float = 0.1
    mlm_keep: float = 0.1
    window: int = 4096  # examples packed and shuffled together
    shuffle_files: bool = True
    epochs: int = 0  # 0 = endless (epochs roll over)
    read_batch_rows: int = 1024  # rows per Ray Data batch
    prefetch: int = 2  # batches prepared ahead on a background thread (0 = inline)

    def objective_config(self) -> ObjectiveConfig:
        return ObjectiveConfig(
            self.mask_prob,
            self.max_residues,
            self.full_reconstruction,
            self.mean_span,
            self.objective,
            self.shared_mask,
            self.mlm_random,
            self.mlm_keep,
        )

    def pack_spec(self) -> PackSpec:
        dec = self.dec_len
        if dec <= 0:  # decoder tokens per encoder token, plus one </s> per segment: per residue
            # the decoder gets p (1 + 1/m) (masked + a sentinel per run), the encoder
            # 1 - p + p/m (unmasked + a sentinel per run); 1-gram (m = 1): 2p
            p, m = self.mask_prob, self.mean_span
            whole = self.full_reconstruction or self.objective == "mlm"  # as long as the input
            ratio = 1.0 if whole else p * (1 + 1 / m) / (1 - p + p / m)
            dec = max(
                self.objective_config().max_decoder_tokens(),
                8 * math.ceil((ratio * self.enc_len + 8) / 8),
            )
            dec = min(dec, self.enc_len) if whole else dec
        return PackSpec(
            rows=self.rows, enc_len=self.enc_len, dec_len=dec, max_segments=self.max_segments
        )


@dataclasses.dataclass(frozen=True)
class PipelineState:
    """Position after the last consumed batch; JSON-able for checkpoints."""

    epoch: int = 0
    window: int = 0
    batch: int = 0  # batches of ``window`` already consumed
    rank: int = 0
    world: int = 1
    fingerprint: str = ""  # files + settings the position refers to

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PipelineState:
        return cls(**d)


class BatchStream:
    """Iterator of ``(batch, state_after)`` for one worker; see the module docstring."""

    def __init__(
        self,
        cfg: DataConfig,
        rank: int = 0,
        world: int = 1,
        state: PipelineState | dict | None = None,
        tokenizer: AnkhTokenizer | None = None,
    ) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} not in [0, {world})")
        self.cfg, self.rank, self.world = cfg, rank, world
        self.tokenizer = tokenizer or AnkhTokenizer()
        self.objective = Objective(cfg.objective_config(), self.tokenizer)
        self.spec = cfg.pack_spec()
        self.fs, self.shards = list_shards(cfg.paths)
        self.total_rows = sum(s.rows for s in self.shards)
        if self.total_rows < world:
            raise ValueError(f"{self.total_rows} examples cannot feed {world} workers")
        self.fingerprint = self._fingerprint()
        if isinstance(state, dict):
            state = PipelineState.from_dict(state)
        state = state or PipelineState(rank=rank, world=world, fingerprint=self.fingerprint)
        if (state.rank, state.world) != (rank, world):
            raise ValueError(
                f"state was saved by rank {state.rank}/{state.world}, not {rank}/{world}"
            )
        if state.fingerprint and state.fingerprint != self.fingerprint:
            raise ValueError(
                "saved pipeline state refers to other data files or settings; "
                "resume with the same paths, seed, window and batch shape"
            )
        self._state = dataclasses.replace(state, fingerprint=self.fingerprint)

    def _fingerprint(self) -> str:
        c = self.cfg
        key = {
            "files": [(s.path.rsplit("/", 1)[-1], s.rows) for s in self.shards],
            "seed": c.seed,
            "window": c.window,
            "spec": dataclasses.asdict(self.spec),
            "obj": _settings(c.objective_config()),
            "shuffle_files": c.shuffle_files,
            "seeding": "ankh.seeds.derive_seed",
        }  # positions saved under other seeding differ
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]

    # ---- public API ------------------------------------------------------------------------
    def state(self) -> PipelineState:
        """Position after the last batch handed out (save it with the model checkpoint)."""
        return self._state

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for batch, st in self._prefetched():
            self._state = st
            yield batch

    # ---- production ------------------------------------------------------------------------
    def _prefetched(self) -> Iterator[tuple[dict[str, np.ndarray], PipelineState]]:
        if self.cfg.prefetch <= 0:
            yield from self._produce(self._state)
            return
        q: queue.Queue = queue.Queue(self.cfg.prefetch)
        stop = threading.Event()
        done = object()

        def work() -> None:
            try:
                for item in self._produce(self._state):
                    while not stop.is_set():
                        try:
                            q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                q.put(done)
            except BaseException as e:  # re-raised in the consumer
                q.put(e)

        t = threading.Thread(target=work, daemon=True, name="ankh-batches")
        t.start()
        try:
            while True:
                item = q.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()

    def _produce(self, st: PipelineState) -> Iterator[tuple[dict[str, np.ndarray], PipelineState]]:
        epoch, w0, b0 = st.epoch, st.window, st.batch
        while self.cfg.epochs <= 0 or epoch < self.cfg.epochs:
            for w, rows, last in _lookahead(self._windows(epoch, w0)):
                batches = self._pack_window(epoch, w, rows)
                for b in range(b0, len(batches)):
                    # Position after this batch; the end of an epoch is the next one's start.
                    nxt = (
                        (epoch, w, b + 1)
                        if b + 1 < len(batches)
                        else (epoch + 1, 0, 0)
                        if last
                        else (epoch, w + 1, 0)
                    )
                    yield (
                        batches[b],
                        dataclasses.replace(st, epoch=nxt[0], window=nxt[1], batch=nxt[2]),
                    )
                b0 = 0
            epoch, w0, b0 = epoch + 1, 0, 0

    def _windows(
        self, epoch: int, first_window: int
    ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """``(window index, {"sequence", "example_id"})`` for this rank's range of ``epoch``."""
        order = epoch_order(self.shards, self.cfg.seed, epoch, self.cfg.shuffle_files)
        start, end = rank_range(self.total_rows, self.rank, self.world)
        pos = start + first_window * self.cfg.window
        w = first_window
        for seqs, ids in _read_range(self.fs, order, pos, end, self.cfg):
            yield w, {"sequence": seqs, "example_id": ids}
            w += 1

    def _pack_window(
        self, epoch: int, w: int, rows: dict[str, np.ndarray]
    ) -> list[dict[str, np.ndarray]]:
        return make_batches(
            rows["sequence"],
            rows["example_id"],
            self.objective,
            self.spec,
            self.cfg.seed,
            epoch,
            self.tokenizer,
        )


def _settings(oc: ObjectiveConfig) -> dict[str, Any]:
    """The objective's fields for the fingerprint, those at their defaults left out: a setting
    added later leaves the positions saved before it valid."""
    later = ("kind", "shared_mask", "mlm_random", "mlm_keep")
    default = ObjectiveConfig()
    return {
        k: v
        for k, v in dataclasses.asdict(oc).items()
        if k not in later or v != getattr(default, k)
    }


def _lookahead(it: Iterator[tuple[int, Any]]) -> Iterator[tuple[int, Any, bool]]:
    """``(window, rows, is_last)``: knowing the last window lets its state point at the next epoch."""
    prev = None
    for item in it:
        if prev is not None:
            yield (*prev, False)
        prev = item
    if prev is not None:
        yield (*prev, True)


def _read_range(
    fs, order: list[ParquetShard], pos: int, end: int, cfg: DataConfig
) -> Iterator[tuple[list[str], np.ndarray]]:
    """Windows of rows ``[pos, end)`` of the ordered files, read by Ray Data in order."""
    if pos >= end:
        return
    import pyarrow.fs as pafs
    import ray.data

    cum = np.concatenate([[0], np.cumsum([s.rows for s in order])])
    first = int(np.searchsorted(cum, pos, side="right") - 1)
    last = int(np.searchsorted(cum, end, side="left"))  # exclusive file index
    files = order[first:last]
    skip = pos - int(cum[first])
    ds = ray.data.read_parquet(
        [f.path for f in files],
        filesystem=pafs.PyFileSystem(pafs.FSSpecHandler(fs)),
        partitioning=None,
        file_extensions=None,
    ).select_columns(["sequence"])
    ds.context.execution_options.preserve_order = True  # determinism: rows in file order
    # example_id of every row of these files, in stream order.
    ids = np.concatenate([np.arange(f.offset, f.offset + f.rows, dtype=np.int64) for f in files])
    need, cursor = end - pos, 0  # cursor: rows of `files` seen so far
    buf: list[str] = []
    buf_start = skip
    for batch in ds.iter_batches(
        batch_size=cfg.read_batch_rows, batch_format="numpy", prefetch_batches=2
    ):
        seqs = batch["sequence"]
        lo, hi = max(skip - cursor, 0), min(len(seqs), skip + need - cursor)
        cursor += len(seqs)
        if hi > lo:
            buf.extend(seqs[lo:hi].tolist())
        while len(buf) >= cfg.window:
            yield buf[: cfg.window], ids[buf_start : buf_start + cfg.window]
            buf, buf_start = buf[cfg.window :], buf_start + cfg.window
        if cursor >= skip + need:
            break
    if buf:
        yield buf, ids[buf_start : buf_start + len(buf)]
    if buf_start + len(buf) != skip + need:
        raise RuntimeError(
            f"read {buf_start + len(buf) - skip} rows, expected {need}: "
            "files changed while reading?"
        )


def make_batches(
    seqs: list[str],
    example_ids: np.ndarray,
    objective: Objective,
    spec: PackSpec,
    seed: int,
    epoch: int,
    tokenizer: AnkhTokenizer,
) -> list[dict[str, np.ndarray]]:
    """Mask, pack and batch one window of examples (a pure function of its inputs)."""
    encs, tgts = [], []
    for s, ex in zip(seqs, example_ids):
        try:
            residues = tokenizer.encode(s, add_eos=False, allow_sentinels=False)
        except ValueError as e:
            raise ValueError(f"example {int(ex)}: {e}") from None
        if len(residues) == 0:
            raise ValueError(
                f"example {int(ex)}: empty sequence (prepare the data with jobs.prepare)"
            )
        e, t = objective(residues, seed, epoch, int(ex))
        encs.append(e)
        tgts.append(t)
    rows = pack_rows([len(e) for e in encs], [len(t) for t in tgts], spec)
    # Seeded local shuffle: rows of a window in a random (but reproducible) order.
    first = int(example_ids[0]) if len(example_ids) else 0  # names the window
    perm = np.random.default_rng(derive_seed(seed, "window-rows", epoch, first)).permutation(
        len(rows)
    )
    rows = [rows[i] for i in perm]
    return [
        build_batch(rows[i : i + spec.rows], encs, tgts, example_ids, spec)
        for i in range(0, len(rows), spec.rows)
    ]
