"""Ray's side of the plan: the ``ScalingConfig`` a cluster file's run leads to (built by the
pretraining job's own ``scaling_config``) against the compiled mesh's devices -- one Ray Train
worker per TPU host, every chip of a host in that worker's process (JAX sees them as its local
devices), the same topology and generation.
"""

from __future__ import annotations

from typing import Any

from ankh_platform.cluster_check import Slice
from ankh_platform.plan.libtpu import hosts_of
from ankh_platform.train.config import PretrainConfig


def scaling_agreement(cfg: PretrainConfig, sl: Slice, devices: tuple[Any, ...]) -> dict:
    """What Ray Train would reserve, what the compiled slice has, and where they disagree."""
    from ankh_platform.train.job import scaling_config

    hosts = hosts_of(devices)
    out: dict[str, Any] = {"hosts": len(hosts), "chips_per_host": sorted(set(hosts.values()))}
    try:
        sc = scaling_config(cfg.scale)
    except ValueError as e:  # Ray validates TPU scaling itself (e.g. workers not per host)
        return out | {"ok": False, "problems": [f"Ray refuses the ScalingConfig: {e}"]}
    per_worker = dict(sc.resources_per_worker or {})
    out |= {
        "use_tpu": sc.use_tpu,
        "topology": sc.topology,
        "accelerator_type": sc.accelerator_type,
        "num_workers": sc.num_workers,
        "resources_per_worker": per_worker,
    }
    problems = agreement_problems(out, sl, hosts)
    return out | {"ok": not problems, "problems": problems}


def agreement_problems(ray: dict, sl: Slice, hosts: dict[int, int]) -> list[str]:
    """Disagreements between Ray's reservation (``ray``: the ScalingConfig's fields) and the
    compiled slice (``hosts``: {host: its devices})."""
    problems = []
    if not ray.get("use_tpu"):
        problems.append("ScalingConfig has use_tpu=False: Ray would not reserve the TPU hosts")
    if ray.get("topology") != sl.topology:
        problems.append(f"ScalingConfig topology {ray.get('topology')} != slice {sl.topology}")
    accel = str(ray.get("accelerator_type") or "").lower()
    if accel != f"tpu-{sl.generation}":
        problems.append(
            f"ScalingConfig accelerator {ray.get('accelerator_type')} is not {sl.generation}"
        )
    if ray.get("num_workers") != len(hosts):
        problems.append(
            f"{ray.get('num_workers')} Ray Train workers for {len(hosts)} TPU hosts "
            "(one worker = one JAX process per host)"
        )
    tpus = ray.get("resources_per_worker", {}).get("TPU")
    wrong = {h: n for h, n in hosts.items() if n != tpus}
    if wrong:
        problems.append(
            f"each worker is given {tpus} TPU chips but the compiled hosts hold "
            f"{sorted(set(wrong.values()))} devices: every chip of a host must be in its worker"
        )
    return problems
