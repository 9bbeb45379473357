"""The linear probe: one implementation, used by ``jobs.evaluate`` (``--head linear``) and by the
in-training probes (``ankh_platform.train.probe``), so one set of features gives one "linear"
figure wherever it is measured.

A linear model on frozen features is a convex problem, so it is fit exactly rather than trained:
features standardised by the training rows' mean and std, then full-batch L-BFGS for a fixed
number of iterations from zero weights on the mean loss + ``l2``/2 |W|^2. No seed, no batch
order, no early stopping: the same features and labels give bit-identical figures.

Losses by target: ``softmax`` (multinomial logistic regression; class ids), ``sigmoid``
(independent logistic regressions; multi-hot rows), ``squared`` (ridge regression; one value).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax

Loss = Literal["softmax", "sigmoid", "squared"]


@dataclasses.dataclass(frozen=True)
class LinearProbeConfig:
    steps: int = 100  # L-BFGS iterations (fixed: the fit is deterministic)
    l2: float = 1e-3  # on standardised features

    def __post_init__(self) -> None:
        if self.steps < 1 or self.l2 < 0:
            raise ValueError(f"linear probe: steps >= 1 and l2 >= 0, got {self.steps}, {self.l2}")


def standardise(train_x: list[np.ndarray], *others: list[np.ndarray]) -> tuple[np.ndarray, ...]:
    """Row features (lists of ``[n_i, d]``) as standardised float32 matrices, by the training
    rows' mean and std: the training matrix, then one per entry of ``others``."""
    x = np.concatenate(train_x).astype(np.float32)
    mean, std = x.mean(0), x.std(0)
    std = np.where(std > 1e-6, std, 1.0)  # constant columns (one-hot's unused ids) stay 0
    rest = [(np.concatenate(o).astype(np.float32) - mean) / std for o in others]
    return ((x - mean) / std, *rest)


def _loss(loss: Loss, logits: jax.Array, y: jax.Array) -> jax.Array:
    if loss == "softmax":
        return jnp.mean(
            jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, y[:, None], -1)[:, 0]
        )
    if loss == "sigmoid":
        return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, y))
    return jnp.mean(jnp.square(logits[:, 0] - y))


@functools.partial(jax.jit, static_argnames=("loss", "outputs", "steps"))
def fit_logits(
    x: jax.Array,
    y: jax.Array,
    x_eval: jax.Array,
    loss: Loss,
    outputs: int,
    steps: int = 100,
    l2: float = 1e-3,
) -> jax.Array:
    """Fit ``x -> y`` (``x`` standardised, ``[n, d]``) with ``steps`` L-BFGS iterations from
    zeros; returns the logits (regression: the values) ``[m, outputs]`` of ``x_eval``."""
    params = {
        "w": jnp.zeros((x.shape[1], outputs), jnp.float32),
        "b": jnp.zeros((outputs,), jnp.float32),
    }

    def objective(p):
        return _loss(loss, x @ p["w"] + p["b"], y) + 0.5 * l2 * jnp.sum(jnp.square(p["w"]))

    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(objective)

    def body(_, carry):
        p, state = carry
        value, grad = value_and_grad(p, state=state)
        updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=objective)
        return optax.apply_updates(p, updates), state

    params, _ = jax.lax.fori_loop(0, steps, body, (params, opt.init(params)))
    return x_eval @ params["w"] + params["b"]


def fit_accuracy(
    x: np.ndarray,
    train_y: list[np.ndarray],
    xt: np.ndarray,
    test_y: list[np.ndarray],
    classes: int,
    cfg: LinearProbeConfig = LinearProbeConfig(),
) -> float:
    """Accuracy over held-out rows of the softmax probe over ``classes`` classes, fit on
    standardised features (``standardise``)."""
    y, yt = np.concatenate(train_y).astype(np.int32), np.concatenate(test_y).astype(np.int32)
    if len(x) != len(y) or len(xt) != len(yt):
        raise ValueError(f"features for {len(x)}/{len(xt)} residues, labels for {len(y)}/{len(yt)}")
    logits = fit_logits(x, y, xt, "softmax", classes, cfg.steps, cfg.l2)
    return float(np.mean(np.asarray(jnp.argmax(logits, axis=-1)) == yt))
