"""libtpu for compiling only: the environment it needs off a TPU VM, and compile-only devices.

On a machine without TPU chips, libtpu reads its host's description from the environment (on a
TPU VM it asks the GCE metadata server). JAX already sets ``TPU_SKIP_MDS_QUERY=1`` when it finds
no chips; without ``TPU_ACCELERATOR_TYPE`` and ``TPU_WORKER_HOSTNAMES`` libtpu still prints
warnings and an ``INVALID_ARGUMENT`` error on every start. Their values only describe "this
host" to a runtime that never runs here: the slice compiled for comes from the topology name,
not from them. ``compile_only_env`` is the one place they are set, and only when no TPU is
present and the variables are unset (a real TPU VM keeps its own).
"""

from __future__ import annotations

import functools
import os
from typing import Any

INSTALL_HINT = (
    "libtpu is not installed: compiling for a TPU slice needs the tpu-compile extra "
    '(pip install -e ".[tpu-compile]"), which pins libtpu to the installed jax'
)
# What libtpu must be told about "this host" on a machine with no TPU (see the module docstring).
COMPILE_ONLY_ENV = {
    "TPU_SKIP_MDS_QUERY": "1",  # no GCE metadata server to ask
    # libtpu takes /tmp/libtpu_lockfile so that two processes never drive one TPU; with no TPU
    # there is nothing to guard, and without this a second compiling process (or any JAX process
    # that initialised libtpu) makes it fail with ABORTED.
    "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
    "TPU_ACCELERATOR_TYPE": "v4-8",  # any valid type: the compiled-for slice is the topology's
    "TPU_WORKER_HOSTNAMES": "localhost",
}
# libtpu's chip-config names: v4 runs one JAX device per chip (both TensorCores as one,
# "megacore"), as the pretraining job sees a v4 host: 4 devices.
CHIP_CONFIG = {"v4": "megacore"}


class LibtpuMissing(RuntimeError):
    pass


def libtpu_available() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("libtpu") is not None
    except ValueError:  # sys.modules["libtpu"] is None: blocked on purpose
        return False


def no_tpu_here() -> bool:
    from jax._src import hardware_utils

    return hardware_utils.num_available_tpu_chips_and_device_id()[0] == 0


def compile_only_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """Set (in ``environ``, default ``os.environ``) what libtpu needs to start quietly on a
    machine without TPU chips; returns what was set. Nothing on a TPU VM or when already set."""
    environ = os.environ if environ is None else environ
    if not no_tpu_here():
        return {}
    added = {k: v for k, v in COMPILE_ONLY_ENV.items() if k not in environ}
    environ.update(added)
    return added


@functools.cache
def topology_devices(generation: str, topology: str) -> tuple[Any, ...]:
    """Compile-only JAX devices of a TPU slice (``"v4"``, ``"2x2x4"``): one per chip, each with
    its host (``process_index``) and coordinates. ``LibtpuMissing`` without the extra."""
    if not libtpu_available():
        raise LibtpuMissing(INSTALL_HINT)
    compile_only_env()
    from jax.experimental import topologies

    kwargs = {"chip_config_name": CHIP_CONFIG[generation]} if generation in CHIP_CONFIG else {}
    desc = topologies.get_topology_desc(
        platform="tpu", topology_name=f"{generation}:{topology}", **kwargs
    )
    return tuple(desc.devices)


def hosts_of(devices: tuple[Any, ...]) -> dict[int, int]:
    """{host (process index): its device count}."""
    out: dict[int, int] = {}
    for d in devices:
        out[d.process_index] = out.get(d.process_index, 0) + 1
    return dict(sorted(out.items()))
