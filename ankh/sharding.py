"""Logical axis names -> mesh axes: the ONE rule table, plus mesh and sharding helpers.

Model code only names logical axes (``embed heads kv mlp vocab relpos_buckets`` on parameters,
``batch length`` on activations); this module is the only place that names mesh axes
(``data fsdp tensor``). A dimension whose size is not divisible by its mesh axes is replicated
instead (e.g. 4 heads on an 8-way tensor axis), so any mesh shape works for any preset.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axis / axes (None = replicated).
RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": ("data", "fsdp"),  # examples split over every data-parallel replica
    "length": None,
    "embed": "fsdp",  # ZeRO-3 style: params sharded over the fsdp axis
    "mlp": "tensor",  # Megatron-style tensor parallelism
    "heads": "tensor",
    "kv": None,
    "vocab": "tensor",
    "relpos_buckets": None,
}


def mesh_shape(sizes: Mapping[str, int], num_devices: int | None = None) -> dict[str, int]:
    """Resolve ``{data, fsdp, tensor}`` sizes; one of them may be -1 (= the remaining devices)."""
    n = jax.device_count() if num_devices is None else num_devices
    unknown = [a for a in MESH_AXES if sizes.get(a, 1) == -1]
    bad = [a for a in sizes if a not in MESH_AXES]
    if bad:
        raise ValueError(f"unknown mesh axes {bad}; the mesh axes are {MESH_AXES}")
    if len(unknown) > 1:
        raise ValueError(f"only one mesh axis may be -1, got {unknown}")
    known = math.prod(sizes.get(a, 1) for a in MESH_AXES if a not in unknown)
    if any(sizes.get(a, 1) < 1 for a in MESH_AXES if a not in unknown) or n % known:
        raise ValueError(f"mesh {dict(sizes)} does not fit {n} devices")
    out = {a: (n // known if a in unknown else sizes.get(a, 1)) for a in MESH_AXES}
    if math.prod(out.values()) != n:
        raise ValueError(f"mesh {out} uses {math.prod(out.values())} devices, there are {n}")
    return out


def make_mesh(sizes: Mapping[str, int] | None = None, devices: Sequence[Any] | None = None) -> Mesh:
    """A ``data x fsdp x tensor`` mesh over all (global) devices; default: pure data parallel."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(sizes or {"data": -1}, len(devices))
    dims = tuple(shape[a] for a in MESH_AXES)
    # Auto axes: XLA propagates activation shardings, so layers never name a mesh axis.
    return jax.make_mesh(dims, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def logical_to_spec(
    axes: Sequence[str | None],
    shape: Sequence[int] | None = None,
    mesh: Mesh | None = None,
    rules: Mapping[str, Any] = RULES,
) -> PartitionSpec:
    """PartitionSpec for logical ``axes``; with ``shape`` and ``mesh``, indivisible dims replicate."""
    used: set[str] = set()
    spec = []
    for i, name in enumerate(axes):
        if name is not None and name not in rules:
            raise ValueError(f"logical axis {name!r} has no sharding rule; known: {sorted(rules)}")
        target = rules.get(name) if name is not None else None
        mesh_axes = (target,) if isinstance(target, str) else tuple(target or ())
        mesh_axes = tuple(a for a in mesh_axes if a not in used)  # a mesh axis is used once
        if mesh is not None:
            mesh_axes = tuple(a for a in mesh_axes if mesh.shape[a] > 1)
            if shape is not None and shape[i] % math.prod(mesh.shape[a] for a in mesh_axes):
                mesh_axes = ()
        used.update(mesh_axes)
        spec.append(None if not mesh_axes else mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
    return PartitionSpec(*spec)


def _axes_of(var: nnx.Variable) -> tuple[str | None, ...]:
    meta = var.get_metadata()
    axes = meta.get("out_sharding") or meta.get("sharding_names") or meta.get("sharding")
    return tuple(axes) if axes else (None,) * len(var.shape)


def param_shardings(state: nnx.State, mesh: Mesh) -> dict:
    """Pure-dict tree of NamedShardings for an NNX param state (abstract or concrete)."""

    def one(v: nnx.Variable) -> NamedSharding:
        return NamedSharding(mesh, logical_to_spec(_axes_of(v), v.shape, mesh))

    return nnx.State(
        jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    ).to_pure_dict()


def indivisible(state: nnx.State, mesh: Mesh) -> list[str]:
    """The variables of ``state`` with a dim the rules shard on ``mesh`` but whose size the
    mesh axes do not divide (``logical_to_spec`` replicates such a dim)."""
    out = []
    for path, v in nnx.to_flat_state(state):
        axes = _axes_of(v)
        if logical_to_spec(axes, None, mesh) != logical_to_spec(axes, v.shape, mesh):
            out.append(f"{'.'.join(map(str, path))} {tuple(v.shape)} {axes}")
    return out


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Shard the leading (batch) dim over ``data`` and ``fsdp``; the rest replicated."""
    return NamedSharding(mesh, logical_to_spec(("batch",) + ("length",) * (ndim - 1), mesh=mesh))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows of a batch -> global arrays sharded over the batch axes.

    Every process passes its own ``[B_local, ...]`` slice; the global batch is the
    concatenation in process order (``jax.make_array_from_process_local_data``).
    """
    return {
        k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v)), np.asarray(v))
        for k, v in local.items()
    }
