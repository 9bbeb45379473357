"""Does a pretraining preset fit the TPU slice a cluster file provisions?

A cluster file (Ray cluster launcher YAML or KubeRay RayCluster/RayJob/RayService) describes
TPU slices; a preset (``jobs/configs/pretrain-*.yaml``) describes the JAX mesh
``data x fsdp x tensor`` (one axis may be -1 = the rest) and the Ray Train scale (one worker =
one JAX process per TPU host). They agree when:

- the slice is internally consistent: chips = product of the topology = hosts x chips/host
  (TPU v4: 4 chips per host VM, each chip one JAX device, 2 TensorCores per chip),
- the preset runs on TPU with the same topology and accelerator generation,
- a TPU slice is all or nothing: ``scale.num_workers`` (both ends of an elastic range
  ``min,max``) counts whole slices of ``hosts`` workers, and the file provisions max/hosts slices
  (``maxReplicas``/``replicas`` of a KubeRay group, ``max_workers`` of a launcher node type);
- for every slice count of the range, the mesh resolves to exactly ``slices x chips`` devices,
  and a micro-batch (``data.rows`` per host x hosts at work; an elastic run short of hosts
  accumulates more of them, ``train/lanes.py``) splits evenly over ``data x fsdp``.

Which preset a cluster file runs: a RayJob's entrypoint (``--config NAME`` plus ``k=v``
overrides); otherwise the ``ankh.dev/pretrain-preset`` annotation (KubeRay) or
``metadata.ankh_pretrain_preset`` (cluster launcher). ``python -m jobs.check_cluster`` runs it.
"""

from __future__ import annotations

import dataclasses
import math
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from ankh_platform.core.config import PRESETS_DIR, ConfigError, find_preset, load_config
from ankh_platform.core.samples import repo_root

CLUSTER_DIR = repo_root() / "cluster"
CHIPS_PER_HOST = {"v4": 4}  # TPU generation -> chips per host VM
CORES_PER_CHIP = {"v4": 2}  # accelerator type "v4-N" counts TensorCores
PRESET_ANNOTATION = "ankh.dev/pretrain-preset"
KUBERAY_KINDS = {
    "RayCluster": ("spec",),
    "RayJob": ("spec", "rayClusterSpec"),
    "RayService": ("spec", "rayClusterConfig"),
}


class ClusterFileError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Slice:
    """One TPU slice a cluster file asks for, and the preset it is meant to run."""

    where: str  # "file.yaml:group"
    generation: str  # "v4"
    topology: str  # "2x2x4"
    hosts: int
    chips_per_host: int
    preset: str | None = None
    overrides: tuple[str, ...] = ()
    max_slices: int = 1  # slices of this shape the file can provision at once

    @property
    def chips(self) -> int:
        return topology_chips(self.topology)

    @property
    def accelerator_type(self) -> str:
        return f"{self.generation}-{self.chips * CORES_PER_CHIP.get(self.generation, 1)}"


def topology_chips(topology: str) -> int:
    if not re.fullmatch(r"\d+x\d+(x\d+)?", topology or ""):
        raise ClusterFileError(f"TPU topology {topology!r} is not of the form AxBxC")
    return math.prod(int(d) for d in topology.split("x"))


# ---- reading cluster files -----------------------------------------------------------------
def _get(doc: Any, *keys: str) -> Any:
    for k in keys:
        doc = doc.get(k) if isinstance(doc, dict) else None
    return doc


def _launcher_slices(doc: dict, where: str) -> Iterator[Slice]:
    preset = _get(doc, "metadata", "ankh_pretrain_preset")
    for name, node in (doc.get("available_node_types") or {}).items():
        cfg = node.get("node_config") or {}
        if "acceleratorConfig" in cfg:
            gen = str(cfg["acceleratorConfig"]["type"]).lower()
            topology = str(cfg["acceleratorConfig"]["topology"])
        elif "acceleratorType" in cfg:
            raise ClusterFileError(
                f"{where}:{name}: use acceleratorConfig (type + topology) so "
                "the slice shape is explicit"
            )
        else:
            continue
        per_host = CHIPS_PER_HOST.get(gen)
        if per_host is None:
            raise ClusterFileError(f"{where}:{name}: unsupported TPU generation {gen!r}")
        yield Slice(
            f"{where}:{name}",
            gen,
            topology,
            topology_chips(topology) // per_host,
            per_host,
            preset,
            max_slices=max(int(node.get("max_workers", 1)), 1),
        )


def _entrypoint_preset(entrypoint: str) -> tuple[str | None, tuple[str, ...]]:
    """``python -m jobs.pretrain --config base a=1`` -> ("base", ("a=1",))."""
    argv = shlex.split(entrypoint or "")
    if "jobs.pretrain" not in argv:
        return None, ()
    rest = argv[argv.index("jobs.pretrain") + 1 :]
    preset, over, i = None, [], 0
    while i < len(rest):
        if rest[i] == "--config" and i + 1 < len(rest):
            preset, i = rest[i + 1], i + 2
            continue
        if rest[i].startswith("--config="):
            preset = rest[i].split("=", 1)[1]
        elif "=" in rest[i] and not rest[i].startswith("-"):
            over.append(rest[i])
        i += 1
    return preset or "tiny", tuple(over)


def _kuberay_slices(doc: dict, where: str) -> Iterator[Slice]:
    kind = doc.get("kind")
    spec = _get(doc, *KUBERAY_KINDS[kind])
    if not isinstance(spec, dict):
        raise ClusterFileError(f"{where}: {kind} has no {'.'.join(KUBERAY_KINDS[kind])}")
    preset, over = _entrypoint_preset(_get(doc, "spec", "entrypoint") or "")
    preset = preset or _get(doc, "metadata", "annotations", PRESET_ANNOTATION)
    for group in spec.get("workerGroupSpecs") or []:
        pod = _get(group, "template", "spec") or {}
        selector = pod.get("nodeSelector") or {}
        accel = selector.get("cloud.google.com/gke-tpu-accelerator")
        if not accel:
            continue
        m = re.fullmatch(r"tpu-(v\d+)-podslice", accel)
        if not m or m.group(1) not in CHIPS_PER_HOST:
            raise ClusterFileError(f"{where}: unsupported TPU accelerator {accel!r}")
        gen, name = m.group(1), group.get("groupName", "?")
        tpus = {
            str(_get(c, "resources", kind_).get("google.com/tpu"))
            for c in pod.get("containers", [])
            for kind_ in ("limits", "requests")
            if _get(c, "resources", kind_)
        }
        tpus.discard("None")
        if len(tpus) != 1:
            raise ClusterFileError(
                f"{where}:{name}: google.com/tpu requests and limits must be "
                f"set and equal, got {sorted(tpus)}"
            )
        yield Slice(
            f"{where}:{name}",
            gen,
            str(selector.get("cloud.google.com/gke-tpu-topology")),
            int(group.get("numOfHosts", 1)),
            int(tpus.pop()),
            preset,
            over,
            max(int(group.get("maxReplicas", 1)), int(group.get("replicas", 1)), 1),
        )


def load_slices(path: str | Path) -> list[Slice]:
    """Every TPU slice in a cluster file (multi-document YAML allowed)."""
    path = Path(path)
    out: list[Slice] = []
    for doc in yaml.safe_load_all(path.read_text()):
        if not isinstance(doc, dict):
            continue
        if doc.get("kind") in KUBERAY_KINDS:
            out += _kuberay_slices(doc, path.name)
        elif "available_node_types" in doc:
            out += _launcher_slices(doc, path.name)
    return out


# ---- checking ------------------------------------------------------------------------------
def load_preset(name: str, overrides: tuple[str, ...] = (), presets_dir: Path = PRESETS_DIR):
    from ankh_platform.train.config import PretrainConfig

    try:
        path = find_preset(name, presets_dir)
    except ConfigError as e:
        raise ClusterFileError(f"pretraining preset {name!r} not found: {e}") from None
    return load_config(PretrainConfig, path, list(overrides))


def check_slice(sl: Slice, cfg: Any) -> list[str]:
    """Problems running pretraining config ``cfg`` on slice ``sl`` ([] = they agree)."""
    from ankh.sharding import mesh_shape

    problems = []
    if sl.hosts * sl.chips_per_host != sl.chips:
        problems.append(
            f"{sl.hosts} hosts x {sl.chips_per_host} chips != {sl.chips} chips of "
            f"topology {sl.topology}"
        )
    if sl.chips_per_host != CHIPS_PER_HOST[sl.generation]:
        problems.append(
            f"TPU {sl.generation} hosts have {CHIPS_PER_HOST[sl.generation]} chips, "
            f"the file asks for {sl.chips_per_host} per host"
        )
    if cfg is None:
        return problems
    s = cfg.scale
    if not s.use_tpu:
        problems.append("preset has scale.use_tpu=false")
    if s.topology and s.topology != sl.topology:
        problems.append(f"preset topology {s.topology} != slice topology {sl.topology}")
    if s.accelerator_type and s.accelerator_type.lower() != f"tpu-{sl.generation}":
        problems.append(f"preset accelerator {s.accelerator_type} != TPU-{sl.generation.upper()}")
    problems += _worker_range_problems(sl, s)
    if problems:
        return problems
    lo, hi = s.worker_range
    sizes = dataclasses.asdict(cfg.mesh)
    for slices in range(max(lo // sl.hosts, 1), hi // sl.hosts + 1):
        try:
            mesh = mesh_shape(sizes, num_devices=sl.chips * slices)
        except ValueError as e:
            problems.append(f"mesh {sizes} does not fit {sl.chips * slices} chips: {e}")
            continue
        batch = cfg.data.rows * sl.hosts * slices  # one micro-batch: every host's rows
        if batch % (mesh["data"] * mesh["fsdp"]):
            problems.append(
                f"global batch {batch} rows ({cfg.data.rows}/host) is not divisible by "
                f"data x fsdp = {mesh['data'] * mesh['fsdp']}"
            )
    return problems


def _worker_range_problems(sl: Slice, s: Any) -> list[str]:
    """A TPU slice is all or nothing: the worker range counts whole slices, and the file must
    provision as many slices as the range's max needs."""
    lo, hi = s.worker_range
    spelled = f"scale.num_workers={hi}" if lo == hi else f"scale.num_workers={lo},{hi}"
    if lo % sl.hosts or hi % sl.hosts:
        return [
            f"{spelled} but the slice has {sl.hosts} hosts: a TPU slice is all or nothing, so "
            f"the worker count (both ends of a range) must be a multiple of {sl.hosts} "
            "(one Ray Train worker = one JAX process per host)"
        ]
    if hi // sl.hosts > sl.max_slices:
        return [
            f"{spelled} needs {hi // sl.hosts} slices of {sl.hosts} hosts but the file "
            f"provisions at most {sl.max_slices}"
        ]
    return []


@dataclasses.dataclass(frozen=True)
class Report:
    slice: Slice
    mesh: dict[str, int] | None
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def check_file(
    path: str | Path, preset: str | None = None, presets_dir: Path = PRESETS_DIR
) -> list[Report]:
    """Check every TPU slice of a cluster file against its (or the given) preset."""
    from ankh.sharding import mesh_shape

    reports = []
    for sl in load_slices(path):
        name = preset or sl.preset
        cfg = load_preset(name, sl.overrides, presets_dir) if name else None
        problems = check_slice(sl, cfg)
        mesh = None
        if cfg is not None and not problems:
            slices = cfg.scale.num_workers // sl.hosts  # the range's max
            mesh = mesh_shape(dataclasses.asdict(cfg.mesh), num_devices=sl.chips * slices)
        reports.append(Report(dataclasses.replace(sl, preset=name), mesh, problems))
    return reports


def shipped_cluster_files(root: Path = CLUSTER_DIR) -> list[Path]:
    return sorted(p for p in root.rglob("*.yaml") if p.is_file())
