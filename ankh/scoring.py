"""Likelihood scoring: teacher-forced log-likelihood, pseudo-log-likelihood, mutation scores.

Definitions (natural log throughout):

- ``token_log_probs(targets, inputs)``: log p(target token | encoder input, previous target
  tokens) for each target token, ``</s>`` included; ``log_likelihood`` sums them. ``inputs``
  defaults to the targets themselves (the "full reconstruction" reading of the decoder).
- ``masked_marginals(seq)``: for every position i, the encoder sees ``seq`` with residue i
  replaced by ``<extra_id_0>`` and the decoder is asked the first answer of Ankh's objective
  (``<extra_id_0> x_i </s>``): log p(. | start, <extra_id_0>) over the vocabulary, ``[L, vocab]``.
  All (sequence, position) rows go through the model in fixed-shape batches.
- ``pseudo_log_likelihood`` = sum_i log p(x_i | seq with i masked) (per-residue terms in
  ``score``); ``pseudo_perplexity`` = exp(-PLL / L).
- ``pseudo_likelihood``: what the official ``ankh`` package's ``likelihood.py`` reports,
  exp(mean_i log p'(x_i | seq with i masked)) where p' leaves out every ``<...>``/``[...]``
  token (renormalised over the rest), ``[NLU]`` first for ankh3.
- Models with task prefixes (ankh3) see ``[NLU]`` before the residues when scored; positions
  and per-residue outputs still count residues only.
- ``mutation_scores(wt, mutants)`` = sum over mutated positions i of
  log p(mut_i | wt masked at i) - log p(wt_i | wt masked at i) (the masked-marginal score).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ankh import batching
from ankh.model import shift_right
from ankh.tokenizer import TokenizerError

_MUT_RE = re.compile(r"^([A-Z])(\d+)([A-Z])$")


def _tf_log_probs(graphdef, params, ids, mask, labels):
    model = nnx.merge(graphdef, params)
    dec_in = shift_right(labels, model.config.decoder_start_token_id, model.config.pad_token_id)
    logits = model(ids, mask, dec_in)  # [b, l, v]
    logp = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]  # [b, l]


def _masked_marginal(graphdef, params, ids, mask, pos, sentinel):
    model = nnx.merge(graphdef, params)
    cfg = model.config
    hide = jnp.arange(ids.shape[1])[None, :] == pos[:, None]  # [b, l]
    enc = model.encode(jnp.where(hide, sentinel, ids), mask)  # [b, l, e]
    dec_in = jnp.broadcast_to(
        jnp.array([cfg.decoder_start_token_id, sentinel], jnp.int32), (ids.shape[0], 2)
    )
    logits = model.decode(dec_in, enc, mask)[:, 1]  # [b, v]: the residue after <extra_id_0>
    return jax.nn.log_softmax(logits, axis=-1)


def _logsumexp(x: np.ndarray) -> np.ndarray:
    """Row-wise log(sum(exp(x))) [n, 1], float64 so the renormalisation adds no error."""
    x = x.astype(np.float64)
    top = x.max(axis=1, keepdims=True)
    return top + np.log(np.exp(x - top).sum(axis=1, keepdims=True))


def parse_mutant(wild_type: str, mutant: str) -> list[tuple[int, str]]:
    """``"A23G"``/``"A23G:K45R"`` (1-based, wild-type letter checked) or a same-length sequence
    -> [(0-based position, new residue)]."""
    m = mutant.strip().upper()
    if len(m) == len(wild_type) and m.isalpha():
        return [(i, b) for i, (a, b) in enumerate(zip(wild_type, m)) if a != b]
    out = []
    for part in re.split(r"[:,;+ ]+", m):
        hit = _MUT_RE.match(part)
        if not hit:
            raise ValueError(
                f"mutant {mutant!r}: {part!r} is neither like 'A23G' nor a sequence "
                f"of the wild type's length ({len(wild_type)})"
            )
        wt, pos, new = hit.group(1), int(hit.group(2)), hit.group(3)
        if not 1 <= pos <= len(wild_type):
            raise ValueError(f"mutant {mutant!r}: position {pos} outside 1..{len(wild_type)}")
        if wild_type[pos - 1] != wt:
            raise ValueError(
                f"mutant {mutant!r}: wild type has {wild_type[pos - 1]} at {pos}, not {wt}"
            )
        out.append((pos - 1, new))
    return out


class ScoringMixin:
    """Scoring methods shared by ``ankh.api.Ankh`` (needs tokenizer, config, params, _fns and
    ``GenerationMixin._encode_inputs``)."""

    def _jit(self, name: str, fn, **static):
        key = ("score", name, tuple(sorted(static.items())))
        if key not in self._fns:
            self._fns[key] = jax.jit(partial(fn, self.graphdef, **static))
        return self._fns[key]

    def token_log_probs(
        self, targets: Sequence[str], inputs: Sequence[str] | None = None, batch_size: int = 32
    ) -> list[np.ndarray]:
        """Per target token (``</s>`` last) log-probabilities, float32 arrays."""
        targets = list(targets)
        inputs = targets if inputs is None else list(inputs)
        if len(inputs) != len(targets):
            raise ValueError(f"{len(inputs)} inputs for {len(targets)} targets")
        # ankh3: the encoder reads "[NLU]" + input; the decoder's targets stay residues.
        src = self._encode_inputs(inputs, prefix=self.task_prefix("[NLU]"))
        tgt = self._encode_inputs(targets)
        fn = self._jit("tf", _tf_log_probs)
        out: list[np.ndarray] = [np.zeros(0, np.float32)] * len(tgt)
        pad = self.tokenizer.pad_id
        lengths = [max(len(src[i]), len(tgt[i])) for i in range(len(tgt))]
        ladder = batching.sequence_ladder(self.config.max_length)
        for idx, length, rows in batching.sorted_batches(lengths, batch_size, ladder):
            ids, mask = batching.pad_rows([src[i] for i in idx], rows, length, pad)
            labels, _ = batching.pad_rows([tgt[i] for i in idx], rows, length, pad)
            lp = np.asarray(fn(self.params, ids, mask, labels))
            for r, i in enumerate(idx):
                out[i] = lp[r, : len(tgt[i])]
        return out

    def log_likelihood(
        self, targets: Sequence[str], inputs: Sequence[str] | None = None, batch_size: int = 32
    ) -> np.ndarray:
        """Sum of ``token_log_probs`` per target: log p(target </s> | input), shape [n]."""
        return np.array(
            [t.sum() for t in self.token_log_probs(targets, inputs, batch_size)], np.float64
        )

    def masked_marginals(
        self,
        sequences: Sequence[str],
        positions: Sequence[Sequence[int]] | None = None,
        batch_tokens: int = batching.DEFAULT_BATCH_TOKENS,
    ) -> list[np.ndarray]:
        """Per sequence ``[len(positions), vocab]`` log-probs with each position masked in turn."""
        toks = self.tokenize(list(sequences))  # residues only, no sentinels
        lead = self.num_prefix  # ankh3's [NLU]: residue p is token p + lead
        if positions is None:
            positions = [range(len(t) - 1 - lead) for t in toks]
        jobs = [(s, int(p)) for s, ps in enumerate(positions) for p in ps]
        for s, p in jobs:
            if not 0 <= p < len(toks[s]) - 1 - lead:
                raise ValueError(f"sequence {s}: position {p} outside 0..{len(toks[s]) - 2 - lead}")
        fn = self._jit("mm", _masked_marginal, sentinel=self.tokenizer.sentinel_id(0))
        vocab = self.config.vocab_size
        res = [np.zeros((len(ps), vocab), np.float32) for ps in positions]
        slot = [k for ps in positions for k in range(len(ps))]
        plan = batching.token_budget_batches(
            [len(toks[s]) for s, _ in jobs],
            batching.sequence_ladder(self.config.max_length),
            batch_tokens,
        )
        for chunk, length, rows in plan:
            ids, mask = batching.pad_rows(
                [toks[jobs[j][0]] for j in chunk], rows, length, self.tokenizer.pad_id
            )
            pos = np.zeros(rows, np.int32)
            pos[: len(chunk)] = [jobs[j][1] + lead for j in chunk]
            lp = np.asarray(fn(self.params, ids, mask, pos))
            for r, j in enumerate(chunk):
                res[jobs[j][0]][slot[j]] = lp[r]
        return res

    def pseudo_log_likelihood(
        self, sequences: Sequence[str], batch_tokens: int = batching.DEFAULT_BATCH_TOKENS
    ) -> np.ndarray:
        """Sum over residues of log p(x_i | sequence with x_i masked), shape [n]."""
        return np.array(
            [r.sum() for r in self.per_residue_log_probs(sequences, batch_tokens)], np.float64
        )

    def per_residue_log_probs(
        self,
        sequences: Sequence[str],
        batch_tokens: int = batching.DEFAULT_BATCH_TOKENS,
        residues_only: bool = False,
    ) -> list[np.ndarray]:
        """log p(x_i | sequence with x_i masked) per residue, float32 arrays [L].

        ``residues_only``: renormalised without the ``<...>``/``[...]`` tokens, as the official
        ``ankh`` likelihood computes it (``pseudo_likelihood``); float64 arrays then."""
        toks = self.tokenize(list(sequences))
        mm = self.masked_marginals(sequences, batch_tokens=batch_tokens)
        if residues_only:
            keep = np.ones(self.config.vocab_size, bool)
            keep[[i for i in self.tokenizer.special_ids() if i < len(keep)]] = False
            mm = [m - _logsumexp(m[:, keep]) for m in mm]
        lead = self.num_prefix
        return [m[np.arange(len(t) - 1 - lead), t[lead:-1]] for m, t in zip(mm, toks)]

    def pseudo_likelihood(
        self, sequences: Sequence[str], batch_tokens: int = batching.DEFAULT_BATCH_TOKENS
    ) -> np.ndarray:
        """The official ``ankh`` package's pseudo-likelihood, shape [n]: exp of the mean over
        residues of log p(x_i | x_i masked) among non-special tokens (in (0, 1])."""
        per = self.per_residue_log_probs(sequences, batch_tokens, residues_only=True)
        return np.array([np.exp(np.mean(p, dtype=np.float64)) for p in per], np.float64)

    def mutation_scores(self, wild_type: str, mutants: Sequence[str]) -> np.ndarray:
        """Masked-marginal log-ratio (mutant vs wild type, summed over mutated positions), [n]."""
        wt = self.tokenizer.normalize(wild_type)
        self.tokenize([wt])
        muts = [parse_mutant(wt, m) for m in mutants]
        for m, mut in zip(mutants, muts):
            for _, aa in mut:
                if aa not in self.tokenizer.vocab:
                    raise TokenizerError(f"mutant {m!r}: unknown residue {aa!r}")
        where = sorted({p for mut in muts for p, _ in mut})
        col = {p: k for k, p in enumerate(where)}
        mm = self.masked_marginals([wt], [where])[0] if where else np.zeros((0, 1))
        voc = self.tokenizer.vocab
        return np.array(
            [
                sum(float(mm[col[p], voc[aa]] - mm[col[p], voc[wt[p]]]) for p, aa in mut)
                for mut in muts
            ],
            np.float64,
        )

    def score(
        self, sequences: Sequence[str], batch_tokens: int = batching.DEFAULT_BATCH_TOKENS
    ) -> list[dict[str, Any]]:
        """Per sequence: ``log_likelihood`` (teacher-forced reconstruction), ``pseudo_log_likelihood``,
        ``pseudo_perplexity`` and ``per_residue_log_probs`` (masked marginals of the true residues)."""
        seqs = [self.tokenizer.normalize(s) if isinstance(s, str) else s for s in sequences]
        per = self.per_residue_log_probs(seqs, batch_tokens)
        ll = self.log_likelihood(seqs)
        out = []
        for s, p, l in zip(seqs, per, ll):
            pll = float(p.sum())
            out.append(
                {
                    "sequence": s,
                    "length": len(p),
                    "log_likelihood": float(l),
                    "pseudo_log_likelihood": pll,
                    "pseudo_perplexity": float(np.exp(-pll / max(len(p), 1))),
                    "per_residue_log_probs": p.astype(float).tolist(),
                }
            )
        return out
