"""The in-training representation probes: secondary-structure accuracy of linear classifiers
on frozen features -- SS3 Q3 (``ss3_q3``) and, when ``eval.probe_tasks`` names it, SS8 Q8
(``ss8_q8``).

A fixed small slice of PDB/DSSP chains (``evaluate.tasks.load_pdb_task``: split by PDB entry,
held-out chains near-identical to a training chain dropped), cropped to ``max_residues``; its
DSSP labels in both alphabets (SS8 HGIEBTSC; SS3 = H,G,I->H; E,B->E; rest->C, derived from the
SS8 ids, so every task scores the same residues); per-residue features of the encoder
(``Ankh.embed``: the one encoder program and batching policy), computed once per evaluation and
shared by every task; per task the linear probe of ``evaluate.linear`` (the one ``jobs.evaluate``
fits: multinomial logistic regression on standardised features, a fixed number of full-batch
L-BFGS iterations from zero weights, deterministic); accuracy over every held-out residue.
A few seconds at the ``tiny``/``small`` shapes on 2 cores.

``SS3Probe`` scores any feature function, the one-hot baseline and a random-init model;
``RunProbe`` is what the training loop calls (rank 0 probes, every process stays in lockstep).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx

from ankh.api import Ankh
from ankh.config import AnkhConfig
from ankh.model import AnkhModel
from ankh.tokenizer import AnkhTokenizer
from ankh.training import counts_entropy
from ankh_platform.core.samples import pdb_dir
from ankh_platform.evaluate.embedders import OneHotFeatures
from ankh_platform.evaluate.linear import LinearProbeConfig, fit_accuracy, standardise
from ankh_platform.evaluate.tasks import SS3, SS8, SS8_TO_SS3, TaskLimits, load_pdb_task
from ankh_platform.train.config import PROBE_METRICS

log = logging.getLogger(__name__)
Embed = Callable[[list[str]], list[np.ndarray]]  # sequences -> per-residue [L_i, d] features
CLASSES = {"ss3": len(SS3), "ss8": len(SS8)}  # a probe task's class count
# SS8 id -> SS3 id, the mapping ``evaluate.tasks.ss_labels`` applies to DSSP letters
_SS8_TO_SS3_IDS = np.array([SS3.index(SS8_TO_SS3.get(c, "C")) for c in SS8], np.int8)


@dataclasses.dataclass(frozen=True)
class Chains:
    """The probes' fixed data: sequences and, per task, (train, test) class ids per chain
    (``labels["ss3"]``: 0 H, 1 E, 2 C; ``labels["ss8"]``: HGIEBTSC order)."""

    train_seqs: list[str]
    test_seqs: list[str]
    source: str
    labels: dict[str, tuple[list[np.ndarray], list[np.ndarray]]]

    @property
    def train_labels(self) -> list[np.ndarray]:  # SS3
        return self.labels["ss3"][0]

    @property
    def test_labels(self) -> list[np.ndarray]:  # SS3
        return self.labels["ss3"][1]


def load_chains(train: int, test: int, max_residues: int, root: Any = None) -> Chains:
    """The first ``train``/``test`` chains of the PDB tasks' fixed hash order (by PDB entry),
    each cropped to its first ``max_residues`` residues, with SS3 and SS8 labels. The chains'
    selection does not depend on the label alphabet, so one SS8 load serves both tasks."""
    task = load_pdb_task("ss8", TaskLimits(train=train, valid=0, test=test), root=root or pdb_dir())
    tr, te = task.splits["train"], task.splits["test"]
    if not tr.ids or not te.ids:
        raise ValueError(
            f"probe: no {'train' if not tr.ids else 'test'} chains in {task.info['source']}"
        )
    crop = lambda xs: [x[:max_residues] for x in xs]  # noqa: E731
    ss3 = lambda xs: [_SS8_TO_SS3_IDS[x] for x in xs]  # noqa: E731  int8, as ss_labels(.., 3)
    tr8, te8 = crop(tr.labels), crop(te.labels)
    return Chains(
        crop(tr.seqs),
        crop(te.seqs),
        task.info["source"],
        {"ss3": (ss3(tr8), ss3(te8)), "ss8": (tr8, te8)},
    )


class SS3Probe:
    """``SS3Probe.load(...)`` once, then ``q3(embed)`` or, for every task in ``tasks``,
    ``scores(embed)`` (``{"ss3_q3": .., "ss8_q8": ..}``) for any feature function."""

    def __init__(
        self, chains: Chains, steps: int = 100, l2: float = 1e-3, tasks: tuple[str, ...] = ("ss3",)
    ):
        unknown = [t for t in tasks if t not in CLASSES]
        if unknown or not tasks:
            raise ValueError(f"probe tasks {list(tasks)}: give one or more of {list(CLASSES)}")
        self.chains, self.tasks = chains, tuple(tasks)
        self.fit = LinearProbeConfig(steps, l2)

    @classmethod
    def load(
        cls,
        train_chains: int = 250,
        test_chains: int = 150,
        max_residues: int = 127,
        steps: int = 100,
        l2: float = 1e-3,
        root: Any = None,
        tasks: tuple[str, ...] = ("ss3",),
    ) -> SS3Probe:
        return cls(load_chains(train_chains, test_chains, max_residues, root), steps, l2, tasks)

    def scores(self, embed: Embed, suffix: str = "") -> dict[str, float]:
        """Each task's accuracy, keyed by its metric name + ``suffix``: the chains are embedded
        once (the expensive part) and one regression is fit per task on those features."""
        c = self.chains
        x, xt = standardise(embed(c.train_seqs), embed(c.test_seqs))
        out = {}
        for t in self.tasks:
            train_y, test_y = c.labels[t]
            out[PROBE_METRICS[t] + suffix] = fit_accuracy(
                x, train_y, xt, test_y, CLASSES[t], self.fit
            )
        return out

    def scores_model(self, model: Ankh, suffix: str = "") -> dict[str, float]:
        return self.scores(lambda seqs: model.embed(seqs, per_residue=True), suffix)

    def q3(self, embed: Embed) -> float:
        c = self.chains
        x, xt = standardise(embed(c.train_seqs), embed(c.test_seqs))
        return fit_accuracy(x, c.train_labels, xt, c.test_labels, len(SS3), self.fit)

    def q3_model(self, model: Ankh) -> float:
        return self.q3(lambda seqs: model.embed(seqs, per_residue=True))

    def q3_onehot(self) -> float:
        """The no-context baseline: one-hot residues (``evaluate.embedders.OneHotFeatures``)."""
        return self.q3(OneHotFeatures().embed)

    def q3_random_init(
        self, config: AnkhConfig, tokenizer: AnkhTokenizer | None = None, seed: int = 1
    ) -> float:
        """A model of the same shape with fresh weights from ``seed``."""
        return self.q3_model(Ankh(config, AnkhModel(config, nnx.Rngs(seed)), tokenizer))


def host_params(params: dict) -> dict:
    """The full params as NumPy on this host. With several processes a collective: every
    process must call it (sharded params are gathered from all of them)."""
    if jax.process_count() == 1:
        return jax.device_get(params)
    from jax.experimental import multihost_utils

    return jax.tree.map(np.asarray, multihost_utils.process_allgather(params, tiled=True))


def residue_unigram(batches: list[dict[str, np.ndarray]], table: np.ndarray) -> float:
    """Unigram entropy (nats) of the held-out residue targets (``table``: the tokenizer's
    ``residue_table``), over every process's eval batches: the loss of a model that knows
    residue frequencies only. With several processes a collective: every process calls it."""
    counts = np.zeros(len(table), np.int64)
    for b in batches:
        lab = np.asarray(b["labels"])
        keep = (np.asarray(b["loss_mask"]) > 0) & table[lab]
        counts += np.bincount(lab[keep], minlength=len(table))
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        counts = np.asarray(multihost_utils.process_allgather(counts)).sum(0)
    return counts_entropy(counts)


class RunProbe:
    """The training loop's probe. Only process 0 loads data and fits; the others only take
    part in ``host_params``'s gather, then go on to their next step (whose collectives wait
    for process 0), so every process stays in lockstep."""

    def __init__(
        self, ec: Any, config: AnkhConfig, tokenizer: AnkhTokenizer, seed: int, primary: bool
    ):
        self.ec, self.config, self.tokenizer, self.seed = ec, config, tokenizer, seed
        self.enabled, self.primary = bool(ec.probe), primary
        self.probe: SS3Probe | None = None
        self.model: Ankh | None = None  # one Ankh holder: its compiled encoder serves every call
        if self.enabled and primary:
            self.probe = SS3Probe.load(
                ec.probe_train_chains,
                ec.probe_test_chains,
                ec.probe_max_residues,
                ec.probe_steps,
                ec.probe_l2,
                tasks=tuple(ec.probe_tasks),
            )
            c = self.probe.chains
            log.info(
                "linear probes %s: %d train / %d test chains from %s",
                "+".join(self.probe.tasks),
                len(c.train_seqs),
                len(c.test_seqs),
                c.source,
            )

    def _holder(self) -> Ankh:
        if self.model is None:  # random init from seed + 1: the baseline, and the params' shape
            self.model = Ankh(
                self.config, AnkhModel(self.config, nnx.Rngs(self.seed + 1)), self.tokenizer
            )
        return self.model

    def baselines(self) -> dict[str, float]:
        """Each task's ``<metric>_onehot`` and ``<metric>_random_init`` (e.g. ``ss3_q3_onehot``;
        process 0; {} elsewhere or when off)."""
        if self.probe is None or not self.ec.baselines:
            return {}
        out = self.probe.scores(OneHotFeatures().embed, "_onehot")
        if self.model is None:  # before any params are swapped in: still the random init
            out |= self.probe.scores_model(self._holder(), "_random_init")
        return out

    def __call__(self, params: dict) -> dict[str, float]:
        """``{"ss3_q3": ..., "ss8_q8": ...}`` (the configured tasks) of ``params`` on process 0;
        every process must call it."""
        if not self.enabled:
            return {}
        host = host_params(params)
        if self.probe is None:
            return {}
        model = self._holder()
        nnx.replace_by_pure_dict(model.params, host)
        return self.probe.scores_model(model)
