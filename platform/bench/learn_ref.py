"""``python -m jobs.benchmark learn --reference mlm``: our pretraining beside a standard protein
masked LM, per residue seen, on one held-out definition (issue 29).

Both sides train on the same shards and crops (``--train``, ``--crop`` tokens: the reference's
CLS + residues + EOS, ours the same residues + ``</s>``) at the same masking rate, for the same
residues; both are scored on the same held-out set: the first ``--heldout-n`` proteins of
``--heldout``, each cropped (seeded) to the same residues, the same ``--mask-prob`` of them
selected and every selected residue replaced by the mask token (ours: the objective's --
distinct sentinels, the one shared mask token, or the MLM mask token; the reference: ``<mask>``),
the loss averaged over the selected residues only, beside their unigram entropy.

- ours: the given pretraining config (``--config``, overrides), with the protocol's data
  settings put before the user's overrides, run in this process (``run_local_process``) with a
  checkpoint at each of ``--points`` evaluation points; each checkpoint is scored afterwards
  with the run's own ``eval_step`` on the protocol's held-out batches, at the residues the run
  had seen (the ``residues`` of its step records);
- the reference (``reference_mlm.py``): transformers' ``EsmForMaskedLM`` in a plain fp32 torch
  loop, evaluated when it has seen as many residues as each of our checkpoints.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import time
from typing import Any

import numpy as np

from ankh.objective import Objective, ObjectiveConfig
from ankh.packing import PackSpec, build_batch
from ankh.tokenizer import AnkhTokenizer

EVAL_ROWS = 32
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Protocol:
    train: tuple[str, ...]
    heldout: str
    heldout_n: int = 512
    crop: int = 256  # tokens of the reference's crop: CLS + crop - 2 residues + EOS
    mask_prob: float = 0.15
    seed: int = 0

    @property
    def residues(self) -> int:
        return self.crop - 2

    def overrides(self) -> list[str]:
        """Our run's data on the protocol (before the user's own overrides, which win)."""
        return [
            f"data.paths={json.dumps(list(self.train))}",  # quoted: globs hold brackets
            f"data.max_residues={self.residues}",
            f"data.mask_prob={self.mask_prob}",
            f"data.enc_len={self.crop}",  # one crop per row at most (shorter ones packed)
            f"source.eval_paths={json.dumps([self.heldout])}",
            "source.eval_batches=1",  # the run's own held-out loss is not what is compared
            "eval.probe=false",
            "eval.baselines=false",
            "eval.curves=false",
            "eval_every=0",
        ]


def read_sequences(path: str, limit: int | None = None) -> list[str]:
    """Sequences of the Parquet files a data path names (``shared:`` allowed), in file order."""

    from ankh.storage import read_parquet
    from ankh_platform.core.samples import bundled_train, shared_path
    from ankh_platform.data.shards import list_shards

    fs, shards = list_shards([shared_path(path, bundled_train())])
    out: list[str] = []
    for s in shards:
        out += read_parquet(s.path, ["sequence"], fs).column("sequence").to_pylist()
        if limit is not None and len(out) >= limit:
            return out[:limit]
    return out


def heldout_pairs(p: Protocol, tok: AnkhTokenizer) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per held-out protein: (its cropped residues, the selected positions). The crop and the
    positions are the objectives' own seeded draws (one held-out definition for every arm)."""
    cfg = ObjectiveConfig(p.mask_prob, p.residues, kind="mlm", mlm_random=0.0, mlm_keep=0.0)
    obj = Objective(cfg, tok)
    out = []
    for i, s in enumerate(read_sequences(p.heldout, p.heldout_n)):
        enc, tgt = obj(tok.encode(s, add_eos=False, allow_sentinels=False), p.seed, 0, i)
        pos = np.flatnonzero(tgt != tok.pad_id)
        out.append((obj.reconstruct(enc, tgt), pos))
    return out


def unigram(pairs: list[tuple[np.ndarray, np.ndarray]]) -> float:
    from ankh_platform.train.probe import counts_entropy

    return counts_entropy(np.bincount(np.concatenate([r[pos] for r, pos in pairs])))


def heldout_batches(pairs, data, tok: AnkhTokenizer) -> list[dict[str, np.ndarray]]:
    """The held-out set as batches of our objective ``data`` (a DataConfig): every selected
    residue masked (no random or kept ones), one protein per row. Rows fit the held-out crops,
    not the arm's training crop (a shorter-crop arm is scored on the same proteins)."""
    longest = max((len(r) for r, _ in pairs), default=1)
    trained = data.objective_config()
    oc = dataclasses.replace(trained, max_residues=longest, mlm_random=0.0, mlm_keep=0.0)
    need, have = oc.num_spans(longest), trained.num_spans(trained.max_residues)
    if oc.kind == "ankh" and not oc.shared_mask and need > have:
        log.warning(  # their embeddings are still the initialisation's: a meaningless loss
            "held-out crops need sentinels up to <extra_id_%d>; training crops of %d residues "
            "use only up to <extra_id_%d>",
            need - 1,
            trained.max_residues,
            have - 1,
        )
    obj = Objective(oc, tok)
    spec = PackSpec(EVAL_ROWS, oc.max_encoder_tokens(), oc.max_decoder_tokens(), 1, tok.pad_id)
    made = [obj.mlm_at(r, pos) if oc.kind == "mlm" else obj.mask_at(r, pos) for r, pos in pairs]
    return [
        build_batch(
            [[j] for j in range(i, min(i + EVAL_ROWS, len(made)))],
            [e for e, _ in made],
            [t for _, t in made],
            list(range(len(made))),
            spec,
        )
        for i in range(0, len(made), EVAL_ROWS)
    ]


def residues_at(run_dir: str) -> dict[int, int]:
    """Step -> residues seen by then, from the run's step records."""
    from ankh_platform.train.curves import read_metrics

    seen, out = 0, {0: 0}
    for rec in read_metrics(run_dir):
        if "residues" in rec and "event" not in rec:
            seen += int(rec["residues"])
            out[int(rec["step"])] = seen
    return out


def score_checkpoints(cfg, run_dir: str, pairs, tok: AnkhTokenizer) -> list[dict[str, float]]:
    """Held-out masked loss of every checkpoint of the run (the run's own ``eval_step``)."""
    import jax

    from ankh import checkpoint, sharding
    from ankh.resolve import resolve
    from ankh_platform.train import program

    prog = program.build(cfg)
    batches = heldout_batches(pairs, cfg.data, tok)
    seen = residues_at(run_dir)
    root, steps = checkpoint.find_steps(f"{run_dir}/checkpoints")
    curve = []
    for step in [0, *steps]:
        flat = None if step == 0 else resolve(f"{root}/{step}").load_params()
        params = prog.trainer.init_state(flat)["params"]  # step 0: the seed's initialisation
        ce = n = 0.0
        for b in batches:
            out = jax.device_get(prog.trainer.evaluate(params, sharding.global_batch(b, prog.mesh)))
            ce, n = ce + float(out["res_ce"]), n + float(out["res_tokens"])
        curve.append({"step": step, "residues": seen.get(step), "loss": ce / n})
    return curve


def run_ours(args: argparse.Namespace, p: Protocol, out_dir: str, learn) -> tuple[Any, dict]:
    """Our run on the protocol: calibrated, then sized by ``--residues`` or ``--budget-s``.
    ``learn``: the ``learn`` bench module (its calibration and sizing; passed in, as it imports
    this one)."""
    from ankh_platform.core.config import PRESETS_DIR, load_config
    from ankh_platform.train.config import PretrainConfig
    from ankh_platform.train.job import run_local_process

    cfg = load_config(
        PretrainConfig, args.config, p.overrides() + args.overrides, presets_dir=PRESETS_DIR
    )
    step_s, calib_s = learn.calibrate(cfg, args.calibrate_steps, out_dir)
    calib = residues_at(f"{out_dir}/{cfg.name}-calibrate")
    per_step = max(calib.values()) / max(calib)
    if args.residues:
        steps = math.ceil(args.residues / per_step)
    else:
        steps = learn.plan_steps(args.budget_s, calib_s, args.calibrate_steps, step_s, 0.05)
    every = max(1, steps // args.points)
    run = learn.measured_config(cfg, steps, out_dir)
    run = dataclasses.replace(
        run,
        optim=cfg.optim,  # the config's own warm-up (the reference's is fixed too), uncapped
        eval_every=0,
        log_every=math.gcd(every, run.log_every),
        checkpoint=dataclasses.replace(run.checkpoint, every=every, keep=args.points + 2),
    )
    t0 = time.perf_counter()
    summary = run_local_process(run)
    info = {
        "config": args.config,
        "overrides": p.overrides() + args.overrides,
        "objective": run.data.objective,
        "shared_mask": run.data.shared_mask,
        "steps": steps,
        "residues_per_step": round(per_step, 1),
        "train_wall_s": round(time.perf_counter() - t0, 1),
        "tokens_per_s": summary.get("last", {}).get("tokens_per_s"),
        "run_dir": summary["run_dir"],
    }
    return run, info


def plot(path: str, u: float, curves: dict[str, list[dict]]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, curve in curves.items():
        # step 0 (the initialisation) stays in the JSON, off the plot's scale
        pts = [(c["residues"] / 1e6, c["loss"]) for c in curve if c["residues"]]
        ax.plot(*zip(*pts), marker="o", label=name)
    ax.axhline(u, color="grey", linestyle="--", label=f"unigram {u:.3f}")
    ax.set_xlabel("residues seen (millions)")
    ax.set_ylabel("held-out masked-residue loss (nats)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(args: argparse.Namespace, out_dir: str, learn) -> dict[str, Any]:
    from ankh_platform.bench.reference_mlm import RefConfig, train_reference

    p = Protocol(tuple(args.train), args.heldout, args.heldout_n, args.crop, args.mask_prob)
    tok = AnkhTokenizer()
    start = time.perf_counter()
    pairs = heldout_pairs(p, tok)
    u = unigram(pairs)
    cfg, ours = run_ours(args, p, out_dir, learn)
    ours["curve"] = score_checkpoints(cfg, ours["run_dir"], pairs, tok)
    curves = {f"ours ({ours['objective']}{', shared mask' if ours['shared_mask'] else ''})": ours}
    line: dict[str, Any] = {"benchmark": "learn", "reference": args.reference}
    line["heldout"] = {
        "path": p.heldout,
        "sequences": len(pairs),
        "crop_tokens": p.crop,
        "mask_prob": p.mask_prob,
        "masked_residues": int(sum(len(pos) for _, pos in pairs)),
        "unigram_entropy": round(u, 4),
    }
    line["ours"] = ours
    if args.reference == "mlm":
        points = [c["residues"] for c in ours["curve"]]
        ref_cfg = RefConfig(crop=p.crop, mask_prob=p.mask_prob, seed=p.seed, threads=args.threads)
        seqs = [s for path in p.train for s in read_sequences(path)]
        line["reference_mlm"] = train_reference(ref_cfg, seqs, pairs, points, tok)
        curves["reference (EsmForMaskedLM)"] = line["reference_mlm"]
        last_ours, last_ref = ours["curve"][-1], line["reference_mlm"]["curve"][-1]
        line["ours_minus_reference_at_end"] = round(last_ours["loss"] - last_ref["loss"], 4)
    for c in (x["curve"] for x in curves.values()):
        for pt in c:
            pt["below_unigram"] = round(u - pt["loss"], 4)
            pt["loss"] = round(pt["loss"], 4)
    line["plot"] = plot(
        f"{out_dir}/learn-reference.png", u, {k: v["curve"] for k, v in curves.items()}
    )
    line["wall_s"] = round(time.perf_counter() - start, 1)
    return line


def add_flags(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--reference",
        choices=("mlm", "none"),
        help="mlm: train transformers' EsmForMaskedLM beside our run on the same data and "
        "held-out set (none: our run alone, scored the same way)",
    )
    ap.add_argument(
        "--train",
        nargs="+",
        default=["shared:uniprot_go/part-00[0-1].parquet"],
        help="with --reference: training shards of both sides",
    )
    ap.add_argument(
        "--heldout", default="shared:uniprot_go/part-010.parquet", help="held-out shard"
    )
    ap.add_argument("--heldout-n", type=int, default=512, help="held-out proteins (first N)")
    ap.add_argument("--crop", type=int, default=256, help="crop tokens (CLS + residues + EOS)")
    ap.add_argument("--mask-prob", type=float, default=0.15, help="masked fraction, both sides")
    ap.add_argument(
        "--residues", type=float, default=0, help="residues to train on (0: what --budget-s buys)"
    )
    ap.add_argument("--points", type=int, default=8, help="evaluation points along the run")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the reference")
