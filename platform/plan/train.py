"""The pretraining step of a cluster file's run, compiled ahead of time for its TPU slice.

``compile_step`` builds the program with the job's own builder (``ankh_platform.train.program``:
the same ``Trainer`` step, mesh, sharding rules, compute dtype, optimizer and global batch) over
the slice's compile-only devices, lowers the step with ShapeDtypeStruct inputs and compiles it:
XLA's memory analysis is per chip, its cost analysis per chip (one SPMD partition).
``largest_fitting_rows`` searches the per-host batch by compiling.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import time
from typing import Any

import jax

from ankh.flops import train_step_flops
from ankh.resolve import resolve
from ankh_platform.plan import hlo
from ankh_platform.plan.libtpu import hosts_of, topology_devices
from ankh_platform.train import program
from ankh_platform.train.config import PretrainConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Compiled:
    """What one compile of the step reports (bytes and FLOPs per chip unless named otherwise)."""

    params: int
    chips: int
    hosts: int
    mesh: dict[str, int]
    rows_per_host: int
    enc_len: int
    dec_len: int
    memory: dict[str, int]  # arguments / outputs / aliased / temporaries / generated_code / total
    flops_per_chip: float | None  # None: the compiler refused the program (out of HBM)
    formula_flops_per_step: float
    collectives: dict[str, dict[str, int]]
    compile_s: float

    @property
    def tokens_per_step(self) -> int:
        """Token slots of a global batch (encoder + decoder, padding included)."""
        return self.rows_per_host * self.hosts * (self.enc_len + self.dec_len)


def memory_of(compiled: Any) -> dict[str, int]:
    """XLA's per-chip buffer sizes; ``total`` is its peak of live buffers where it reports one
    (buffers live at different times share memory), else the sum of the parts."""
    m = compiled.memory_analysis()
    out = {
        "arguments": int(m.argument_size_in_bytes),
        "outputs": int(m.output_size_in_bytes),
        "aliased": int(m.alias_size_in_bytes),  # outputs written into donated arguments
        "temporaries": int(m.temp_size_in_bytes),
        "generated_code": int(m.generated_code_size_in_bytes),
    }
    parts = out["arguments"] + out["outputs"] - out["aliased"] + out["temporaries"]
    peak = int(getattr(m, "peak_memory_in_bytes", 0) or 0)
    out["total"] = max(peak, parts + out["generated_code"])
    return out


_SIZE = re.compile(r"\(([\d.]+)([KMGT]?)\)")
_UNIT = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def compile_or_oom(lowered: Any) -> tuple[Any, dict[str, Any] | None]:
    """``(compiled, None)``, or ``(None, memory)`` where the TPU compiler refuses a program that
    does not fit its chip (``RESOURCE_EXHAUSTED: ... HLO temporaries (42.68G) exceeds available
    HBM (30.75G)``): ``memory`` then holds what it reported -- the need as ``total`` (at least
    that much), the compiler's usable HBM and its message."""
    try:
        return lowered.compile(), None
    except jax.errors.JaxRuntimeError as e:
        msg = str(e).strip().splitlines()[0]
        if "RESOURCE_EXHAUSTED" not in msg:
            raise
        sizes = [int(float(n) * _UNIT[u]) for n, u in _SIZE.findall(msg)]
        need = sizes[0] if sizes else 0
        memory = {"temporaries": need, "total": need, "compiler_error": msg}
        if len(sizes) > 1:
            memory["compiler_usable_hbm"] = sizes[1]
        return None, memory


def flops_of(compiled: Any) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float((cost or {}).get("flops", 0.0))


def compile_step(cfg: PretrainConfig, generation: str, topology: str) -> Compiled:
    """Compile ``cfg``'s train step for the slice ``generation:topology`` (no weights made)."""
    devices = topology_devices(generation, topology)
    origin = resolve(cfg.model)
    prog = program.build(
        cfg,
        origin.config,
        from_weights=origin.kind != "preset",
        tokenizer=origin.tokenizer,
        devices=devices,
    )
    hosts = len(hosts_of(devices))
    t0 = time.perf_counter()
    with jax.set_mesh(prog.mesh):
        state = prog.trainer.abstract_state()
        batch = program.abstract_batch(prog.cfg, hosts, prog.mesh)
        compiled, oom = compile_or_oom(prog.trainer.step_fn(state).lower(state, batch))
    secs = time.perf_counter() - t0
    rows, enc_len = batch["input_ids"].shape
    dec_len = batch["labels"].shape[1]
    return Compiled(
        params=sum(math.prod(x.shape) for x in jax.tree.leaves(state["params"])),
        chips=len(devices),
        hosts=hosts,
        mesh=dict(prog.mesh.shape),
        rows_per_host=rows // hosts,
        enc_len=enc_len,
        dec_len=dec_len,
        memory=oom or memory_of(compiled),
        flops_per_chip=None if oom else flops_of(compiled),
        formula_flops_per_step=train_step_flops(prog.model_cfg, rows, enc_len, dec_len),
        collectives={} if oom else hlo.collectives(compiled.as_text()),
        compile_s=secs,
    )


def with_rows(cfg: PretrainConfig, rows: int) -> PretrainConfig:
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, rows=rows))


def rows_step(mesh: dict[str, int], hosts: int) -> int:
    """The smallest per-host row count whose global batch splits over ``data x fsdp``."""
    split = mesh["data"] * mesh["fsdp"]
    return split // math.gcd(split, hosts)


def with_remat(cfg: PretrainConfig, remat: bool) -> PretrainConfig:
    return dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, remat=remat))


def largest_fitting_rows(
    cfg: PretrainConfig,
    generation: str,
    topology: str,
    capacity: int,
    mesh: dict[str, int],
    hosts: int,
    known_unfit: bool = True,
    max_compiles: int = 8,
) -> int | None:
    """The largest per-host ``data.rows`` up to ``cfg.data.rows`` (a multiple of ``rows_step``)
    whose step fits ``capacity`` bytes per chip, by compiling: ``cfg.data.rows`` itself unless
    ``known_unfit``, then halving until one fits, then bisecting. None if even the smallest does
    not fit (or the compile budget runs out first)."""
    unit = rows_step(mesh, hosts)

    def fits(n: int) -> bool:
        log.info("trying %d rows per host (remat=%s)", n * unit, cfg.optim.remat)
        c = compile_step(with_rows(cfg, n * unit), generation, topology)
        return "compiler_error" not in c.memory and c.memory["total"] <= capacity

    hi = max(cfg.data.rows // unit, 1)  # in units
    if not known_unfit and fits(hi):
        return hi * unit
    lo, used = hi // 2, 0
    while lo >= 1 and used < max_compiles:
        used += 1
        if fits(lo):
            break
        hi, lo = lo, lo // 2
    else:
        return None
    while hi - lo > 1 and used < max_compiles:
        mid, used = (lo + hi) // 2, used + 1
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo * unit
