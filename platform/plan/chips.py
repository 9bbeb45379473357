"""What a TPU generation's data sheet states, per chip: the figures every plan divides by.

Source: the Cloud TPU system-architecture pages (docs.cloud.google.com/tpu/docs/v4 and the
v5e/v6e pages). The interconnect figure is the data sheet's all-reduce bandwidth per pod divided
by the pod's chips (v4: 1.1 PB/s over 4096 chips), the rate an all-reduce-style collective
moves a chip's bytes at; a step's collectives rarely reach it, which is why step times built
from these figures are estimates (``estimate.py``).
"""

from __future__ import annotations

import dataclasses

GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Chip:
    generation: str
    hbm_bytes: int  # HBM capacity per chip
    hbm_bytes_per_s: float  # HBM bandwidth per chip
    bf16_flops_per_s: float  # peak bf16 matmul rate per chip
    ici_bytes_per_s: float  # all-reduce bandwidth per chip (pod figure / pod chips)
    source: str


CHIPS = {
    "v4": Chip(
        "v4",
        hbm_bytes=32 * GIB,
        hbm_bytes_per_s=1200e9,
        bf16_flops_per_s=275e12,
        ici_bytes_per_s=1.1e15 / 4096,
        source="docs.cloud.google.com/tpu/docs/v4 (275 TFLOP/s bf16, 32 GiB 1200 GB/s HBM2, "
        "all-reduce 1.1 PB/s per 4096-chip pod)",
    ),
    # v5e/v6e: only their single-host (serving) programs are compiled here (one chip of the
    # host libtpu names ``2x2``: inference.HOST_TOPOLOGY); chips per host of pretraining slices
    # are cluster_check.CHIPS_PER_HOST (v4 only). The data sheets say
    # "GB" for HBM, read as 10^9 bytes (the smaller reading: a plan that fits it fits either).
    "v5e": Chip(
        "v5e",
        hbm_bytes=16 * 10**9,
        hbm_bytes_per_s=819e9,
        bf16_flops_per_s=197e12,
        ici_bytes_per_s=51.2e12 / 256,
        source="docs.cloud.google.com/tpu/docs/v5e (197 TFLOP/s bf16, 16 GB 819 GB/s HBM2, "
        "all-reduce 51.2 TB/s per 256-chip pod)",
    ),
    "v6e": Chip(
        "v6e",
        hbm_bytes=32 * 10**9,
        hbm_bytes_per_s=1638e9,
        bf16_flops_per_s=918e12,
        ici_bytes_per_s=102.4e12 / 256,
        source="docs.cloud.google.com/tpu/docs/v6e (918 TFLOP/s bf16, 32 GB 1638 GB/s HBM, "
        "all-reduce 102.4 TB/s per 256-chip pod)",
    ),
}


def chip(generation: str) -> Chip:
    if generation not in CHIPS:
        raise ValueError(f"no data sheet figures for TPU {generation!r}; known: {', '.join(CHIPS)}")
    return CHIPS[generation]
