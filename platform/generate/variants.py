"""Variant generation job: parents -> variants per temperature -> Parquet/FASTA + summary + plot.

Single process (the model is small enough for CPU; decoding is batched and jitted). Output
directory (local or gs://):

- ``variants.parquet``: parent_id, temperature, variant_index, sequence, masked_input,
  identity (to the parent), score (``score_kind``: mean per-residue pseudo-log-likelihood by
  default), parent_score
- ``variants.fasta``: ``>parent_id|t=1.5|v=3 identity=0.62 score=-2.91``
- ``summary.csv`` / ``summary.json``: per temperature accepted/rejected (by reason), unique
  fraction, identity mean/std, amino-acid composition drift (total variation vs the parents);
  ``summary.json`` and the Parquet metadata also name the model: the reference as given, the
  pinned one that was loaded (a hub id at its commit, a run dir's step) and the hub revision
- ``summary.png``: identity histogram per temperature, uniqueness, composition drift per residue
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ankh import infill, storage
from ankh.generation_config import GenerationConfig
from ankh.seeds import derive_seed
from ankh_platform.core import progress

log = logging.getLogger(__name__)
AA20 = "ACDEFGHIKLMNPQRSTVWY"


@dataclasses.dataclass(frozen=True)
class GenerateJobConfig:
    model: str = "tiny"  # preset, HF directory or our checkpoint
    parents: str = ""  # Parquet (id, sequence) or FASTA[.gz]; local or gs://
    sequence: str = ""  # or one parent given inline
    output: str = ""
    temperatures: tuple[float, ...] = (1.0, 1.5)
    n: int = 10  # variants per parent and temperature
    mask_fraction: float = 0.4
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    max_parents: int = 100
    score_kind: Literal["pll", "ll", "none"] = "pll"

    def __post_init__(self) -> None:
        if not self.temperatures or any(not t > 0 for t in self.temperatures):
            raise ValueError(f"temperatures must be > 0, got {self.temperatures}")
        if self.n < 1 or self.max_parents < 1:
            raise ValueError("n and max_parents must be >= 1")
        self.sampling()  # top_k / top_p / seed checked where every generation setting is

    def sampling(self) -> GenerationConfig:
        """The sampling settings of every ``Ankh.variants`` call (temperature and seed are set
        per temperature and parent)."""
        return GenerationConfig(do_sample=True, top_k=self.top_k, top_p=self.top_p, seed=self.seed)


def read_sequences(path: str, limit: int | None = None) -> list[tuple[str, str]]:
    """(id, sequence) from Parquet (columns id?, sequence) or FASTA[.gz]."""
    if path.endswith(".parquet"):
        tab = storage.read_parquet(path)
        if "sequence" not in tab.column_names:
            raise ValueError(f"{path}: no 'sequence' column (has {tab.column_names})")
        seqs = tab.column("sequence").to_pylist()[:limit]
        ids = (
            tab.column("id").to_pylist()[:limit]
            if "id" in tab.column_names
            else [f"seq{i}" for i in range(len(seqs))]
        )
        return list(zip(map(str, ids), seqs))
    from ankh_platform.data.fasta import read_fasta

    out = []
    for rec in read_fasta(path, policy="fail"):
        out.append(rec)
        if limit is not None and len(out) >= limit:
            break
    return out


def composition(seqs: list[str]) -> np.ndarray:
    c = Counter("".join(seqs))
    v = np.array([c[a] for a in AA20], np.float64)
    return v / max(v.sum(), 1.0)


def _score(model, seqs: list[str], kind: str) -> list[float]:
    if kind == "none" or not seqs:
        return [float("nan")] * len(seqs)
    if kind == "ll":
        return [float(x) / (len(s) + 1) for x, s in zip(model.log_likelihood(seqs), seqs)]
    return [float(r.mean()) for r in model.per_residue_log_probs(seqs)]


def generate_rows(model, parents: list[tuple[str, str]], cfg: GenerateJobConfig):
    rows, stats = [], {t: {"generated": 0, "rejected": Counter()} for t in cfg.temperatures}
    parent_scores = dict(
        zip([p for p, _ in parents], _score(model, [s for _, s in parents], cfg.score_kind))
    )
    sampling = cfg.sampling()
    for pi, (pid, parent) in enumerate(progress.track(parents, "generate", unit="parents")):
        seed = derive_seed(cfg.seed, "parent", pi)
        for t in cfg.temperatures:
            res = model.variants(
                parent,
                cfg.mask_fraction,
                n=cfg.n,
                generation_config=sampling.replace(temperature=t, seed=seed),
            )
            stats[t]["generated"] += res.generated
            stats[t]["rejected"].update({k: v for k, v in res.rejected.items() if v})
            scores = _score(model, res.sequences, cfg.score_kind)
            for j, (seq, masked, sc) in enumerate(zip(res.sequences, res.masked_inputs, scores)):
                rows.append(
                    {
                        "parent_id": pid,
                        "temperature": float(t),
                        "variant_index": j,
                        "sequence": seq,
                        "masked_input": masked,
                        "identity": infill.identity(seq, parent),
                        "score": sc,
                        "parent_score": parent_scores[pid],
                    }
                )
        log.info("parent %d/%d (%s) done", pi + 1, len(parents), pid)
    return rows, stats


def summarize(
    rows: list[dict], stats: dict, parents: list[tuple[str, str]]
) -> list[dict[str, Any]]:
    base = composition([s for _, s in parents])
    out = []
    for t, st in stats.items():
        r = [x for x in rows if x["temperature"] == float(t)]
        seqs = [x["sequence"] for x in r]
        ident = np.array([x["identity"] for x in r])
        comp = composition(seqs)
        empty = not r  # no accepted variant: the statistics are undefined (null)
        out.append(
            {
                "temperature": float(t),
                "generated": st["generated"],
                "accepted": len(r),
                "rejected": sum(st["rejected"].values()),
                "rejected_by_reason": dict(st["rejected"]),
                "unique_fraction": None if empty else len(set(seqs)) / len(seqs),
                "identity_mean": None if empty else float(np.mean(ident)),
                "identity_std": None if empty else float(np.std(ident)),
                "score_mean": None if empty else float(np.nanmean([x["score"] for x in r])),
                "composition_drift_tv": None if empty else float(0.5 * np.abs(comp - base).sum()),
                "composition_delta": {
                    a: (None if empty else round(float(d), 5)) for a, d in zip(AA20, comp - base)
                },
            }
        )
    return out


def plot(rows: list[dict], summary: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    for s in summary:
        ident = [x["identity"] for x in rows if x["temperature"] == s["temperature"]]
        ax[0].hist(ident, bins=20, range=(0, 1), alpha=0.5, label=f"t={s['temperature']}")
    ax[0].set(title="identity to parent", xlabel="identity", ylabel="variants")
    ax[0].legend()
    temps = [str(s["temperature"]) for s in summary]
    ax[1].bar(temps, [s["unique_fraction"] or 0.0 for s in summary])
    ax[1].set(title="unique variants / accepted", xlabel="temperature", ylim=(0, 1.05))
    width = 0.8 / max(len(summary), 1)
    for k, s in enumerate(summary):
        if s["accepted"]:
            ax[2].bar(
                np.arange(20) + k * width,
                list(s["composition_delta"].values()),
                width,
                label=f"t={s['temperature']} (TV {s['composition_drift_tv']:.3f})",
            )
    ax[2].set_xticks(np.arange(20) + 0.4 - width / 2, list(AA20))
    ax[2].set(title="composition drift (variants - parents)", ylabel="frequency delta")
    if any(s["accepted"] for s in summary):
        ax[2].legend(fontsize=8)
    fig.tight_layout()
    storage.atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)


def _write_text(path: str, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            fh.write(text)

    storage.atomic_write(path, write)


COLUMNS = (
    "parent_id",
    "temperature",
    "variant_index",
    "sequence",
    "masked_input",
    "identity",
    "score",
    "parent_score",
)
SUMMARY_CSV = (
    "temperature",
    "generated",
    "accepted",
    "rejected",
    "unique_fraction",
    "identity_mean",
    "identity_std",
    "score_mean",
    "composition_drift_tv",
)


def _variants_table(rows: list[dict], provenance: dict[str, str | None]) -> pa.Table:
    strings = ("parent_id", "sequence", "masked_input")
    table = (
        pa.table({c: [r[c] for r in rows] for c in COLUMNS})
        if rows
        else pa.table(
            {c: pa.array([], pa.string() if c in strings else pa.float64()) for c in COLUMNS}
        )
    )
    return table.replace_schema_metadata(
        {f"ankh.{k}".encode(): str(v).encode() for k, v in provenance.items() if v is not None}
    )


def _summary_csv(summary: list[dict]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.6g}" if isinstance(v, float) else ("" if v is None else str(v))

    lines = [",".join(SUMMARY_CSV)] + [",".join(cell(s[k]) for k in SUMMARY_CSV) for s in summary]
    return "".join(line + "\n" for line in lines)


def write_outputs(
    rows: list[dict],
    summary: list[dict],
    output: str,
    provenance: dict[str, str | None] | None = None,
) -> dict[str, str]:
    """Every output file; ``provenance`` (``model``, ``model_pinned``, ``model_revision``) goes
    into ``summary.json`` and, as ``ankh.<key>``, the Parquet schema metadata. Each file is
    published whole (``storage.atomic_write``): a reader never sees half of one."""
    provenance = provenance or {}
    out = output.rstrip("/")
    fs, root = storage.filesystem(out)
    fs.makedirs(root, exist_ok=True)
    names = {
        "parquet": "variants.parquet",
        "fasta": "variants.fasta",
        "csv": "summary.csv",
        "json": "summary.json",
        "png": "summary.png",
    }
    paths = {k: f"{out}/{v}" for k, v in names.items()}
    table = _variants_table(rows, provenance)
    storage.atomic_write(paths["parquet"], lambda tmp: pq.write_table(table, tmp))
    fasta = "".join(
        f">{r['parent_id']}|t={r['temperature']}|v={r['variant_index']} "
        f"identity={r['identity']:.4f} score={r['score']:.4f}\n{r['sequence']}\n"
        for r in rows
    )
    _write_text(paths["fasta"], fasta)
    _write_text(paths["csv"], _summary_csv(summary))
    _write_text(paths["json"], json.dumps({**provenance, "per_temperature": summary}, indent=1))
    plot(rows, summary, paths["png"])
    return paths


def run(cfg: GenerateJobConfig) -> dict[str, Any]:
    import ankh
    from ankh.resolve import resolve

    if bool(cfg.parents) == bool(cfg.sequence):
        raise ValueError("give exactly one of parents=PATH or sequence=RESIDUES")
    if not cfg.output:
        raise ValueError("output=DIR is required")
    parents = (
        read_sequences(cfg.parents, cfg.max_parents) if cfg.parents else [("parent", cfg.sequence)]
    )
    parents = [(pid, s.strip().upper()) for pid, s in parents]
    # Pin once (a hub id to its commit, a run dir to its newest good step), load exactly that,
    # and record both so a run can be reproduced with the same weights.
    ref = resolve(cfg.model)
    model = ankh.load(ref.pinned)
    provenance = {"model": cfg.model, "model_pinned": ref.pinned, "model_revision": ref.revision}
    rows, stats = generate_rows(model, parents, cfg)
    summary = summarize(rows, stats, parents)
    paths = write_outputs(rows, summary, cfg.output, provenance)
    return {
        "parents": len(parents),
        "variants": len(rows),
        "outputs": paths,
        "summary": summary,
        **provenance,
    }
