"""Pure-JAX pretraining math: loss, optimizer, one jitted (sharded, donated) train step.

Batches follow the data contract (``docs/pretraining.md``): ``input_ids segment_ids positions
decoder_input_ids decoder_segment_ids decoder_positions labels loss_mask`` ([B, L] each).
Params are a pure dict of float32 arrays (``nnx.State.to_pure_dict()``); compute runs in the
model's dtype (bfloat16 optional), the loss and the optimizer in float32.

The loss of a step is normalised by the number of target tokens of the *global* batch, so
k-step gradient accumulation and any data-parallel split give the same update as one big batch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from ankh import sharding
from ankh.config import AnkhConfig
from ankh.model import AnkhModel
from ankh.tokenizer import RESIDUE_IDS

MODEL_KEYS = (
    "input_ids",
    "segment_ids",
    "positions",
    "decoder_input_ids",
    "decoder_segment_ids",
    "decoder_positions",
    "labels",
    "loss_mask",
)
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Optimisation as the Ankh paper: Adafactor, linear warm-up then linear decay, no decay."""

    optimizer: Literal["adafactor", "adamw"] = "adafactor"
    # paper: 0.002 (large), 0.004 (base). None = "not chosen": a caller with a policy (the
    # pretraining run: fresh vs continued weights) fills it in before building the optimizer.
    peak_lr: float | None = 0.002
    warmup_steps: int = 10_000  # paper scale; presets shrink it
    total_steps: int = 100_000  # linear decay reaches end_lr here (0: the run's step count)
    end_lr: float = 0.0
    weight_decay: float = 0.0
    clip_norm: float = 1.0  # global-norm clipping; 0 disables
    b1: float = 0.9  # AdamW
    b2: float = 0.999
    eps: float = 1e-8
    adafactor_decay: float = 0.8
    adafactor_momentum: float | None = None
    # Adafactor's relative step: each update is scaled by the parameter's RMS (T5/T5X default).
    # Off = the paper's explicit peak LR moves every weight by ~lr whatever its scale.
    adafactor_param_scale: bool = False
    z_loss: float = 0.0  # coefficient of mean(logsumexp^2); 0 disables
    accum_steps: int = 1  # micro-batches per optimizer step
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    # Rematerialise every encoder/decoder block in the backward pass: activation memory of one
    # block instead of all, for about a third more compute (a batch that does not fit may).
    remat: bool = False

    def __post_init__(self) -> None:
        if self.accum_steps < 1:
            raise ValueError(f"accum_steps must be >= 1, got {self.accum_steps}")
        if self.total_steps < 0 or self.warmup_steps < 0:
            raise ValueError("total_steps and warmup_steps must be >= 0")


def lr_schedule(oc: OptimConfig) -> optax.Schedule:
    if oc.peak_lr is None:
        raise ValueError(
            "optim.peak_lr is unset: set it (or let the training loop choose its default)"
        )
    if oc.total_steps < 1:
        raise ValueError(
            "optim.total_steps is 0: set it (or let the training loop set it to its steps)"
        )
    warm = max(1, min(oc.warmup_steps, oc.total_steps))
    decay = max(1, oc.total_steps - warm)
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, oc.peak_lr, warm),
            optax.linear_schedule(oc.peak_lr, oc.end_lr, decay),
        ],
        [warm],
    )


def make_optimizer(oc: OptimConfig) -> optax.GradientTransformation:
    sched = lr_schedule(oc)
    if oc.optimizer == "adafactor":
        # Default: explicit LR (no relative step / parameter scaling), the paper's peak-LR recipe.
        opt = optax.adafactor(
            sched,
            multiply_by_parameter_scale=oc.adafactor_param_scale,
            decay_rate=oc.adafactor_decay,
            momentum=oc.adafactor_momentum,
            weight_decay_rate=oc.weight_decay or None,
        )
    elif oc.optimizer == "adamw":
        opt = optax.adamw(sched, b1=oc.b1, b2=oc.b2, eps=oc.eps, weight_decay=oc.weight_decay)
    else:
        raise ValueError(f"unknown optimizer {oc.optimizer!r}; use adafactor or adamw")
    return optax.chain(optax.clip_by_global_norm(oc.clip_norm), opt) if oc.clip_norm > 0 else opt


# Parts of the network that can be frozen (``freeze=``), by top-level parameter name. "encoder"
# includes the shared embedding: the encoder reads it, so training it would change the
# encoder's output -- the High-N fine-tune's choice (``ankh.finetune``).
FREEZE_GROUPS = {
    "encoder": ("shared", "encoder"),
    "decoder": ("decoder", "lm_head"),
    "embeddings": ("shared",),
}


def check_freeze(freeze: Sequence[str]) -> None:
    """ValueError naming the valid groups for an unknown name, or when nothing would train."""
    bad = [g for g in freeze if g not in FREEZE_GROUPS]
    if bad:
        raise ValueError(
            f"unknown freeze group(s) {', '.join(map(repr, bad))}; valid: "
            f"{', '.join(FREEZE_GROUPS)}"
        )
    if {"encoder", "decoder"} <= set(freeze):
        raise ValueError(f"freeze={list(freeze)} freezes every parameter: nothing would train")


def freeze_labels(params: dict, freeze: Sequence[str]) -> dict:
    """'freeze' for every leaf under a frozen group's top-level keys, else 'train'."""
    frozen = {k for g in freeze for k in FREEZE_GROUPS[g]}
    return {
        k: jax.tree.map(lambda _, f=k in frozen: "freeze" if f else "train", v)
        for k, v in params.items()
    }


def with_frozen(
    tx: optax.GradientTransformation, freeze: Sequence[str]
) -> optax.GradientTransformation:
    """``tx`` on the trainable parameters; frozen ones get zero updates (so stay bit-identical)
    and no optimizer state."""
    if not freeze:
        return tx
    check_freeze(freeze)
    return optax.multi_transform(
        {"train": tx, "freeze": optax.set_to_zero()}, lambda params: freeze_labels(params, freeze)
    )


def build_model(
    cfg: AnkhConfig, seed: int = 0, compute_dtype: str = "float32", remat: bool = False
) -> AnkhModel:
    return AnkhModel(cfg, nnx.Rngs(seed), _DTYPES[compute_dtype], remat)


def graphdef_of(cfg: AnkhConfig, compute_dtype: str = "float32", remat: bool = False) -> Any:
    return nnx.split(nnx.eval_shape(lambda: build_model(cfg, 0, compute_dtype, remat)))[0]


def loss_sums(
    graphdef: Any, params: dict, batch: dict, z_loss: float = 0.0, encoder_only: bool = False
) -> tuple[jax.Array, dict]:
    """Summed (not averaged) CE [+ z-loss] over target tokens, and metric sums. ``encoder_only``
    (the mlm objective): the LM head over the encoder, labels aligned with its input."""
    model = nnx.merge(graphdef, params)
    if encoder_only:
        enc = model.encode(batch["input_ids"], batch["segment_ids"], batch["positions"])
        logits = model.logits(enc)  # [b, le, v]
    else:
        logits = model(
            batch["input_ids"],
            batch["segment_ids"],
            batch["decoder_input_ids"],
            batch["decoder_segment_ids"],
            batch["positions"],
            batch["decoder_positions"],
        )
    logits = logits.astype(jnp.float32)  # [b, ld, v]
    mask = batch["loss_mask"].astype(jnp.float32)  # [b, ld]
    lse = jax.nn.logsumexp(logits, axis=-1)  # [b, ld]
    target = jnp.take_along_axis(logits, batch["labels"][..., None], axis=-1)[..., 0]  # [b, ld]
    ce = jnp.sum((lse - target) * mask)
    zl = jnp.sum(jnp.square(lse) * mask)
    correct = jnp.sum((jnp.argmax(logits, -1) == batch["labels"]) * mask)
    total = ce + z_loss * zl if z_loss else ce
    return total, {"ce": ce, "z": zl, "correct": correct, "tokens": jnp.sum(mask)}


def _microbatches(batch: dict, k: int) -> dict:
    # Row r of micro-batch i is global row r*k+i: every micro-batch spans all data shards.
    return {n: x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1) for n, x in batch.items()}


def _grads(
    graphdef: Any, params: dict, batch: dict, oc: OptimConfig, encoder_only: bool = False
) -> tuple[dict, dict]:
    """Gradient of the token-mean loss of the batch (summed over micro-batches). The loss is
    divided before differentiating: dividing the gradients after let XLA's TPU scheduler keep
    every block's recomputed activations at once (remat then saved no HBM)."""
    n_tok = jnp.maximum(jnp.sum(batch["loss_mask"].astype(jnp.float32)), 1.0)

    def mean_loss(p: dict, b: dict) -> tuple[jax.Array, dict]:
        total, sums = loss_sums(graphdef, p, b, oc.z_loss, encoder_only)
        return total / n_tok, sums

    vg = jax.value_and_grad(mean_loss, has_aux=True)
    if oc.accum_steps == 1:
        (_, sums), g = vg(params, batch)
        return g, sums

    def body(carry, mb):
        (_, s), g = vg(params, mb)
        return jax.tree.map(jnp.add, carry, (g, s)), None

    zeros = (
        jax.tree.map(jnp.zeros_like, params),
        {k: jnp.zeros((), jnp.float32) for k in ("ce", "z", "correct", "tokens")},
    )
    (g, sums), _ = jax.lax.scan(body, zeros, _microbatches(batch, oc.accum_steps))
    return g, sums


def train_step(
    graphdef: Any,
    tx: optax.GradientTransformation,
    oc: OptimConfig,
    state: dict,
    batch: dict,
    encoder_only: bool = False,
) -> tuple[dict, dict]:
    """One optimizer step: state {params, opt_state, step, rng} -> (new state, metrics)."""
    batch = {k: batch[k] for k in MODEL_KEYS}
    grads, sums = _grads(graphdef, state["params"], batch, oc, encoder_only)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    n = jnp.maximum(sums["tokens"], 1.0)
    metrics = {
        "loss": sums["ce"] / n,
        "z_loss": sums["z"] / n,
        "accuracy": sums["correct"] / n,
        "target_tokens": sums["tokens"],
        "grad_norm": optax.tree.norm(grads),
        "lr": lr_schedule(oc)(state["step"]),
    }
    new = {
        "params": params,
        "opt_state": opt_state,
        "step": state["step"] + 1,
        "rng": jax.random.fold_in(state["rng"], state["step"]),
    }
    return new, metrics


def eval_step(
    graphdef: Any, params: dict, batch: dict, residues: Any = RESIDUE_IDS, encoder_only=False
) -> dict:
    """Metric sums over a batch (add them up over batches, then divide by ``tokens``).

    ``res_*`` restrict to residue targets: the masked amino acids alone, without the sentinels
    and ``</s>`` (predictable from position). ``residues``: the run tokenizer's
    ``residue_table()`` (bool ``[vocab]``; ankh3 puts its residues elsewhere) or an id range.
    """
    lab = batch["labels"]
    if isinstance(residues, range):
        is_res = ((lab >= residues.start) & (lab < residues.stop)).astype(jnp.float32)
    else:
        is_res = jnp.asarray(residues, bool)[lab].astype(jnp.float32)
    both = {k: batch[k] for k in MODEL_KEYS}
    res = dict(both, loss_mask=both["loss_mask"] * is_res)
    out = loss_sums(graphdef, params, both, encoder_only=encoder_only)[1]
    out_res = loss_sums(graphdef, params, res, encoder_only=encoder_only)[1]
    return out | {"res_ce": out_res["ce"], "res_tokens": out_res["tokens"]}


@dataclasses.dataclass
class Trainer:
    """The compiled pieces for one (model config, optimizer config, mesh)."""

    cfg: AnkhConfig
    oc: OptimConfig
    mesh: Mesh
    seed: int = 0
    freeze: tuple[str, ...] = ()  # FREEZE_GROUPS names: zero updates, no optimizer state
    residues: Any = RESIDUE_IDS  # eval_step's residue targets: the tokenizer's residue_table()
    encoder_only: bool = False  # the mlm objective: the loss is the LM head over the encoder

    def __post_init__(self) -> None:
        self.graphdef = graphdef_of(self.cfg, self.oc.compute_dtype, self.oc.remat)
        self.tx = with_frozen(make_optimizer(self.oc), self.freeze)
        abstract = nnx.split(nnx.eval_shape(lambda: build_model(self.cfg, 0)))[1]
        self.param_shardings = sharding.param_shardings(abstract, self.mesh)
        rep = sharding.replicated(self.mesh)
        self._init = jax.jit(
            self._init_fn, out_shardings={"params": self.param_shardings, "step": rep, "rng": rep}
        )
        # Optimizer-state shardings follow the params' (XLA propagates through tx.init).
        self._opt_init = jax.jit(self.tx.init)
        self._step: Callable | None = None
        self._eval = jax.jit(
            lambda p, b: eval_step(self.graphdef, p, b, self.residues, self.encoder_only)
        )

    def _init_fn(self) -> dict:
        params = nnx.split(build_model(self.cfg, self.seed))[1].to_pure_dict()
        return {
            "params": params,
            "step": jnp.zeros((), jnp.int32),
            "rng": jax.random.key_data(jax.random.key(self.seed)),
        }

    def init_state(self, flat: dict[tuple, Any] | None = None) -> dict:
        """Step 0: params from the seed, or ``flat`` ({state path: array}, e.g.
        ``Resolved.load_params()``: continued pretraining) placed on the mesh; fresh optimizer
        state either way."""
        with jax.set_mesh(self.mesh):
            st = self._init()
            if flat is not None:
                st["params"] = self._place(flat, st["params"])
            st["opt_state"] = self._opt_init(st["params"])
        return st

    def _place(self, flat: dict[tuple, Any], like: dict) -> dict:
        paths = [_key(p) for p, _ in jax.tree_util.tree_flatten_with_path(like)[0]]
        if set(paths) != set(flat):
            extra, missing = (
                sorted(set(flat) - set(paths), key=str),
                sorted(set(paths) - set(flat), key=str),
            )
            raise ValueError(
                f"weights do not match the model: unexpected {extra[:3]}, missing {missing[:3]}"
            )

        def put(path, ref):
            w = np.asarray(flat[_key(path)], np.float32)
            if w.shape != ref.shape:
                raise ValueError(
                    f"weight {path} has shape {w.shape}, the model expects {ref.shape}"
                )
            # Each process supplies the slices its devices hold: works for any process count.
            return jax.make_array_from_callback(w.shape, ref.sharding, lambda idx: w[idx])

        return jax.tree_util.tree_map_with_path(put, like)

    def abstract_state(self) -> Any:
        """ShapeDtypeStructs with shardings: the restore target for a checkpoint."""
        with jax.set_mesh(self.mesh):
            st = jax.eval_shape(self._init)
            opt_sh = self._opt_init.lower(st["params"]).compile().output_shardings
            st["opt_state"] = jax.eval_shape(self.tx.init, st["params"])
        sh = self.state_shardings(opt_sh)
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), st, sh)

    def state_shardings(self, opt_sh: Any) -> dict:
        rep = sharding.replicated(self.mesh)
        return {"params": self.param_shardings, "opt_state": opt_sh, "step": rep, "rng": rep}

    def step_fn(self, state: Any) -> Callable:
        """The jitted step for states like ``state`` (arrays, or ``abstract_state()``'s
        ShapeDtypeStructs: ahead-of-time compiles lower this same function), donating the old
        state (its buffers are reused for the new one)."""
        if self._step is None:
            sh = self.state_shardings(jax.tree.map(lambda x: x.sharding, state["opt_state"]))
            self._step = jax.jit(
                lambda s, b: train_step(self.graphdef, self.tx, self.oc, s, b, self.encoder_only),
                donate_argnums=(0,),
                out_shardings=(sh, sharding.replicated(self.mesh)),
            )
        return self._step

    def step(self, state: dict, batch: dict) -> tuple[dict, dict]:
        with jax.set_mesh(self.mesh):
            return self.step_fn(state)(state, batch)

    def evaluate(self, params: dict, batch: dict) -> dict:
        with jax.set_mesh(self.mesh):
            return self._eval(params, batch)


def _key(path: tuple) -> tuple:
    """A pytree key path as a flat-params key (``('encoder', 'block', 0, ...)``)."""
    return tuple(getattr(k, "key", getattr(k, "idx", k)) for k in path)


def counts_entropy(counts: Any) -> float:
    """Entropy (nats) of the distribution of id ``counts`` (summed over hosts, say); nan if empty."""
    counts = np.asarray(counts, np.float64)
    p = counts[counts > 0] / counts.sum() if counts.sum() > 0 else counts[:0]
    return float(-(p * np.log(p)).sum()) if len(p) else math.nan
