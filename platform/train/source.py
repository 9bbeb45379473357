"""Where a training worker's batches come from, and how the stream position is saved/restored.

Two sources behind one small interface (``next() state() restore() eval_batches() spec``):

- ``stream`` (default): the data pipeline's ``BatchStream`` (``ankh_platform.data.pipeline``): Ray Data
  reads this rank's range of the Parquet shards, examples are masked, packed and shuffled per
  window; each rank has its own position, all of them are saved with the checkpoint.
- ``local``: every host reads the (small) Parquet files itself; global batch ``k`` is a pure
  function of ``(seed, k)`` (a seeded permutation per epoch, one sequence per row of
  ``max_residues + 1`` tokens) and host ``r`` takes rows ``[r*b, (r+1)*b)`` of it. Any number of
  hosts sees the *same* global batch, which is what the data-parallel == single-process proof
  needs. No Ray required. Nothing is packed, so the stream's packing settings do not apply
  (``PretrainConfig`` refuses them: ``config.STREAM_ONLY``).

``example_ids`` hold global example indices (sorted-file order, as the data pipeline numbers
them), so exactly-once consumption can be checked from the batches.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import logging
from typing import Any

import numpy as np

from ankh.objective import Objective
from ankh.packing import PackSpec, build_batch, empty_batch
from ankh.seeds import derive_seed
from ankh.storage import read_parquet
from ankh.tokenizer import AnkhTokenizer
from ankh_platform.data.pipeline import BatchStream, DataConfig, list_shards
from ankh_platform.train.config import SourceConfig

log = logging.getLogger(__name__)


class StreamSource:
    """This rank's ``BatchStream`` (Ray Data), restartable from a saved position."""

    def __init__(
        self,
        data: DataConfig,
        src: SourceConfig,
        rank: int,
        world: int,
        tokenizer: AnkhTokenizer | None = None,
    ):
        self.data, self.src, self.rank, self.world = data, src, rank, world
        self.tok = tokenizer
        self.spec = host_spec(data, src)
        import ray.data

        # Per-window Ray Data progress bars would drown the training log.
        ray.data.DataContext.get_current().enable_progress_bars = False
        self._open(None)

    def _open(self, state: dict | None) -> None:
        self.stream = BatchStream(self.data, self.rank, self.world, state=state, tokenizer=self.tok)
        self._it = iter(self.stream)

    def next(self) -> dict[str, np.ndarray]:
        return next(self._it)

    def state(self) -> dict[str, Any]:
        return self.stream.state().to_dict()

    def restore(self, state: dict[str, Any]) -> None:
        self._it.close()
        self._open(state)

    def eval_batches(self) -> list[dict[str, np.ndarray]]:
        """The first ``eval_batches`` batches of this rank's validation range (padded if short);
        none for 0 (as the local source), not the whole range."""
        if self.src.eval_batches <= 0:
            return []
        cfg = dataclasses.replace(
            eval_data(self.data, self.src), paths=self.src.eval_paths, epochs=1, prefetch=0
        )
        out = []
        for b in BatchStream(cfg, self.rank, self.world, tokenizer=self.tok):
            out.append(b)
            if len(out) == self.src.eval_batches:
                break
        # Every process must run the same number of eval steps: pad with all-padding batches.
        return out + [empty_batch(cfg.pack_spec())] * (self.src.eval_batches - len(out))

    def close(self) -> None:
        self._it.close()


class LocalSource:
    """Global-order batches from small Parquet data read on every host (one sequence per row)."""

    def __init__(
        self,
        data: DataConfig,
        src: SourceConfig,
        rank: int,
        world: int,
        tokenizer: AnkhTokenizer | None = None,
    ):
        self.data, self.src, self.rank, self.world = data, src, rank, world
        self.rows = data.rows
        self.tok = tokenizer or AnkhTokenizer()
        self.objective = Objective(data.objective_config(), self.tok)
        self.spec = host_spec(data, src)
        self.train = self._read(data.paths)
        self.position = 0  # global batches consumed
        self._perms: dict[int, np.ndarray] = {}
        self._pool = cf.ThreadPoolExecutor(1)
        self._ahead: dict[int, cf.Future] = {}

    def _read(self, paths: tuple[str, ...]) -> list[np.ndarray]:
        fs, shards = list_shards(paths)
        seqs: list[str] = []
        for s in shards:
            seqs += read_parquet(s.path, ["sequence"], fs).column("sequence").to_pylist()
        return [self.tok.encode(s, add_eos=False, allow_sentinels=False) for s in seqs]

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            rng = np.random.default_rng(derive_seed(self.data.seed, "local-order", epoch))
            self._perms = {epoch: rng.permutation(len(self.train))}
        return self._perms[epoch]

    def _build(
        self,
        residues: list[np.ndarray],
        ids: list[int],
        epochs: list[int],
        objective: Objective | None = None,
        spec: PackSpec | None = None,
    ) -> dict[str, np.ndarray]:
        objective = objective or self.objective
        pairs = [objective(r, self.data.seed, e, i) for r, i, e in zip(residues, ids, epochs)]
        return build_batch(
            [[i] for i in range(len(pairs))],
            [p[0] for p in pairs],
            [p[1] for p in pairs],
            ids,
            spec or self.spec,
        )

    def batch_at(self, k: int) -> dict[str, np.ndarray]:
        """This host's rows of global batch ``k``."""
        n, g_rows = len(self.train), self.rows * self.world
        g = k * g_rows + self.rank * self.rows + np.arange(self.rows)  # global stream indices
        epochs = [int(x) // n for x in g]
        ids = [int(self._perm(e)[int(x) % n]) for x, e in zip(g, epochs)]
        return self._build([self.train[i] for i in ids], ids, epochs)

    def next(self) -> dict[str, np.ndarray]:
        k = self.position
        fut = self._ahead.pop(k, None)
        out = fut.result() if fut is not None else self.batch_at(k)
        self.position = k + 1
        for j in range(k + 1, k + 1 + max(self.data.prefetch, 0)):
            if j not in self._ahead:
                self._ahead[j] = self._pool.submit(self.batch_at, j)
        return out

    def state(self) -> dict[str, Any]:
        return {
            "kind": "local",
            "position": self.position,
            "rows": self.rows,
            "world": self.world,
            "seed": self.data.seed,
        }

    def restore(self, state: dict[str, Any]) -> None:
        want = {"rows": self.rows, "world": self.world, "seed": self.data.seed}
        got = {k: state.get(k) for k in want}
        if got != want:
            raise ValueError(f"saved data position was written with {got}, this run has {want}")
        self.position = int(state["position"])
        self._ahead.clear()

    def eval_batches(self) -> list[dict[str, np.ndarray]]:
        ev = self._read(self.src.eval_paths)
        objective = Objective(eval_data(self.data, self.src).objective_config(), self.tok)
        oc = objective.cfg
        spec = PackSpec(
            rows=self.rows,
            enc_len=oc.max_encoder_tokens(),
            dec_len=oc.max_decoder_tokens(),
            max_segments=1,
        )
        out = []
        for b in range(self.src.eval_batches):
            ids = [
                (b * self.rows * self.world + self.rank * self.rows + r) for r in range(self.rows)
            ]
            if ids[0] >= len(ev):
                out.append(empty_batch(spec))
                continue
            ids = [i % len(ev) for i in ids]
            out.append(self._build([ev[i] for i in ids], ids, [0] * len(ids), objective, spec))
        return out

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def eval_data(data: DataConfig, src: SourceConfig) -> DataConfig:
    """The data settings the held-out batches are built with: the run's, masked at
    ``source.eval_mask_prob`` when set (a fixed held-out objective across runs)."""
    p = src.eval_mask_prob
    data = dataclasses.replace(data, mask_prob=p) if p > 0 else data
    # mlm: every selected held-out residue is the mask token (no random or kept ones), so the
    # loss is on residues the model cannot see, as in the de-masking objective
    return dataclasses.replace(data, mlm_random=0.0, mlm_keep=0.0)


def host_spec(data: DataConfig, src: SourceConfig) -> PackSpec:
    """The shape of one host's batch: the stream's packed rows, or (local source) one sequence
    per row of ``data.max_residues`` + 1 tokens, its targets as long as the objective makes
    them."""
    if src.kind == "stream":
        return data.pack_spec()
    oc = data.objective_config()
    return PackSpec(
        rows=data.rows,
        enc_len=oc.max_encoder_tokens(),
        dec_len=oc.max_decoder_tokens(),
        max_segments=1,
    )


def make_source(
    data: DataConfig,
    src: SourceConfig,
    rank: int,
    world: int,
    tokenizer: AnkhTokenizer | None = None,
) -> StreamSource | LocalSource:
    """This rank's source; paths are used as given (``config.resolve_paths`` made them absolute).
    ``tokenizer``: the trained model's (sentinel ids follow its vocabulary; default Ankh's)."""
    return (StreamSource if src.kind == "stream" else LocalSource)(
        data, src, rank, world, tokenizer
    )
