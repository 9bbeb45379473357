"""The fine-tuning loop: AdamW steps on the trainable parameters, validation every
``eval_every`` steps with the task's metric, early stopping, Orbax checkpoints with exact resume.

Exact resume: a step's batch depends only on (seed, step) -- the training split is shuffled per
epoch by ``numpy.random.default_rng([seed, epoch])`` -- and the checkpoint holds the trainable
parameters, the optimizer state and the early-stopping record, so a resumed run takes the same
steps as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx

from ankh import storage
from ankh.lora import row_seeds
from ankh.training import OptimConfig, make_optimizer
from ankh_platform.evaluate.heads import loss_fn
from ankh_platform.evaluate.metrics import score
from ankh_platform.evaluate.tasks import TaskData
from ankh_platform.finetune import distributed
from ankh_platform.finetune.config import FinetuneJobConfig
from ankh_platform.finetune.model import make_batch, outputs

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Data:
    """A task's splits as token ids (with the model's task token and ``</s>``) and labels."""

    task: TaskData
    toks: dict[str, list[np.ndarray]]
    prefix: int
    y_stats: tuple[float, float]
    class_w: np.ndarray | None


def optimizer(cfg: FinetuneJobConfig) -> optax.GradientTransformation:
    """``ankh.training.make_optimizer``'s AdamW: linear warm-up, then constant (end_lr = peak),
    so the schedule does not depend on ``steps`` and a resumed run may go further."""
    oc = OptimConfig(
        optimizer="adamw",
        peak_lr=cfg.learning_rate,
        end_lr=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps,
        total_steps=max(cfg.steps, cfg.warmup_steps + 1),
        weight_decay=cfg.weight_decay,
        clip_norm=cfg.clip_norm,
    )
    return make_optimizer(oc)


def step_fn(kind: str, wrt: Any, where: tuple[dict, dict] | None = None):
    """The jitted step; ``where``: the model's and optimizer's placement on a mesh, kept.
    The model's and optimizer's arrays are donated, as in pretraining: full fine-tuning would
    otherwise hold the weights and moments twice at the step's peak. Checkpoints wait for their
    writes to end (``Checkpoints.save``) before the next step reuses the buffers."""

    @nnx.jit(donate_argnums=(0, 1))
    def step(model: nnx.Module, opt: nnx.Optimizer, b: dict[str, jax.Array]) -> jax.Array:
        def lf(m):
            return loss_fn(kind, m(b["ids"], b["mask"], b["res_mask"], b.get("drop_seeds")), b)

        loss, grads = nnx.value_and_grad(lf, argnums=nnx.DiffState(0, wrt))(model)
        opt.update(model, grads)
        if where is not None:
            distributed.constrain(model, where[0])
            distributed.constrain(opt, where[1])
        return loss

    return step


@nnx.jit
def forward(model: nnx.Module, ids: jax.Array, mask: jax.Array, res_mask: jax.Array):
    return model(ids, mask, res_mask)


def predict(model: nnx.Module, data: Data, toks: list[np.ndarray], rows: int, mesh=None) -> list:
    """Per-example outputs (``model.outputs``), in ``toks`` order; similar lengths batched.
    With a ``mesh`` every process calls it (the batches split over the mesh, the outputs
    gathered)."""
    order = np.argsort([len(t) for t in toks], kind="stable")
    out: list[Any] = [None] * len(toks)
    for s in range(0, len(order), rows):
        idx = order[s : s + rows]
        chunk = [toks[i] for i in idx]
        b = make_batch(data.task, chunk, None, rows, data.prefix, data.y_stats)
        if mesh is not None:
            b = distributed.shard({k: b[k] for k in ("ids", "mask", "res_mask")}, mesh)
        o = distributed.to_host(forward(model, b["ids"], b["mask"], b["res_mask"]))
        for i, p in zip(idx, outputs(data.task, o, chunk, data.prefix, data.y_stats)):
            out[i] = p
    return out


def evaluate(model: nnx.Module, data: Data, split: str, rows: int, mesh=None) -> dict[str, Any]:
    preds = predict(model, data, data.toks[split], rows, mesh)
    return score(data.task, preds, data.task.splits[split].labels, [])


def batch_at(data: Data, step: int, rows: int, seed: int) -> dict[str, np.ndarray]:
    """Training batch ``step`` (0-based): a pure function of (seed, step), LoRA dropout's
    per-row seeds (``drop_seeds``) included."""
    n = len(data.toks["train"])
    per_epoch = max(1, -(-n // rows))
    epoch, k = divmod(step, per_epoch)
    idx = np.random.default_rng([seed, epoch]).permutation(n)[k * rows : (k + 1) * rows]
    labels = [data.task.splits["train"].labels[i] for i in idx]
    b = make_batch(
        data.task, [data.toks["train"][i] for i in idx], labels, rows, data.prefix, data.y_stats
    )
    b["drop_seeds"] = row_seeds(seed, step, rows)
    if data.class_w is not None:
        b["class_w"] = data.class_w
    return b


class Checkpoints:
    """Orbax checkpoints of the trainable state, optimizer state and early-stopping record."""

    def __init__(self, directory: str):
        storage.apply_emulator_env()
        opts = ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
        self.mgr = ocp.CheckpointManager(
            storage.norm_path(directory), options=opts, item_names=("state", "meta")
        )

    def save(self, step: int, model: nnx.Module, opt: nnx.Optimizer, wrt: Any, meta: dict) -> None:
        state = {
            "model": nnx.to_pure_dict(nnx.state(model, wrt)),
            "opt": nnx.to_pure_dict(nnx.state(opt)),
        }
        self.mgr.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
        )
        self.mgr.wait_until_finished()

    def restore(self, model: nnx.Module, opt: nnx.Optimizer, wrt: Any) -> dict | None:
        """Load the newest checkpoint into ``model`` / ``opt``; its meta, or None if none."""
        step = self.mgr.latest_step()
        if step is None:
            return None
        ms, os_ = nnx.state(model, wrt), nnx.state(opt)
        target = {"model": nnx.to_pure_dict(ms), "opt": nnx.to_pure_dict(os_)}
        got = self.mgr.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()
            ),
        )
        nnx.replace_by_pure_dict(ms, got["state"]["model"])
        nnx.replace_by_pure_dict(os_, got["state"]["opt"])
        nnx.update(model, ms)
        nnx.update(opt, os_)
        log.info("resumed from step %d", step)
        return dict(got["meta"])

    def close(self) -> None:
        self.mgr.close()


def peak_memory_mb() -> dict[str, float]:
    """The device's peak allocation where the backend reports it (GPU/TPU), else the process'
    peak resident set (CPU: the whole process, model and data included)."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return {"peak_device_memory_mb": round(stats["peak_bytes_in_use"] / 2**20, 1)}
    import resource

    return {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def timed_step(step, model, opt, b) -> tuple[float, float]:
    t0 = time.perf_counter()
    loss = float(step(model, opt, {k: jnp.asarray(v) for k, v in b.items()}))
    return loss, time.perf_counter() - t0
