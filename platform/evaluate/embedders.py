"""Embedders for evaluation (a checkpoint, a random-init twin, one-hot) and their Parquet cache.

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

log = logging.getLogger(__name__)
ONEHOT_DIM = 28  # token ids 0..27 (pad, </s>, unk, 25 residue letters); divisible by 4 heads


def _sha(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def path_fingerprint(path: str) -> str:
    import fsspec

    fs, root = fsspec.core.url_to_fs(path)
    files = fs.find(root, detail=True) if fs.isdir(root) else {root: fs.info(root)}
    parts = [root] + [f"{p}:{i.get('size')}:{i.get('mtime') or i.get('updated') or ''}"
                      for p, i in sorted(files.items())]
    return _sha("\n".join(parts))[:12]


class Embedder:
    """``embed(seqs) -> list of [L_i, dim] float32`` per-residue embeddings."""

    name: str
    key: str
    dim: int
    info: dict[str, Any]

    def embed(self, seqs: list[str]) -> list[np.ndarray]:
        raise NotImplementedError


class OneHotEmbedder(Embedder):
    def __init__(self) -> None:
        from ankh.tokenizer import AnkhTokenizer

        self.tok = AnkhTokenizer()
        self.name, self.key, self.dim = "onehot", "onehot", ONEHOT_DIM
        self.info = {"kind": "baseline: one-hot residues", "params": 0}

    def embed(self, seqs: list[str]) -> list[np.ndarray]:
        eye = np.eye(ONEHOT_DIM, dtype=np.float32)
        return [eye[self.tok.encode(s, allow_sentinels=False)[:-1]] for s in seqs]


class AnkhEmbedder(Embedder):
    def __init__(self, model: Any, name: str, key: str, kind: str, layer: int | None = None,
                 batch_tokens: int = 4096) -> None:
        self.model, self.name, self.key = model, name, key
        self.dim, self.layer, self.batch_tokens = model.config.d_model, layer, batch_tokens
        self.info = {"kind": kind, "params": int(model.num_params()), "d_model": self.dim,
                     "encoder_layers": model.config.num_layers, "layer": layer}
        if layer is not None:
            self.key += f"-layer{layer}"

    def embed(self, seqs: list[str]) -> list[np.ndarray]:
        return self.model.embed(seqs, per_residue=True, batch_tokens=self.batch_tokens, layer=self.layer)


def make_embedder(spec: str, seed: int = 0, layer: int | None = None,
                  batch_tokens: int = 4096) -> Embedder:
    """``onehot`` | ``random:<preset|checkpoint>`` (same shape, fresh weights) | preset | path."""
    import ankh
    from ankh.config import PRESETS

    if spec == "onehot":
        return OneHotEmbedder()
    if spec.startswith("random:"):
        base = spec.split(":", 1)[1]
        cfg = PRESETS[base] if base in PRESETS else ankh.load(base).config
        model = ankh.Ankh.random(cfg, seed=seed + 1)  # seed+1: never the preset's own seed-0 weights
        key = f"random-{_sha(repr(cfg))[:10]}-seed{seed + 1}"
        return AnkhEmbedder(model, spec, key, "baseline: random init, same shape", layer, batch_tokens)
    model = ankh.load(spec)
    if spec in PRESETS:
        key, kind = f"preset-{spec}-seed0", "preset (random init, seed 0)"
    else:
        key, kind = f"{Path(spec.rstrip('/')).name}-{path_fingerprint(spec)}", "checkpoint"
    return AnkhEmbedder(model, spec, key, kind, layer, batch_tokens)


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
                    raise ValueError(f"{part}: cached embedding for {h} has {arr.size} values, "
                                     f"expected {n}x{d} (corrupt cache; delete {folder})")
                out[h] = arr.reshape(n, d)
        return out

    def get(self, embedder: Embedder, seqs: list[str]) -> list[np.ndarray]:
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
                    raise ValueError(f"{embedder.name}: embedding shape {e.shape} for a "
                                     f"{len(s)}-residue sequence")
                have[h] = np.asarray(e, np.float32)
            if folder:
                self._write(folder, [(h, have[h]) for h, _ in todo])
        return [have[h] for h in hashes]

    @staticmethod
    def _write(folder: Path, rows: list[tuple[str, np.ndarray]]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        table = pa.table({
            "seq_sha1": [h for h, _ in rows],
            "length": pa.array([e.shape[0] for _, e in rows], pa.int32()),
            "dim": pa.array([e.shape[1] for _, e in rows], pa.int32()),
            "emb": pa.array([np.ascontiguousarray(e, np.float32).tobytes() for _, e in rows], pa.binary()),
        })
        name = f"part-{_sha(''.join(h for h, _ in rows))[:16]}.parquet"
        tmp = folder / f".{name}.tmp"
        pq.write_table(table, tmp, compression="zstd")
        tmp.rename(folder / name)  # atomic: a crashed run never leaves a half-written part
