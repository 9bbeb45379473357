"""High-N decoder fine-tuning: adapt the decoder to a protein family with the encoder frozen.

As the Ankh paper's High-N generation: the family is trained with the pretraining objective
(1-gram partial de-masking, ``ankh.objective``) and the pretraining loss/optimizer
(``ankh.training.loss_sums`` / ``make_optimizer``); only ``decoder.*`` and ``lm_head`` change
(the mechanism ``jobs.pretrain train.freeze=[encoder]`` uses: the encoder's and the shared
embedding's updates are zero; the encoder reads that embedding).
Training is the pretraining ``ankh.training.Trainer`` itself (``freeze=("encoder",)``: its step,
optimizer and evaluation) fed one family sequence per row of an ``ankh.packing`` batch, on one
device; the result is an ``Ankh`` (save it with ``save_hf``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ankh import sharding
from ankh.objective import Objective, ObjectiveConfig
from ankh.packing import PackSpec, build_batch
from ankh.training import MODEL_KEYS, OptimConfig, Trainer

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


def _trainer(model: Any, cfg: FinetuneConfig) -> Trainer:
    """The pretraining ``Trainer`` with the encoder frozen, on one device (a family fits one)."""
    oc = (
        cfg.optim
        if cfg.optim.total_steps
        else dataclasses.replace(cfg.optim, total_steps=cfg.steps)
    )
    # Compute in the model's own dtype (``ankh.load``'s "auto"), as the model was loaded.
    oc = dataclasses.replace(oc, compute_dtype=jnp.dtype(model.dtype).name)
    mesh = sharding.make_mesh({"data": 1}, devices=jax.devices()[:1])
    residues = model.tokenizer.residue_table(model.config.vocab_size)
    return Trainer(model.config, oc, mesh, seed=cfg.seed, freeze=FROZEN, residues=residues)


def _pack_spec(model: Any, cfg: FinetuneConfig, longest: int) -> PackSpec:
    """One sequence per row; shapes fit the family (the objective crops to max_residues)."""
    ocfg = cfg.objective
    ocfg = dataclasses.replace(ocfg, max_residues=min(ocfg.max_residues, longest))
    return PackSpec(
        rows=cfg.batch_size,
        enc_len=ocfg.max_encoder_tokens(),
        dec_len=ocfg.max_decoder_tokens(),
        max_segments=1,
        pad_id=model.tokenizer.pad_id,
        decoder_start_id=model.config.decoder_start_token_id,
    )


def _to_ankh(model: Any, params: dict) -> Any:
    """``params`` in a new model of ``model``'s class (an ``Ankh``: no import of ankh.api)."""
    state = jax.tree.map(lambda x: x, model.params)
    nnx.replace_by_pure_dict(state, jax.device_get(params))
    return type(model)(model.config, nnx.merge(model.graphdef, state), model.tokenizer)


def finetune_decoder(
    model: Any, sequences: Sequence[str], cfg: FinetuneConfig = FinetuneConfig(), callback=None
) -> tuple[Any, dict[str, Any]]:
    """Fine-tune ``model``'s decoder on ``sequences``; returns (new Ankh, history dict)."""
    lead = model.num_prefix  # ankh3's [NLU] is not a residue to learn
    toks = [t[lead:-1] for t in model.tokenize(list(sequences))]  # residues, no </s>
    if len(toks) < 2:
        raise ValueError("need at least 2 family sequences")
    order = np.random.default_rng(cfg.seed).permutation(len(toks))
    n_eval = int(round(cfg.eval_fraction * len(toks)))
    held, train = [toks[i] for i in order[:n_eval]], [toks[i] for i in order[n_eval:]]
    held = held or train
    trainer, objective = _trainer(model, cfg), Objective(cfg.objective, model.tokenizer)
    spec, bs = _pack_spec(model, cfg, longest=max(len(t) for t in toks)), cfg.batch_size

    def batch(seqs: Sequence[np.ndarray], ids: Sequence[int], epoch: int) -> dict:
        ex = [objective(s, cfg.seed, epoch, int(i)) for s, i in zip(seqs, ids)]
        rows = [[r] for r in range(len(ex))]
        b = build_batch(rows, [e for e, _ in ex], [t for _, t in ex], list(ids), spec)
        return sharding.global_batch({k: b[k] for k in MODEL_KEYS}, trainer.mesh)

    def mean_log_likelihood(params: dict, epoch: int = 10**6) -> float:
        """Mean log p(target token) over fixed (seeded) maskings of ``held`` (higher = better)."""
        sums = [
            jax.device_get(
                trainer.evaluate(params, batch(held[i : i + bs], range(i, i + bs), epoch))
            )
            for i in range(0, len(held), bs)
        ]
        return -sum(float(s["ce"]) for s in sums) / max(sum(float(s["tokens"]) for s in sums), 1.0)

    state = trainer.init_state(model.flat_params())  # a copy: the step donates its state
    hist: dict[str, Any] = {
        "train_loss": [],
        "eval": [(0, mean_log_likelihood(state["params"]))],
        "n_train": len(train),
        "n_eval": n_eval,
    }
    per_epoch = max(1, -(-len(train) // bs))
    for step in range(cfg.steps):
        epoch, k = divmod(step, per_epoch)
        idx = np.random.default_rng([cfg.seed, epoch]).permutation(len(train))[
            k * bs : (k + 1) * bs
        ]
        state, metrics = trainer.step(state, batch([train[i] for i in idx], idx, epoch))
        hist["train_loss"].append(float(metrics["loss"]))
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            hist["eval"].append((step + 1, mean_log_likelihood(state["params"])))
            log.info(
                "step %d loss %.4f held-out mean log-lik %.4f",
                step + 1,
                hist["train_loss"][-1],
                hist["eval"][-1][1],
            )
        if callback:  # after every step (a progress bar); hist["eval"] grows at eval steps
            callback(step + 1, hist)
    return _to_ankh(model, state["params"]), hist
