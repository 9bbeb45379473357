"""Feature extractors for evaluation (a checkpoint, a random-init twin, one-hot) and their cache.

Models are named as everywhere else (``ankh.resolve``: preset, HF directory, our checkpoint,
local or gs://) and embedded by ``Ankh.embed`` (the one encoder program and batching policy).

Cache layout: ``<cache_dir>/<checkpoint key>/part-<hash>.parquet``, one row per distinct
sequence (``seq_sha1``, ``length``, ``dim``, ``emb`` = raw float32 ``[length, dim]`` bytes).
Only missing sequences are embedded; each run appends one part. The key covers the checkpoint's
path and its files' sizes and mtimes, so a re-trained checkpoint is never served stale vectors.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ankh.batching import DEFAULT_BATCH_TOKENS
from ankh.probes import CONVBERT_HEADS
from ankh.seeds import derive_seed
from ankh.storage import atomic_write, filesystem
from ankh.tokenizer import NUM_BASE_IDS, AnkhTokenizer

log = logging.getLogger(__name__)
# One column per token id below the sentinels (pad, </s>, unk, the residue letters), padded up
# to a multiple of the ConvBERT probe's heads (its input width must divide by them).
ONEHOT_DIM = -(-NUM_BASE_IDS // CONVBERT_HEADS) * CONVBERT_HEADS


def _sha(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def path_fingerprint(path: str) -> str:
    fs, root = filesystem(path)
    files = fs.find(root, detail=True) if fs.isdir(root) else {root: fs.info(root)}
    parts = [root] + [
        f"{p}:{i.get('size')}:{i.get('mtime') or i.get('updated') or ''}"
        for p, i in sorted(files.items())
    ]
    return _sha("\n".join(parts))[:12]


class FeatureExtractor:
    """``embed(seqs) -> list of [L_i, dim] float32`` per-residue features."""

    name: str
    key: str
    dim: int
    info: dict[str, Any]

    def embed(self, seqs: list[str]) -> list[np.ndarray]:
        raise NotImplementedError


class OneHotFeatures(FeatureExtractor):
    def __init__(self) -> None:
        self.tok = AnkhTokenizer()
        self.name, self.key, self.dim = "onehot", "onehot", ONEHOT_DIM
        self.info = {"kind": "baseline: one-hot residues", "params": 0}

    def embed(self, seqs: list[str]) -> list[np.ndarray]:
        eye = np.eye(ONEHOT_DIM, dtype=np.float32)
        return [eye[self.tok.encode(s, allow_sentinels=False)[:-1]] for s in seqs]


class AnkhFeatures(FeatureExtractor):
    def __init__(
        self,
        model: Any,
        name: str,
        key: str,
        kind: str,
        layer: int | None = None,
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
    ) -> None:
        self.model, self.name, self.key = model, name, key
        self.dim, self.layer, self.batch_tokens = model.config.d_model, layer, batch_tokens
        self.info = {
            "kind": kind,
            "params": int(model.num_params()),
            "d_model": self.dim,
            "encoder_layers": model.config.num_layers,
            "layer": layer,
        }
        if layer is not None:
            self.key += f"-layer{layer}"

    def embed(self, seqs: list[str]) -> list[np.ndarray]:
        return self.model.embed(
            seqs, per_residue=True, batch_tokens=self.batch_tokens, layer=self.layer
        )


def make_extractor(
    spec: str, seed: int = 0, layer: int | None = None, batch_tokens: int = DEFAULT_BATCH_TOKENS
) -> FeatureExtractor:
    """``onehot`` | ``random:<model>`` (same shape, fresh weights) | any model reference."""
    import ankh
    from ankh.resolve import resolve

    if spec == "onehot":
        return OneHotFeatures()
    if spec.startswith("random:"):
        cfg = resolve(spec.split(":", 1)[1]).config  # the shape only: no weights read
        init = derive_seed(seed, "random-init")  # never the preset's own seed-0 weights
        model = ankh.Ankh.random(cfg, seed=init)
        key = f"random-{_sha(repr(cfg))[:10]}-seed{init}"
        return AnkhFeatures(
            model, spec, key, "baseline: random init, same shape", layer, batch_tokens
        )
    ref = resolve(spec)
    model = ankh.load(ref.location)  # the pinned step of a run: the weights the key describes
    if ref.kind == "preset":
        key, kind = f"preset-{spec}-seed0", "preset (random init, seed 0)"
    else:
        key, kind = f"{Path(spec.rstrip('/')).name}-{path_fingerprint(spec)}", "checkpoint"
    return AnkhFeatures(model, spec, key, kind, layer, batch_tokens)


class EmbeddingCache:
    def __init__(self, cache_dir: str | Path | None) -> None:
        self.root = Path(cache_dir) if cache_dir else None

    def _read(self, folder: Path, want: set[str]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for part in sorted(folder.glob("part-*.parquet")):
            t = pq.read_table(part)
            hashes = t.column("seq_sha1").to_pylist()
            rows = [i for i, h in enumerate(hashes) if h in want and h not in out]
            if not rows:
                continue
            sub = t.take(rows).to_pydict()
            for h, n, d, b in zip(sub["seq_sha1"], sub["length"], sub["dim"], sub["emb"]):
                arr = np.frombuffer(b, np.float32)
                if arr.size != n * d:
                    raise ValueError(
                        f"{part}: cached embedding for {h} has {arr.size} values, "
                        f"expected {n}x{d} (corrupt cache; delete {folder})"
                    )
                out[h] = arr.reshape(n, d)
        return out

    def get(self, embedder: FeatureExtractor, seqs: list[str]) -> list[np.ndarray]:
        """Per-residue embeddings of ``seqs`` (in order), computing and storing only the misses."""
        hashes = [_sha(s) for s in seqs]
        folder = self.root / embedder.key if self.root else None
        have = self._read(folder, set(hashes)) if folder and folder.exists() else {}
        todo = sorted({h: s for h, s in zip(hashes, seqs) if h not in have}.items())
        if todo:
            log.info("%s: embedding %d sequences (%d cached)", embedder.name, len(todo), len(have))
            new = embedder.embed([s for _, s in todo])
            for (h, s), e in zip(todo, new):
                if e.shape != (len(s), embedder.dim):
                    raise ValueError(
                        f"{embedder.name}: embedding shape {e.shape} for a "
                        f"{len(s)}-residue sequence"
                    )
                have[h] = np.asarray(e, np.float32)
            if folder:
                self._write(folder, [(h, have[h]) for h, _ in todo])
        return [have[h] for h in hashes]

    @staticmethod
    def _write(folder: Path, rows: list[tuple[str, np.ndarray]]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        table = pa.table(
            {
                "seq_sha1": [h for h, _ in rows],
                "length": pa.array([e.shape[0] for _, e in rows], pa.int32()),
                "dim": pa.array([e.shape[1] for _, e in rows], pa.int32()),
                "emb": pa.array(
                    [np.ascontiguousarray(e, np.float32).tobytes() for _, e in rows], pa.binary()
                ),
            }
        )
        name = f"part-{_sha(''.join(h for h, _ in rows))[:16]}.parquet"
        # atomic: a crashed run never leaves a half-written part
        atomic_write(str(folder / name), lambda tmp: pq.write_table(table, tmp, compression="zstd"))
