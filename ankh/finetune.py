"""High-N decoder fine-tuning: adapt the decoder to a protein family with the encoder frozen.

As the Ankh paper's High-N generation: the family is trained with the pretraining objective
(1-gram partial de-masking, ``ankh.objective``) and the pretraining loss/optimizer
(``ankh.training.loss_sums`` / ``make_optimizer``); only ``decoder.*`` and ``lm_head`` change
(``ankh.training.with_frozen``, the mechanism ``jobs.pretrain train.freeze=[encoder]`` uses:
the encoder's and the shared embedding's updates are zero; the encoder reads that embedding).
Single-process and jitted; the result is an ``Ankh`` (save it with ``save_hf``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from ankh.objective import Objective, ObjectiveConfig
from ankh.training import (
    MODEL_KEYS,
    OptimConfig,
    freeze_labels,
    loss_sums,
    make_optimizer,
    with_frozen,
)

log = logging.getLogger(__name__)
FROZEN = ("encoder",)  # ankh.training.FREEZE_GROUPS: the encoder and the shared embedding


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    steps: int = 200
    batch_size: int = 16
    seed: int = 0
    eval_fraction: float = 0.1  # family members held out to measure the likelihood
    eval_every: int = 50
    optim: OptimConfig = OptimConfig(
        optimizer="adamw", peak_lr=5e-4, warmup_steps=20, total_steps=0, clip_norm=1.0
    )
    objective: ObjectiveConfig = ObjectiveConfig()

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {self.eval_fraction}")


def labels_of(params: dict) -> dict:
    """'train' for decoder/lm_head leaves, 'freeze' for the encoder and the shared embedding."""
    return freeze_labels(params, FROZEN)


def make_batch(
    examples: Sequence[tuple[np.ndarray, np.ndarray]],
    rows: int,
    enc_len: int,
    dec_len: int,
    pad: int = 0,
    start: int = 0,
) -> dict[str, np.ndarray]:
    """Padded batch in the training contract (one sequence per row) from (enc ids, target ids)."""
    b = {
        k: np.zeros(
            (rows, enc_len if k in ("input_ids", "segment_ids", "positions") else dec_len),
            np.float32 if k == "loss_mask" else np.int32,
        )
        for k in MODEL_KEYS
    }
    for r, (enc, tgt) in enumerate(examples):
        if len(enc) > enc_len or len(tgt) > dec_len:
            raise ValueError(
                f"example {r} ({len(enc)}/{len(tgt)} tokens) exceeds {enc_len}/{dec_len}"
            )
        b["input_ids"][r, : len(enc)], b["segment_ids"][r, : len(enc)] = enc, 1
        b["labels"][r, : len(tgt)], b["loss_mask"][r, : len(tgt)] = tgt, 1.0
        b["decoder_input_ids"][r, : len(tgt)] = np.concatenate([[start], tgt[:-1]])
        b["decoder_segment_ids"][r, : len(tgt)] = 1
    b["input_ids"][b["segment_ids"] == 0] = pad
    b["positions"][:] = np.arange(enc_len)
    b["decoder_positions"][:] = np.arange(dec_len)
    return b


class DecoderFinetuner:
    """Holds params/optimizer state; ``step`` trains one batch, ``mean_log_likelihood`` scores."""

    def __init__(self, model: Any, cfg: FinetuneConfig, longest: int | None = None) -> None:
        # The result is built by the model's own class (an ``Ankh``): no import of ankh.api.
        self.ankh_cls, self.cfg, self.model_cfg = type(model), cfg, model.config
        self.tokenizer, self.graphdef, self.dtype = model.tokenizer, model.graphdef, model.dtype
        self._state = model.params
        # A copy: the step donates its inputs and must not free the caller's model.
        self.params = jax.tree.map(jnp.copy, nnx.to_pure_dict(model.params))
        oc = (
            cfg.optim
            if cfg.optim.total_steps
            else dataclasses.replace(cfg.optim, total_steps=cfg.steps)
        )
        self.tx = with_frozen(make_optimizer(oc), FROZEN)
        self.opt_state = self.tx.init(self.params)
        self.objective = Objective(cfg.objective, self.tokenizer)
        # Shapes fit the family (sequences are cropped to max_residues by the objective).
        ocfg = cfg.objective
        if longest is not None:
            ocfg = dataclasses.replace(ocfg, max_residues=min(ocfg.max_residues, longest))
        self.enc_len, self.dec_len = ocfg.max_encoder_tokens(), ocfg.max_decoder_tokens()
        self._step = jax.jit(self._step_fn, donate_argnums=(0, 1))
        self._loss = jax.jit(lambda p, b: loss_sums(self.graphdef, p, b)[1])

    def _step_fn(self, params, opt_state, batch):
        n = jnp.maximum(jnp.sum(batch["loss_mask"]), 1.0)
        grad_fn = jax.value_and_grad(lambda p: loss_sums(self.graphdef, p, batch)[0] / n)
        loss, grads = grad_fn(params)
        updates, opt_state = self.tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    def batch(self, seqs: Sequence[np.ndarray], ids: Sequence[int], epoch: int) -> dict:
        ex = [self.objective(s, self.cfg.seed, epoch, i) for s, i in zip(seqs, ids)]
        return make_batch(
            ex,
            self.cfg.batch_size,
            self.enc_len,
            self.dec_len,
            self.tokenizer.pad_id,
            self.model_cfg.decoder_start_token_id,
        )

    def step(self, batch: dict) -> float:
        self.params, self.opt_state, loss = self._step(self.params, self.opt_state, batch)
        return float(loss)

    def mean_log_likelihood(self, seqs: Sequence[np.ndarray], epoch: int = 10**6) -> float:
        """Mean log p(target token) over fixed (seeded) maskings of ``seqs`` (higher = better)."""
        ce = tokens = 0.0
        bs = self.cfg.batch_size
        for i in range(0, len(seqs), bs):
            out = self._loss(self.params, self.batch(seqs[i : i + bs], range(i, i + bs), epoch))
            ce, tokens = ce + float(out["ce"]), tokens + float(out["tokens"])
        return -ce / max(tokens, 1.0)

    def to_ankh(self) -> Any:
        state = jax.tree.map(lambda x: x, self._state)
        nnx.replace_by_pure_dict(state, jax.device_get(self.params))
        return self.ankh_cls(self.model_cfg, nnx.merge(self.graphdef, state), self.tokenizer)


def finetune_decoder(
    model: Any, sequences: Sequence[str], cfg: FinetuneConfig = FinetuneConfig(), callback=None
) -> tuple[Any, dict[str, Any]]:
    """Fine-tune ``model``'s decoder on ``sequences``; returns (new Ankh, history dict)."""
    lead = model.num_prefix  # ankh3's [NLU] is not a residue to learn
    toks = [t[lead:-1] for t in model.tokenize(list(sequences))]  # residues, no </s>
    if len(toks) < 2:
        raise ValueError("need at least 2 family sequences")
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(toks))
    n_eval = int(round(cfg.eval_fraction * len(toks)))
    held, train = [toks[i] for i in order[:n_eval]], [toks[i] for i in order[n_eval:]]
    held = held or train
    ft = DecoderFinetuner(model, cfg, longest=max(len(t) for t in toks))
    hist: dict[str, Any] = {
        "train_loss": [],
        "eval": [(0, ft.mean_log_likelihood(held))],
        "n_train": len(train),
        "n_eval": n_eval,
    }
    per_epoch = max(1, -(-len(train) // cfg.batch_size))
    for step in range(cfg.steps):
        epoch, k = divmod(step, per_epoch)
        perm = np.random.default_rng([cfg.seed, epoch]).permutation(len(train))
        idx = perm[k * cfg.batch_size : (k + 1) * cfg.batch_size]
        hist["train_loss"].append(ft.step(ft.batch([train[i] for i in idx], idx, epoch)))
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            hist["eval"].append((step + 1, ft.mean_log_likelihood(held)))
            log.info(
                "step %d loss %.4f held-out mean log-lik %.4f",
                step + 1,
                hist["train_loss"][-1],
                hist["eval"][-1][1],
            )
        if callback:  # after every step (a progress bar); hist["eval"] grows at eval steps
            callback(step + 1, hist)
    return ft.to_ankh(), hist
