"""The reference of issue 29: a standard protein masked LM, trained in a plain fp32 torch loop.

transformers' ``EsmForMaskedLM``: 4 layers, d128, 4 heads, FFN 512, rotary positions, no
dropout (~0.82 M parameters); random crops of ``crop`` tokens (CLS ... EOS), batch 16, BERT
masking (each residue selected with probability ``mask_prob``; of those 80 % ``<mask>``, 10 % a
random residue, 10 % kept); AdamW lr 1e-3, betas (0.9, 0.98), weight decay 0.01, 300 linear
warm-up steps then constant, gradient clipping 1.0. torch and transformers are benchmark extras:
imported here, inside the functions, never by ``ankh`` or a runtime path.

Vocabulary: our ids for pad, ``</s>`` (EOS), ``<unk>`` and the residues (0..27), then CLS and
``<mask>`` -- so the held-out proteins, crops and selected positions are ours, token for token.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from ankh.batching import pad_rows
from ankh.tokenizer import NUM_BASE_IDS, AnkhTokenizer
from ankh_platform.core import progress

CLS_ID, MASK_ID = NUM_BASE_IDS, NUM_BASE_IDS + 1  # after our base ids
VOCAB = NUM_BASE_IDS + 4  # 32: room as ESM's vocabulary has


@dataclasses.dataclass(frozen=True)
class RefConfig:
    crop: int = 256  # tokens: CLS + crop - 2 residues + EOS
    mask_prob: float = 0.15
    batch: int = 16
    layers: int = 4
    d_model: int = 128
    heads: int = 4
    d_ff: int = 512
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.01
    warmup_steps: int = 300
    clip_norm: float = 1.0
    seed: int = 0
    threads: int = 2


def build(rc: RefConfig, tok: AnkhTokenizer):
    import torch
    from transformers import EsmConfig, EsmForMaskedLM

    torch.manual_seed(rc.seed)
    conf = EsmConfig(
        vocab_size=VOCAB,
        hidden_size=rc.d_model,
        num_hidden_layers=rc.layers,
        num_attention_heads=rc.heads,
        intermediate_size=rc.d_ff,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        position_embedding_type="rotary",
        max_position_embeddings=rc.crop + 2,
        pad_token_id=tok.pad_id,
        mask_token_id=MASK_ID,
        token_dropout=False,
        emb_layer_norm_before=False,
    )
    return EsmForMaskedLM(conf)


def _rows(rows: list[np.ndarray], pad: int) -> np.ndarray:
    return pad_rows(rows, pad_id=pad)[0].astype(np.int64)  # torch's embedding wants int64


def train_batch(
    seqs: list[np.ndarray], rc: RefConfig, rng: np.random.Generator, residue_ids: np.ndarray, tok
):
    """(input ids, labels with -100 off the selected residues, residues in the batch)."""
    m = rc.crop - 2
    inputs, labels, seen = [], [], 0
    for s in seqs:
        if len(s) > m:
            start = int(rng.integers(0, len(s) - m + 1))
            s = s[start : start + m]
        seen += len(s)
        sel = rng.random(len(s)) < rc.mask_prob
        u = rng.random(len(s))
        x = s.copy()
        x[sel & (u < 0.8)] = MASK_ID
        rand = sel & (u >= 0.8) & (u < 0.9)
        x[rand] = rng.choice(residue_ids, size=int(rand.sum()))
        inputs.append(np.concatenate([[CLS_ID], x, [tok.eos_id]]))
        labels.append(np.concatenate([[-100], np.where(sel, s, -100), [-100]]))
    return _rows(inputs, tok.pad_id), _rows(labels, -100), seen


def heldout_loss(model, pairs, tok, rows: int = 32) -> float:
    """Mean CE over the selected held-out residues, each replaced by ``<mask>``."""
    import torch

    ce = n = 0.0
    model.eval()
    with torch.inference_mode():
        for i in range(0, len(pairs), rows):
            inputs, labels = [], []
            for r, pos in pairs[i : i + rows]:
                x, y = r.astype(np.int64).copy(), np.full(len(r), -100, np.int64)
                x[pos], y[pos] = MASK_ID, r[pos]
                inputs.append(np.concatenate([[CLS_ID], x, [tok.eos_id]]))
                labels.append(np.concatenate([[-100], y, [-100]]))
            ids = torch.from_numpy(_rows(inputs, tok.pad_id))
            lab = torch.from_numpy(_rows(labels, -100))
            logits = model(input_ids=ids, attention_mask=(ids != tok.pad_id).long()).logits
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(),
                lab.reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
            ce, n = ce + float(loss), n + int((lab != -100).sum())
    model.train()
    return ce / n


def train_reference(
    rc: RefConfig, seqs: list[str], pairs, points: list[int], tok: AnkhTokenizer
) -> dict[str, Any]:
    """Train until the last of ``points`` (residues seen), scoring the held-out ``pairs`` at
    the first step at or past each point. ``seqs``: the training proteins (text)."""
    import torch

    torch.set_num_threads(rc.threads)
    model = build(rc, tok)
    opt = torch.optim.AdamW(
        model.parameters(), lr=rc.lr, betas=rc.betas, weight_decay=rc.weight_decay
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / rc.warmup_steps))
    rng = np.random.default_rng(rc.seed)
    residue_ids = np.flatnonzero(tok.residue_table()).astype(np.int64)
    train = [tok.encode(s, add_eos=False, allow_sentinels=False).astype(np.int64) for s in seqs]
    order, at = rng.permutation(len(train)), 0
    todo = sorted(p for p in points if p is not None)
    curve, seen, step, t0 = [], 0, 0, time.perf_counter()
    while todo:
        if seen >= todo[0]:
            curve.append({"step": step, "residues": seen, "loss": heldout_loss(model, pairs, tok)})
            progress.console(
                f"reference step {step} | residues {seen:,} | held-out masked loss "
                f"{curve[-1]['loss']:.4f} | {time.perf_counter() - t0:.0f} s"
            )
            while todo and seen >= todo[0]:
                todo.pop(0)
            continue
        if at + rc.batch > len(order):  # next epoch
            order, at = rng.permutation(len(train)), 0
        ids, lab, n = train_batch(
            [train[i] for i in order[at : at + rc.batch]], rc, rng, residue_ids, tok
        )
        at += rc.batch
        ids_t, lab_t = torch.from_numpy(ids), torch.from_numpy(lab)
        out = model(input_ids=ids_t, attention_mask=(ids_t != tok.pad_id).long(), labels=lab_t)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), rc.clip_norm)
        opt.step()
        sched.step()
        seen, step = seen + n, step + 1
    return {
        "model": "transformers EsmForMaskedLM",
        "params": sum(p.numel() for p in model.parameters()),
        "config": dataclasses.asdict(rc),
        "steps": step,
        "residues": seen,
        "train_wall_s": round(time.perf_counter() - t0, 1),
        "curve": curve,
    }
