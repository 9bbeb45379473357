"""Step time and throughput of a compiled step from its FLOPs and collective bytes: an estimate.

``est_step_s = flops_per_chip / (peak x MFU) + collective_bytes_per_chip / interconnect``: the
compute at an assumed fraction of the data sheet's bf16 peak, plus the collectives at the data
sheet's per-chip all-reduce bandwidth with no overlap with compute (XLA overlaps some, so the
sum errs long). Every figure says where it came from and the JSON says ``"estimate": true``.
"""

from __future__ import annotations

from ankh_platform.plan.chips import Chip

# The fraction of peak assumed for compute: what large T5 trainings report on TPU v4
# (roughly 40-55 %); a planning assumption, not a measurement of this project.
ASSUMED_MFU = 0.4


def estimate_flops(xla_per_chip: float, formula_per_chip: float | None) -> tuple[float, str]:
    """FLOPs per chip the estimate uses, and which count it is. XLA's cost analysis counts an op
    inside a loop body once, and on larger meshes the partitioner turns sharded matmuls into
    loops (windowed einsums, collective-permute rings): there XLA's count falls below the
    model's own matmul FLOPs (``ankh.flops``), which every step does execute -- so the larger of
    the two is used."""
    if formula_per_chip is not None and formula_per_chip > xla_per_chip:
        return formula_per_chip, "ankh.flops formula (XLA counts each loop body once: lower)"
    return xla_per_chip, "XLA cost analysis"


def step_estimate(
    chip: Chip,
    flops_per_chip: float,
    collective_bytes_per_chip: float,
    tokens_per_step: int,
    mfu: float = ASSUMED_MFU,
    flops_source: str = "XLA cost analysis",
) -> dict:
    """The estimate and its assumptions, as the JSON line shows them."""
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu must be in (0, 1], got {mfu}")
    compute_s = flops_per_chip / (chip.bf16_flops_per_s * mfu)
    comm_s = collective_bytes_per_chip / chip.ici_bytes_per_s
    step_s = compute_s + comm_s
    return {
        "estimate": True,
        "est_step_s": step_s,
        "est_compute_s": compute_s,
        "est_collective_s": comm_s,
        "est_tokens_per_s": tokens_per_step / step_s if step_s > 0 else None,
        "est_tokens_per_day": tokens_per_step / step_s * 86400 if step_s > 0 else None,
        "assumptions": {
            "bf16_peak_flops_per_chip": chip.bf16_flops_per_s,
            "mfu": mfu,
            "flops": flops_source,
            "interconnect_bytes_per_s_per_chip": chip.ici_bytes_per_s,
            "overlap": "none (compute + collectives added)",
            "source": chip.source,
        },
    }
