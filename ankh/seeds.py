"""Independent random streams derived from one user seed.

A stream that needs its own randomness (the file order of an epoch, a window's row shuffle, the
variants of the i-th parent, ...) asks for ``derive_seed(seed, "what", index...)`` instead of
salting the seed by hand (``seed + 7919 * i``, ``[seed, epoch, 7]``): labels name the stream,
different labels never collide by arithmetic accident, and the result is the same on every
machine and Python version (NumPy's ``SeedSequence`` hashing, not ``hash()``).
"""

from __future__ import annotations

import hashlib

import numpy as np


def _word(label: int | str) -> int:
    """A label as a non-negative integer: ints as themselves (mod 2**64), strings by a stable hash."""
    if isinstance(label, str):
        return int.from_bytes(hashlib.blake2b(label.encode(), digest_size=8).digest(), "big")
    return int(label) & 0xFFFFFFFFFFFFFFFF


def derive_seed(seed: int, *labels: int | str) -> int:
    """A 32-bit seed for the stream ``labels`` of ``seed`` (fits NumPy, JAX and torch seeds)."""
    entropy = [_word(seed), *(_word(x) for x in labels)]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint32)[0])
