"""Probe heads on frozen embeddings, scored: the engine behind ``jobs.evaluate``.

For each task x embedder (checkpoints + baselines) x head: embeddings come from the cache. The
``linear`` head is the linear probe (``evaluate.linear``, the one the in-training probe fits:
standardised features, full-batch L-BFGS to a fixed iteration count, deterministic) fit on the
train split. The trained heads (``mlp``, ``convbert``; and ``linear`` on contacts, whose
pairwise head is not a linear model) come from ``ankh.probes``, trained with AdamW on the train
split (seeded shuffling, init and dropout), early-stopped on the validation metric, the best
state scored on test.
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
from flax import nnx

from ankh.batching import DEFAULT_BATCH_TOKENS
from ankh.probes import make_head
from ankh.seeds import derive_seed
from ankh_platform.core import progress
from ankh_platform.evaluate.batches import iter_batches, pack, pool, unpack
from ankh_platform.evaluate.linear import LinearProbeConfig, fit_logits, standardise
from ankh_platform.evaluate.metrics import score
from ankh_platform.evaluate.tasks import TaskData, TaskLimits

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class HeadTrainConfig:
    """How the heads are fit (``jobs.evaluate``'s ``train.*``)."""

    batch_size: int = 16  # sequences per step (per-protein MLP heads: 4x this)
    contact_batch_size: int = 2
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    max_epochs: int = 30
    patience: int = 3  # epochs without a better validation metric before stopping
    max_steps_per_epoch: int = 0  # 0 = a full pass over train
    pack_chunk: int = 64  # per-residue MLP: residues per packed row (batch_size rows a step)
    linear: LinearProbeConfig = LinearProbeConfig()  # the linear probe's fit (no AdamW, no epochs)


@dataclasses.dataclass(frozen=True)
class EvaluateJobConfig:
    """``jobs.evaluate``'s configuration."""

    checkpoints: tuple[str, ...] = ("tiny",)
    tasks: tuple[str, ...] = ("ss3",)
    heads: tuple[str, ...] = ("linear",)
    baselines: tuple[str, ...] = (
        "onehot",
        "random",
    )  # random = random init of each checkpoint's shape
    output: str = "outputs/evaluate"
    cache_dir: str = "outputs/embed_cache"  # "" disables the cache
    seed: int = 0
    layer: int | None = None  # encoder layer to probe (1-based); default: the final one
    embed_batch_tokens: int = DEFAULT_BATCH_TOKENS
    go_top_n: int = 20
    contact_protein: str = ""  # chain id for the contact-map plot (default: first test chain)
    plots: bool = True
    limits: TaskLimits = TaskLimits()
    train: HeadTrainConfig = HeadTrainConfig()


# ---- loss and steps --------------------------------------------------------------------------------
def loss_fn(kind: str, out: jax.Array, b: dict[str, jax.Array]) -> jax.Array:
    """Mean loss of a batch; an optional ``b["class_w"]`` weighs each class (each term's
    positives, multi-label) -- ``jobs.finetune``'s class weights."""
    cw = b.get("class_w")
    if kind == "residue_class":  # out [B, L, C]
        w = (b["y"] >= 0).astype(jnp.float32)
        if cw is not None:
            w = w * cw[jnp.maximum(b["y"], 0)]
        ce = optax.softmax_cross_entropy_with_integer_labels(out, jnp.maximum(b["y"], 0))
        return jnp.sum(ce * w) / jnp.maximum(jnp.sum(w), 1.0)
    if kind == "contacts":  # out [B, L, L]; pairs with separation >= 6 only
        idx = jnp.arange(out.shape[1])
        sep = (jnp.abs(idx[:, None] - idx[None, :]) >= 6).astype(jnp.float32)
        w = b["mask"][:, :, None] * b["mask"][:, None, :] * sep[None]
        bce = optax.sigmoid_binary_cross_entropy(out, b["y"])
        return jnp.sum(bce * w) / jnp.maximum(jnp.sum(w), 1.0)
    w = b["row_w"]
    if kind == "protein_class":
        per = optax.softmax_cross_entropy_with_integer_labels(out, b["y"])
        w = w if cw is None else w * cw[b["y"]]
    elif kind == "protein_reg":
        per = jnp.square(out[:, 0] - b["y"])
    else:  # multilabel
        bce = optax.sigmoid_binary_cross_entropy(out, b["y"])
        if cw is not None:
            bce = bce * jnp.where(b["y"] > 0, cw[None, :], 1.0)
        per = jnp.mean(bce, axis=-1)
    return jnp.sum(per * w) / jnp.maximum(jnp.sum(w), 1.0)


@nnx.jit(static_argnums=(0,))
def train_step(
    kind: str, model: nnx.Module, opt: nnx.Optimizer, b: dict[str, jax.Array]
) -> jax.Array:
    def lf(m):
        return loss_fn(kind, m(b["x"], b["mask"]), b)

    loss, grads = nnx.value_and_grad(lf)(model)
    opt.update(model, grads)
    return loss


@nnx.jit
def forward(model: nnx.Module, x: jax.Array, mask: jax.Array) -> jax.Array:
    return model(x, mask)


def predict(task: TaskData, model: nnx.Module, xs, ys, batch: int, y_stats) -> list[np.ndarray]:
    """Per-example outputs (probabilities / regression values / contact probabilities)."""
    model.eval()
    order = np.argsort([len(x) for x in xs], kind="stable")  # similar lengths -> little padding
    out: list[Any] = [None] * len(xs)
    for rows, b in iter_batches(task, xs, ys, batch, order, y_stats):
        o = np.asarray(forward(model, jnp.asarray(b["x"]), jnp.asarray(b["mask"])))
        for r, i in enumerate(rows):
            n = len(xs[i])
            if task.kind == "residue_class":
                out[i] = jax.nn.softmax(o[r, :n], axis=-1)
            elif task.kind == "contacts":
                out[i] = np.asarray(jax.nn.sigmoid(o[r, :n, :n]))
            elif task.kind == "protein_class":
                out[i] = np.asarray(jax.nn.softmax(o[r]))
            elif task.kind == "multilabel":
                out[i] = np.asarray(jax.nn.sigmoid(o[r]))
            else:
                out[i] = float(o[r, 0]) * y_stats[1] + y_stats[0]
    model.train()
    return [np.asarray(p) for p in out]


# ---- training ----------------------------------------------------------------------------------------
def _n_out(task: TaskData) -> int:
    return 1 if task.kind in ("protein_reg", "contacts") else len(task.classes)


# What the linear probe minimises, by task kind (contacts: a trained pairwise head instead).
LINEAR_LOSS = {
    "residue_class": "softmax",
    "protein_class": "softmax",
    "multilabel": "sigmoid",
    "protein_reg": "squared",
}


def _linear_targets(task: TaskData, ys: list[Any], y_stats: tuple[float, float]) -> np.ndarray:
    if task.kind == "residue_class":
        return np.concatenate([np.asarray(y) for y in ys]).astype(np.int32)
    if task.kind == "multilabel":
        return np.stack(ys).astype(np.float32)
    if task.kind == "protein_reg":
        return ((np.asarray(ys, np.float64) - y_stats[0]) / y_stats[1]).astype(np.float32)
    return np.asarray(ys, np.int32)


def _linear_outputs(task: TaskData, logits: np.ndarray, y_stats) -> np.ndarray:
    """The probe's logits as ``predict``'s outputs (probabilities, or the regression value)."""
    if task.kind in ("residue_class", "protein_class"):
        return np.asarray(jax.nn.softmax(logits, axis=-1))
    if task.kind == "multilabel":
        return np.asarray(jax.nn.sigmoid(logits))
    return logits[:, 0].astype(np.float64) * y_stats[1] + y_stats[0]


def fit_linear_head(
    task: TaskData, data: dict[str, tuple[list, list]], lc: LinearProbeConfig
) -> tuple[dict[str, Any], None, dict[str, Any]]:
    """The linear probe (``evaluate.linear``) fit on train, scored on valid and test."""
    t0 = time.perf_counter()
    xs = {s: (pool(d[0]) if task.per_protein else d[0]) for s, d in data.items()}
    y_stats = (0.0, 1.0)
    if task.kind == "protein_reg":  # standardise targets with train statistics
        tr = np.asarray(data["train"][1], np.float64)
        y_stats = (float(tr.mean()), float(tr.std() or 1.0))
    x, x_eval = standardise(xs["train"], xs["valid"] + xs["test"])
    y = _linear_targets(task, data["train"][1], y_stats)
    n_out = _n_out(task)
    logits = np.asarray(fit_logits(x, y, x_eval, LINEAR_LOSS[task.kind], n_out, lc.steps, lc.l2))
    out = _linear_outputs(task, logits, y_stats)  # one row per residue (per protein: per example)
    if task.per_protein:
        per = list(out)
    else:
        per = np.split(out, np.cumsum([len(r) for r in xs["valid"] + xs["test"]])[:-1])
    n_valid = len(xs["valid"])
    valid = score(task, per[:n_valid], data["valid"][1], []) if n_valid else {"main": "none"}
    figures = score(task, per[n_valid:], data["test"][1], [])
    result = {
        "valid_" + figures["main"]: float(valid.get(valid["main"], np.nan)),
        "fit": "lbfgs",
        "steps": lc.steps,
        "l2": lc.l2,
        "train_seconds": round(time.perf_counter() - t0, 2),
        "head_params": int(x.shape[1] * n_out + n_out),
        "test": figures,
        "history": [],
    }
    return result, None, {"test": per[n_valid:]}


def train_head(
    task: TaskData, head: str, data: dict[str, tuple[list, list]], tc: HeadTrainConfig, seed: int
) -> tuple[dict[str, Any], nnx.Module | None, dict[str, Any]]:
    """Fit one head; returns (result figures, best model (None for the linear probe), test
    predictions by split name)."""
    if head == "linear" and task.kind in LINEAR_LOSS:
        return fit_linear_head(task, data, tc.linear)
    pooled = task.per_protein and head != "convbert"
    packed = task.kind == "residue_class" and head != "convbert"
    xs = {s: (pool(d[0]) if pooled else d[0]) for s, d in data.items()}
    ys = {s: d[1] for s, d in data.items()}
    if packed:  # position-independent heads: pack residues into fixed chunks (one jit shape)
        for s in xs:
            xs[s], ys[s] = pack(xs[s], tc.pack_chunk), pack(ys[s], tc.pack_chunk)
    y_stats = (0.0, 1.0)
    if task.kind == "protein_reg":  # standardise targets with train statistics
        tr = np.asarray(ys["train"], np.float64)
        y_stats = (float(tr.mean()), float(tr.std() or 1.0))
    batch = (
        tc.contact_batch_size if task.kind == "contacts" else tc.batch_size * (4 if pooled else 1)
    )
    dim = xs["train"][0].shape[1]
    model = make_head(
        head,
        dim,
        _n_out(task),
        task.per_protein,
        nnx.Rngs(params=seed, dropout=derive_seed(seed, "dropout")),
        contacts=task.kind == "contacts",
    )
    opt = nnx.Optimizer(
        model, optax.adamw(tc.learning_rate, weight_decay=tc.weight_decay), wrt=nnx.Param
    )
    rng = np.random.default_rng(seed)
    best, best_state, best_epoch, history, steps = -np.inf, nnx.clone(model), 0, [], 0
    t0 = time.perf_counter()
    for epoch in range(1, tc.max_epochs + 1):
        order = rng.permutation(len(xs["train"]))
        if tc.max_steps_per_epoch:
            order = order[: tc.max_steps_per_epoch * batch]
        losses = []
        for _, b in iter_batches(task, xs["train"], ys["train"], batch, order, y_stats):
            losses.append(
                float(train_step(task.kind, model, opt, {k: jnp.asarray(v) for k, v in b.items()}))
            )
            steps += 1
        val_pred = predict(task, model, xs["valid"], ys["valid"], batch, y_stats)
        if packed:
            val_pred = unpack(val_pred, [len(x) for x in data["valid"][0]])
        val = score(task, val_pred, data["valid"][1], [])
        v = val[val["main"]]
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "valid": float(v)})
        log.info(
            "%s/%s epoch %d loss %.4f valid %s %.4f",
            task.name,
            head,
            epoch,
            np.mean(losses),
            val["main"],
            v,
        )
        if v > best:
            best, best_state, best_epoch = v, nnx.clone(model), epoch
        elif epoch - best_epoch >= tc.patience:
            break
    test_pred = predict(task, best_state, xs["test"], ys["test"], batch, y_stats)
    if packed:
        test_pred = unpack(test_pred, [len(x) for x in data["test"][0]])
    figures = score(task, test_pred, data["test"][1], [])
    result = {
        "valid_" + figures["main"]: float(best),
        "best_epoch": best_epoch,
        "epochs": len(history),
        "steps": steps,
        "train_seconds": round(time.perf_counter() - t0, 2),
        "head_params": int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))),
        "test": figures,
        "history": history,
    }
    return result, best_state, {"test": test_pred}


def run_evaluation(cfg: EvaluateJobConfig) -> dict[str, Any]:
    """Every task x embedder x head; returns the JSON-able report (and writes it, see eval_report)."""
    from ankh_platform.evaluate.embedders import EmbeddingCache, make_extractor
    from ankh_platform.evaluate.task_specs import load_task

    cache = EmbeddingCache(cfg.cache_dir or None)
    specs = list(cfg.checkpoints)
    if "random" in cfg.baselines:
        specs += [
            f"random:{c}" for c in cfg.checkpoints if not c.startswith("random:") and c != "onehot"
        ]
    if "onehot" in cfg.baselines and "onehot" not in specs:
        specs.append("onehot")
    specs = list(dict.fromkeys(specs))
    tasks = [load_task(t, cfg.limits, cfg.go_top_n, cfg.seed) for t in cfg.tasks]
    report: dict[str, Any] = {"config": _jsonable(cfg), "tasks": {}, "embedders": {}, "results": []}
    plots: list[dict[str, Any]] = []
    for task in tasks:
        report["tasks"][task.name] = {
            "kind": task.kind,
            "classes": task.classes,
            "info": task.info,
            "sizes": {s: len(sp.ids) for s, sp in task.splits.items()},
        }
    bar = progress.Progress(
        "evaluate", total=len(specs) * len(tasks) * len(cfg.heads), unit="probes"
    )
    for spec in specs:
        emb = make_extractor(spec, cfg.seed, cfg.layer, cfg.embed_batch_tokens)
        report["embedders"][spec] = {"key": emb.key, **emb.info}
        for task in tasks:
            t0 = time.perf_counter()
            every = [q for sp in task.splits.values() for q in sp.seqs]
            vecs = iter(cache.get(emb, every))  # one call: each jit shape compiles once
            data = {
                s: ([next(vecs) for _ in sp.seqs], sp.labels, sp.ids)
                for s, sp in task.splits.items()
            }
            embed_s = round(time.perf_counter() - t0, 2)
            for head in cfg.heads:
                res, _, preds = train_head(task, head, data, cfg.train, cfg.seed)
                report["results"].append(
                    {
                        "task": task.name,
                        "checkpoint": spec,
                        "head": head,
                        "seed": cfg.seed,
                        "embed_seconds": embed_s,
                        **res,
                    }
                )
                plots.append(
                    {
                        "task": task,
                        "checkpoint": spec,
                        "head": head,
                        "pred": preds["test"],
                        "result": res,
                    }
                )
                bar.update()
        del emb
    bar.close()
    report["_plots"] = plots
    return report


def _jsonable(obj: Any) -> Any:
    from ankh_platform.core.config import to_dict

    return to_dict(obj)
