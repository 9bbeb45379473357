"""Pretraining checkpoints (Orbax) without Ray: find, verify, read config + parameters, save.

This module reads and writes parameters only (flat ``{state path: array}`` dicts and the
model config); ``ankh.resolve`` picks the step to load and ``ankh.load`` builds the model.

Layout written by ``ankh_platform.train.checkpoints`` (local path or ``gs://``)::

    <run>/checkpoints/<step>/params/      Orbax pytree: the model parameters (float32)
    <run>/checkpoints/<step>/opt_state/   Orbax pytree: optimizer state
    <run>/checkpoints/<step>/meta/        JSON: step, rng, data pipeline position, model config
    <run>/checkpoints/<step>/ankh_manifest.json   every file's size and CRC32C, written once the save is final

The manifest is how a truncated file, a missing shard, a crash during a save or a flipped bit
(bit rot, a file changed after the save) is detected: Orbax itself notices only some of these,
and then with an opaque tensorstore error -- or, for a flipped bit in a weight, not at all.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
from typing import Any

import jax
import numpy as np
from flax import nnx

from ankh import storage
from ankh.config import AnkhConfig
from ankh.model import AnkhModel

log = logging.getLogger(__name__)

MANIFEST = "ankh_manifest.json"
CHECKPOINTS = "checkpoints"
ITEMS = ("params", "opt_state", "meta")
MODEL_ITEMS = ("params", "meta")
_STEP = re.compile(r"^\d+$")


class CheckpointError(ValueError):
    """A checkpoint directory that is missing, incomplete or corrupt (the message says which)."""


def _listing(fs: Any, root: str) -> dict[str, dict]:
    """{path relative to ``root``: fsspec info} of every file but the manifest (one listing)."""
    out = {}
    for p, info in fs.find(root, detail=True, withdirs=False).items():
        rel = (
            p[len(root) :].lstrip("/")
            if p.startswith(root)
            else p.split(root.lstrip("/"), 1)[-1].lstrip("/")
        )
        if rel != MANIFEST:
            out[rel] = info
    return out


def _crc32c(fs: Any, path: str, info: dict, chunk: int = 8 << 20) -> str:
    """CRC32C of one file as 8 hex digits: the object store's own when its listing ``info``
    carries one (GCS does, so nothing is downloaded), else streamed in ``chunk``-sized reads
    (hardware CRC32C)."""
    import google_crc32c  # gcsfs's dependency; the C (SSE4.2/ARMv8) implementation

    stored = info.get("crc32c") if not storage.is_local(fs) else None
    if stored:  # GCS: base64 of the 4 big-endian bytes
        return base64.b64decode(stored).hex()
    crc = google_crc32c.Checksum()
    with fs.open(path, "rb") as fh:
        while block := fh.read(chunk):
            crc.update(block)
    return crc.hexdigest().decode()


def write_manifest(step_dir: str) -> None:
    """Record every file of a finished checkpoint with its size and CRC32C (call once the save
    is final)."""
    fs, root = storage.filesystem(step_dir)
    listing = _listing(fs, root)
    files = {rel: int(info.get("size") or 0) for rel, info in sorted(listing.items())}
    crcs = {rel: _crc32c(fs, f"{root}/{rel}", info) for rel, info in sorted(listing.items())}
    with fs.open(f"{root}/{MANIFEST}", "w") as fh:
        json.dump({"format": 2, "files": files, "crc32c": crcs}, fh)


def verify(step_dir: str, items: tuple[str, ...] = ITEMS, checksums: bool = True) -> str | None:
    """None if the checkpoint is complete and intact, else the reason it is not (naming the
    file). Sizes are checked for every file; with ``checksums``, the CRC32C of every file a
    load of ``items`` reads (a model load skips ``opt_state/``). Format-1 manifests (sizes only)
    are checked for sizes."""
    fs, root = storage.filesystem(step_dir)
    if not fs.exists(root):
        return f"{step_dir} does not exist"
    for item in items:
        if not fs.exists(f"{root}/{item}"):
            return f"{step_dir} has no {item}/ (the save did not finish)"
    if not fs.exists(f"{root}/{MANIFEST}"):
        return f"{step_dir} has no {MANIFEST} (the save did not finish)"
    try:
        with fs.open(f"{root}/{MANIFEST}") as fh:
            manifest = json.load(fh)
        want, crcs = manifest["files"], manifest.get("crc32c", {})
    except (ValueError, KeyError, TypeError) as e:
        return f"{step_dir}/{MANIFEST} is unreadable: {e}"
    have = _listing(fs, root)
    for rel, size in sorted(want.items()):
        if rel not in have:
            return f"{step_dir}/{rel} is missing"
        if int(have[rel].get("size") or 0) != size:
            return (
                f"{step_dir}/{rel} has {have[rel].get('size')} bytes, the manifest says {size} "
                "(truncated?)"
            )
    return _check_crcs(step_dir, fs, root, crcs, have, items) if checksums else None


def _check_crcs(
    step_dir: str,
    fs: Any,
    root: str,
    crcs: dict[str, str],
    have: dict[str, dict],
    items: tuple[str, ...],
) -> str | None:
    skip = tuple(f"{i}/" for i in ITEMS if i not in items)
    t0, nbytes = time.perf_counter(), 0
    for rel, want in sorted(crcs.items()):
        if rel.startswith(skip) or rel not in have:  # (a missing file was reported above)
            continue
        got = _crc32c(fs, f"{root}/{rel}", have[rel])
        if got != want:
            return (
                f"{step_dir}/{rel} fails its checksum (CRC32C {got}, the manifest says {want}): "
                "the file changed after the save (bit rot or a partial overwrite)"
            )
        nbytes += int(have[rel].get("size") or 0)
    log.debug("checksummed %s: %d bytes in %.2f s", step_dir, nbytes, time.perf_counter() - t0)
    return None


def list_steps(ckpt_root: str) -> list[int]:
    """Step numbers of the (finalized-named) checkpoints under ``ckpt_root``, ascending."""
    fs, root = storage.filesystem(ckpt_root)
    if not fs.exists(root):
        return []
    names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)]
    return sorted(int(n) for n in names if _STEP.match(n))


def find_steps(path: str) -> tuple[str, list[int]]:
    """A run dir, its ``checkpoints/`` dir or one ``<step>`` dir -> (checkpoints root, steps)."""
    path = storage.norm_path(path)
    fs, root = storage.filesystem(path)
    if not fs.exists(root):
        raise CheckpointError(f"{path}: no such directory")
    name = root.rsplit("/", 1)[-1]
    if _STEP.match(name) and any(fs.exists(f"{root}/{x}") for x in ITEMS + (MANIFEST,)):
        return _join(path, ".."), [int(name)]
    for cand in (path, _join(path, CHECKPOINTS)):
        steps = list_steps(cand)
        if steps:
            return cand, steps
    raise CheckpointError(f"{path}: no checkpoints found (expected <run>/{CHECKPOINTS}/<step>/)")


def _join(path: str, rel: str) -> str:
    path = str(path).rstrip("/")
    return path.rsplit("/", 1)[0] if rel == ".." else f"{path}/{rel}"


def is_checkpoint(path: str) -> bool:
    try:
        find_steps(path)
        return True
    except CheckpointError:
        return False


def read_meta(step_dir: str) -> dict:
    fs, root = storage.filesystem(step_dir)
    try:
        with fs.open(f"{root}/meta/metadata") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise CheckpointError(f"{step_dir}: no meta/metadata (incomplete checkpoint)") from None
    except ValueError as e:
        raise CheckpointError(f"{step_dir}/meta/metadata is not valid JSON: {e}") from None


def newest_good(path: str) -> tuple[str, list[str]]:
    """The newest checkpoint that verifies, and the reasons the newer ones were skipped."""
    ckpt_root, steps = find_steps(path)
    skipped = []
    for step in sorted(steps, reverse=True):
        step_dir = _join(ckpt_root, str(step))
        why = verify(step_dir, MODEL_ITEMS)  # loading needs no optimizer state
        if why is None:
            return step_dir, skipped
        skipped.append(why)
    raise CheckpointError(f"{path}: no usable checkpoint; " + "; ".join(skipped))


def read_config(step_dir: str) -> AnkhConfig:
    """The model config stored with one checkpoint (no weights read)."""
    meta = read_meta(step_dir)
    if "model" not in meta:
        raise CheckpointError(f"{step_dir}: meta has no model config")
    return AnkhConfig.from_hf_dict(meta["model"])


def load_params(step_dir: str) -> tuple[AnkhConfig, dict[tuple, np.ndarray]]:
    """(AnkhConfig, flat {state path: np.ndarray}) from one checkpoint, on this host's CPU."""
    import orbax.checkpoint as ocp  # heavy; only loading and saving need it

    step_dir = storage.norm_path(step_dir)
    storage.apply_emulator_env()  # Orbax's tensorstore follows gs:// to the emulator too
    cfg = read_config(step_dir)
    abstract = nnx.split(nnx.eval_shape(lambda: AnkhModel(cfg, nnx.Rngs(0))))[1].to_pure_dict()
    dev = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=dev), abstract)
    try:
        with ocp.StandardCheckpointer() as ckptr:
            params = ckptr.restore(_join(step_dir, "params"), target)
    except Exception as e:  # tensorstore/orbax raise many types; name the checkpoint
        raise CheckpointError(
            f"{step_dir}/params could not be restored: {type(e).__name__}: {e}"
        ) from None
    flat = {tuple(k): np.asarray(v) for k, v in _flatten(params)}
    return cfg, flat


def _flatten(tree: dict, prefix: tuple = ()) -> list[tuple[tuple, Any]]:
    out = []
    for k, v in tree.items():
        if isinstance(v, dict):
            out += _flatten(v, prefix + (k,))
        else:
            out.append((prefix + (k,), v))
    return out


def save_model(model: Any, path: str, step: int = 0) -> str:
    """Write ``model`` (anything with ``config`` and ``flat_params()``, e.g. an ``Ankh``) as
    ``<path>/checkpoints/<step>`` (params + meta, no optimizer state): the train loop's layout,
    which ``ankh.load(path)`` reads back bit-exactly."""
    import orbax.checkpoint as ocp

    step_dir = _join(_join(storage.norm_path(path), CHECKPOINTS), str(step))
    fs, root = storage.filesystem(step_dir)
    if fs.exists(root):
        raise CheckpointError(f"{step_dir} already exists; refusing to overwrite it")
    params = {}
    for key, arr in model.flat_params().items():
        node = params
        for k in key[:-1]:
            node = node.setdefault(k, {})
        node[key[-1]] = arr
    storage.apply_emulator_env()  # Orbax's tensorstore follows gs:// to the emulator too
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(_join(step_dir, "params"), params)
        ckptr.wait_until_finished()
    fs.makedirs(f"{root}/meta", exist_ok=True)
    with fs.open(f"{root}/meta/metadata", "w") as fh:
        json.dump({"step": step, "model": model.config.to_hf_dict(), "source": "save_model"}, fh)
    write_manifest(step_dir)
    return step_dir
