"""Wire formats of embeddings shared by our routes and the OpenAI/TEI-compatible ones.

JSON lists of floats are ~20 bytes per value; a per-residue answer for 64 x 1000 residues x
1536 dims is then ~2 GB. The binary forms are 2 or 4 bytes per value: base64 of little-endian
float16/float32 (inside JSON, the OpenAI SDK's default for float32) and a raw ``.npy`` body
(``Accept: application/x-npy``; ``np.load(..., allow_pickle=False)`` reads it).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

NPY = "application/x-npy"
LENGTHS_HEADER = "X-Embedding-Lengths"  # per input: rows of the .npy body (1 when pooled)


def little_endian(dtype: str) -> np.dtype:
    """``float32``/``float16`` as an explicit little-endian dtype (the wire order)."""
    return np.dtype(dtype).newbyteorder("<")


def b64_array(a: np.ndarray, dtype: str = "float32") -> str:
    """Base64 of the array's values, C order, little-endian ``dtype``."""
    return base64.b64encode(np.ascontiguousarray(a, little_endian(dtype)).tobytes()).decode()


def npy_body(out: np.ndarray | Sequence[np.ndarray], dtype: str) -> tuple[bytes, list[int]]:
    """One ``.npy`` array of ``[rows, dim]`` and the rows of each input: pooled ``[n, dim]``
    gives one row each; per-residue arrays ``[L_i, dim]`` are stacked (split them back with
    ``np.split(a, np.cumsum(lengths)[:-1])``), as ``.npy`` holds no ragged arrays."""
    if isinstance(out, np.ndarray):
        arr, lengths = out, [1] * len(out)
    else:
        arr, lengths = np.concatenate(list(out), axis=0), [len(a) for a in out]
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr, little_endian(dtype)), allow_pickle=False)
    return buf.getvalue(), lengths


def check_dimensions(dimensions: int | None, d_model: int) -> None:
    """``dimensions`` (OpenAI, TEI) would truncate a Matryoshka embedding; Ankh's are not
    trained for that, so only the model's own width is accepted (ValueError -> 422)."""
    if dimensions is not None and dimensions != d_model:
        raise ValueError(
            f"dimensions={dimensions} is not supported: this model's embeddings "
            f"have {d_model} dimensions and are not truncatable; omit 'dimensions'"
        )


def l2_normalize(a: np.ndarray) -> np.ndarray:
    """Rows to unit length (TEI's ``normalize``); an all-zero row stays zero."""
    norm = np.linalg.norm(a, axis=-1, keepdims=True)
    return a / np.where(norm == 0, 1, norm)


def detail_text(detail: Any) -> str:
    """An error detail as one line: validation errors (a list of ``{loc, msg}``) joined as
    ``field: message``, for APIs whose error body carries a single message string."""
    if isinstance(detail, str):
        return detail
    parts = []
    for d in detail:
        loc = [x for x in d.get("loc", ()) if x != "body"]
        parts.append(f"{'.'.join(loc)}: {d.get('msg', '')}" if loc else d.get("msg", ""))
    return "; ".join(parts)
