"""What the accelerator this process runs on implies, decided once: the default compute dtype
and whether a fused attention kernel exists.

Every inference entry (``ankh.load``, ``Ankh.random``, Serve, the batch-embedding job, the
benchmarks) asks ``compute_dtype`` for its dtype, so "auto" means the same thing everywhere:
bfloat16 on GPU and TPU (their matmul units run it at full rate; parameters stay float32),
float32 on CPU (where bfloat16 matmuls are emulated and slower).

Also decided here, once per process at import: with ``libtpu`` installed (the ``tpu-compile``
extra) on a machine with neither TPU chips nor an NVIDIA GPU, JAX would still load libtpu
(hundreds of MB per process) and print its host-probing warnings in every JAX process;
``skip_absent_tpu`` limits JAX to the CPU backend there unless ``JAX_PLATFORMS`` says otherwise.
Compiling for a TPU slice does not need that backend (``jax.experimental.topologies`` loads
libtpu by itself).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import jax
import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
AUTO = "auto"


def skip_absent_tpu() -> bool:
    """Use only JAX's CPU backend where libtpu is installed but nothing it or CUDA could drive
    is present and ``JAX_PLATFORMS`` is unset (see the module docstring); True if it did."""
    if os.environ.get("JAX_PLATFORMS") or jax.config.jax_platforms:
        return False
    try:
        if importlib.util.find_spec("libtpu") is None:
            return False
    except ValueError:  # sys.modules["libtpu"] is None: blocked on purpose
        return False
    from jax._src import hardware_utils

    if hardware_utils.num_available_tpu_chips_and_device_id()[0] or (
        hardware_utils.has_visible_nvidia_gpu()
    ):
        return False
    jax.config.update("jax_platforms", "cpu")
    return True


skip_absent_tpu()


def backend() -> str:
    """``cpu``, ``gpu`` or ``tpu`` (JAX's default backend of this process)."""
    return jax.default_backend()


def default_compute_dtype() -> str:
    """The compute dtype ``"auto"`` resolves to here: bfloat16 on GPU/TPU, float32 on CPU."""
    return "bfloat16" if backend() in ("gpu", "tpu") else "float32"


def compute_dtype(dtype: Any = AUTO) -> Any:
    """A jnp dtype from ``"auto"``/None (this backend's default), a name or a dtype."""
    if dtype is None or dtype == AUTO:
        dtype = default_compute_dtype()
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {[AUTO, *DTYPES]}, got {dtype!r}")
        return DTYPES[dtype]
    return dtype


def dtype_name(dtype: Any = AUTO) -> str:
    """The name (``"float32"``/``"bfloat16"``) of what ``compute_dtype(dtype)`` resolves to."""
    return jnp.dtype(compute_dtype(dtype)).name


def fused_attention_kernel(dtype: Any, head_dim: int, q_len: int, k_len: int) -> str | None:
    """``"cudnn"`` where ``jax.nn.dot_product_attention`` has a fused kernel for these shapes
    (GPU, 16-bit inputs, head dim a multiple of 8 up to 128, even lengths -- cuDNN's rules for
    a biased attention that may be differentiated), else None (the caller's own path)."""
    if backend() != "gpu" or jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16):
        return None
    if head_dim % 8 or head_dim > 128 or q_len % 2 or k_len % 2:
        return None
    return "cudnn"
