"""What one decode step of ``jobs.benchmark generate`` executes, and the least time it could take.

``step_profile`` reads the optimised HLO of a whole ``generate`` call (``Ankh.decoding_hlo``):
the while loop's body per iteration, its kernels and the copies it makes of cache-sized
buffers. ``floor_seconds`` is the float32 floor a measured time is compared with.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import numpy as np

_FREE_OPS = {"get-tuple-element", "bitcast", "constant", "tuple", "parameter"}  # no kernel


# ---- profile ----------------------------------------------------------------------------------------
def _computations(hlo: str) -> dict[str, list[str]]:
    comps: dict[str, list[str]] = {}
    cur = None
    for line in hlo.splitlines():
        m = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if m:
            cur = comps.setdefault(m.group(1), [])
        elif cur is not None:
            cur.append(line)
    return comps


def _nbytes(shape: str) -> int:
    m = re.match(r"([a-z]+)(\d*)\[([\d,]*)\]", shape)
    if not m:
        return 0
    bits = int(m.group(2) or 8)
    return int(np.prod([int(d) for d in m.group(3).split(",") if d] or [1])) * bits // 8


def step_profile(hlo: str, cache_bytes: int) -> dict[str, Any]:
    """What one decode step runs, from the optimised HLO of a whole ``generate`` call: the
    while loop's body per iteration (kernels by kind, dots) and the copies it makes of buffers
    at least half a self-attention cache layer (``cache_bytes``): transposes, copies, gathers."""
    comps = _computations(hlo)
    bodies = re.findall(r"while\(.*?body=%?([\w.\-]+)", hlo)
    if not bodies:
        return {"loop_in_program": False}
    body = max((comps.get(b, []) for b in bodies), key=len)
    kinds: Counter = Counter()
    big, big_bytes = 0, 0
    for line in body:
        m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (\S+) ([\w-]+)\(", line)
        if not m or m.group(3) in _FREE_OPS:
            continue
        kinds[m.group(3)] += 1
        nb = _nbytes(m.group(2))
        if nb * 2 >= cache_bytes and re.search(r"copy|transpose|gather", m.group(1)):
            big, big_bytes = big + 1, big_bytes + nb
    return {
        "loop_in_program": True,
        "while_loops_in_program": len(bodies),
        "host_round_trips_per_batch": 1,
        "kernels_per_step": sum(kinds.values()),
        "dots_per_step": kinds["dot"],
        "kernels_by_kind": dict(kinds.most_common()),
        "cache_sized_copies_per_step": big,
        "cache_copy_mb_per_step": round(big_bytes / 2**20, 1),
    }


# ---- the float32 floor --------------------------------------------------------------------------------
def floor_seconds(
    cfg,
    batch: int,
    enc_len: int,
    max_new: int,
    num_beams: int,
    peak: float,
    bandwidth: float,
    itemsize: int = 4,
) -> float:
    """The least time any implementation could decode in on this machine: the encoder and the
    cross keys/values at the matmul ``peak`` (FLOP/s), then each step at the slower of its FLOPs
    at the peak and its bytes (``ankh.flops.decode_step_bytes``) at the read ``bandwidth``
    (bytes/s); no fixed cost. ``enc_len``: the unpadded longest input, as HF runs it."""
    from ankh.flops import cross_kv_flops, decode_step_bytes, decode_step_flops, encoder_flops

    rows = batch * num_beams
    setup = (encoder_flops(cfg, batch, enc_len) + cross_kv_flops(cfg, batch, enc_len)) / peak
    steps = sum(
        max(
            decode_step_flops(cfg, rows, enc_len, t) / peak,
            decode_step_bytes(cfg, rows, batch, enc_len, t, itemsize) / bandwidth,
        )
        for t in range(1, max_new + 1)
    )
    return setup + steps
