"""The pretraining program of a run -- network, optimizer settings, mesh, ``Trainer`` and the
shape of a global batch -- built in one place: by every worker (``worker.Run``) and by the
compile-only TPU plan (``ankh_platform.plan.train``), so the plan compiles exactly the step a
run executes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax

from ankh import sharding
from ankh.config import AnkhConfig
from ankh.packing import empty_batch
from ankh.training import MODEL_KEYS, Trainer
from ankh_platform.train.config import PretrainConfig, effective_optim, model_shape
from ankh_platform.train.source import host_spec


@dataclasses.dataclass
class Program:
    cfg: PretrainConfig  # with its effective optimizer settings (effective_optim)
    model_cfg: AnkhConfig
    mesh: jax.sharding.Mesh
    trainer: Trainer


def build(
    cfg: PretrainConfig,
    origin_config: AnkhConfig | None = None,
    from_weights: bool = False,
    tokenizer: Any = None,
    devices: Sequence[Any] | None = None,
    accum_factor: int = 1,
) -> Program:
    """The run's program over ``devices`` (default: every device of this JAX runtime; the plan
    passes a TPU slice's compile-only devices). ``origin_config``: what ``cfg.model`` resolved
    to (default: the preset); ``tokenizer``: the run's, for the held-out residue targets. ``accum_factor``: data lanes per
    worker of an elastic run short of workers (``train.lanes``): that many times
    ``optim.accum_steps`` micro-batches per step."""
    model_cfg = model_shape(cfg, origin_config)  # + model_overrides (presets)
    cfg = dataclasses.replace(cfg, optim=effective_optim(cfg, from_weights=from_weights))
    if accum_factor > 1:
        accum = cfg.optim.accum_steps * accum_factor
        cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, accum_steps=accum))
    mesh = sharding.make_mesh(dataclasses.asdict(cfg.mesh), devices)
    extra = {} if tokenizer is None else {"residues": tokenizer.residue_table(model_cfg.vocab_size)}
    if cfg.data.objective == "mlm":  # the LM head over the encoder; the decoder is not run
        extra["encoder_only"] = True
    trainer = Trainer(model_cfg, cfg.optim, mesh, seed=cfg.seed, freeze=cfg.train.freeze, **extra)
    return Program(cfg, model_cfg, mesh, trainer)


def abstract_batch(cfg: PretrainConfig, hosts: int, mesh: jax.sharding.Mesh) -> dict:
    """The global batch a step receives (every host's ``data.rows`` rows, as
    ``sharding.global_batch`` assembles them), as ShapeDtypeStructs with their shardings."""
    local = empty_batch(host_spec(cfg.data, cfg.source))
    return {
        k: jax.ShapeDtypeStruct(
            (local[k].shape[0] * hosts, *local[k].shape[1:]),
            local[k].dtype,
            sharding=sharding.batch_sharding(mesh, local[k].ndim),
        )
        for k in MODEL_KEYS
    }
