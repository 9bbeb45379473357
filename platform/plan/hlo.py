"""The collectives of a compiled program, read from its HLO text.

Each collective instruction is counted once where it appears in the text (one inside a loop
body runs once per iteration: the count is per program text, not per executed step), with the
bytes of its full (unsharded over its group) data: the result of an all-gather or all-reduce,
the input of a reduce-scatter. For an asynchronous pair (``all-gather-start`` /
``all-gather-done``) the ``-done`` carries the result and is the one counted. The TPU compiler
writes a reduce-scatter as a fusion computation named ``all-reduce-scatter*`` around an
all-reduce of the whole input: that all-reduce is counted as the reduce-scatter it is.
"""

from __future__ import annotations

import math
import re

KINDS = (
    "all-reduce",
    "all-gather",
    "reduce-scatter",
    "all-to-all",
    "ragged-all-to-all",
    "collective-permute",
    "collective-broadcast",
)
DTYPE_BYTES = {
    "pred": 1,
    "s8": 1,
    "u8": 1,
    "f8e4m3fn": 1,
    "f8e5m2": 1,
    "s16": 2,
    "u16": 2,
    "f16": 2,
    "bf16": 2,
    "s32": 4,
    "u32": 4,
    "f32": 4,
    "s64": 8,
    "u64": 8,
    "f64": 8,
    "c64": 8,
    "c128": 16,
}
# "%name = <result shape> <opcode>(" -- the result shape may be a tuple "(f32[2]{0}, ...)".
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<shape>.+?)\s+(?P<op>[a-z][\w\-]*)\(")
_ARRAY = re.compile(r"\b([a-z]\w*)\[([\d,]*)\]")
# A computation's header: "%name (params) -> shape {" or "ENTRY %name ... {".
_HEADER = re.compile(r"^(?:ENTRY\s+)?%?(?P<name>[\w.\-]+)\s*\(.*\{\s*$")


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO shape string (``bf16[8,128]{1,0}`` or a tuple of them)."""
    total = 0
    for dtype, dims in _ARRAY.findall(shape):
        if dtype in DTYPE_BYTES:
            total += DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
    return total


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
    """{kind: {"count": n, "bytes": result bytes summed}} over the program text, kinds in
    ``KINDS`` order, only those present."""
    found: dict[str, dict[str, int]] = {}
    computation = ""
    for line in hlo_text.splitlines():
        if not line[:1].isspace() and (h := _HEADER.match(line)):
            computation = h.group("name")
            continue
        m = _INSTR.match(line)
        if not m:
            continue
        op = m.group("op")
        kind = op[: -len("-done")] if op.endswith("-done") else op
        if kind not in KINDS:
            continue  # also skips "-start": its "-done" is counted
        if kind == "all-reduce" and computation.startswith("all-reduce-scatter"):
            kind = "reduce-scatter"
        row = found.setdefault(kind, {"count": 0, "bytes": 0})
        row["count"] += 1
        row["bytes"] += shape_bytes(m.group("shape"))
    return {k: found[k] for k in KINDS if k in found}
