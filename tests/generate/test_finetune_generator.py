"""High-N: decoder fine-tuning raises the family's likelihood; the jobs run end to end."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.ankh._genutil import real_sequences

AA = "ACDEFGHIKLMNPQRSTVWY"


def family(n: int = 32, length: int = 60, subs: int = 6, seed: int = 0) -> tuple[str, list[str]]:
    """A real UniProt protein and ``n`` homologs with ``subs`` seeded substitutions each."""
    parent = real_sequences(1, max_len=length, start=5)[0]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        s = list(parent)
        for p in rng.choice(len(s), subs, replace=False):
            s[p] = AA[rng.integers(20)]
        out.append("".join(s))
    return parent, out


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_finetune_raises_family_likelihood_encoder_frozen():
    from ankh.api import Ankh
    from ankh.config import PRESETS
    from ankh.finetune import FinetuneConfig, finetune_decoder
    from ankh.training import OptimConfig

    model = Ankh.random(PRESETS["tiny"], seed=3)
    _, fam = family()
    cfg = FinetuneConfig(
        steps=30,
        batch_size=8,
        eval_every=15,
        eval_fraction=0.25,
        optim=OptimConfig(optimizer="adamw", peak_lr=1e-3, warmup_steps=5),
    )
    tuned, hist = finetune_decoder(model, fam, cfg)
    evals = [v for _, v in hist["eval"]]
    assert evals[-1] > evals[0] + 0.5, evals  # held-out mean log-lik per target token (nats)
    before, after = model.flat_params(), tuned.flat_params()
    for k in before:
        same = np.array_equal(before[k], after[k])
        assert same == (k[0] in ("encoder", "shared")), k  # encoder frozen, decoder trained
    held = fam[:4]
    assert np.all(tuned.pseudo_log_likelihood(held) > model.pseudo_log_likelihood(held))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_jobs_finetune_then_generate(tmp_path):
    from jobs import finetune_generator, generate

    parent, fam = family(n=32)
    pq.write_table(
        pa.table({"id": [f"h{i}" for i in range(len(fam))], "sequence": fam}),
        tmp_path / "family.parquet",
    )
    summary = finetune_generator.main(
        [
            "model=tiny",
            f"data={tmp_path / 'family.parquet'}",
            f"output={tmp_path / 'ft'}",
            "train.steps=150",
            "train.batch_size=8",
            "train.eval_every=50",
            "train.optim.peak_lr=0.002",
            "train.optim.warmup_steps=5",
        ]
    )
    ev = summary["eval_mean_log_likelihood"]
    assert ev[-1][1] > ev[0][1]
    hist = json.loads((tmp_path / "ft" / "history.json").read_text())
    assert len(hist["train_loss"]) == 150

    (tmp_path / "parent.fasta").write_text(f">parent1 test\n{parent}\n")
    res = generate.main(
        [
            f"model={summary['model_dir']}",
            f"parents={tmp_path / 'parent.fasta'}",
            f"output={tmp_path / 'gen'}",
            "n=4",
            "temperatures=[1.0,1.5]",
            "mask_fraction=0.2",
        ]
    )  # = train.objective.mask_prob
    out = tmp_path / "gen"
    tab = pq.read_table(out / "variants.parquet").to_pylist()
    assert len(tab) == res["variants"]
    fasta = (out / "variants.fasta").read_text().count(">")
    assert fasta == len(tab)
    for r in tab:
        assert r["parent_id"] == "parent1" and len(r["sequence"]) == len(parent)
        diff = sum(a != b for a, b in zip(r["sequence"], parent))
        assert abs(r["identity"] - (1 - diff / len(parent))) < 1e-9
        assert diff <= round(0.2 * len(parent))  # only masked positions can change
        assert np.isfinite(r["score"])
    summ = json.loads((out / "summary.json").read_text())
    assert summ["model"] == summary["model_dir"] and summ["model_pinned"]  # what was loaded
    summ = summ["per_temperature"]
    assert [s["temperature"] for s in summ] == [1.0, 1.5]
    for s in summ:
        assert s["generated"] == s["accepted"] + s["rejected"]
        assert s["rejected"] == sum(s["rejected_by_reason"].values())
    assert sum(s["accepted"] for s in summ) > 0  # the tuned decoder answers in the right format
    assert (out / "summary.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "summary.csv").read_text().startswith("temperature,")


@pytest.mark.timeout(600)
def test_job_writes_model_and_history_with_no_temporary_left(tmp_path):
    """Two steps of the job: the tuned model loads, ``history.json`` (published through
    ``ankh.storage.atomic_write``) holds every step's loss, and no temporary file is left."""
    import ankh
    from jobs import finetune_generator

    _, fam = family(n=8)
    (tmp_path / "fam.fasta").write_text("".join(f">h{i}\n{s}\n" for i, s in enumerate(fam)))
    summary = finetune_generator.main(
        [
            "model=tiny",
            f"data={tmp_path / 'fam.fasta'}",
            f"output={tmp_path / 'ft'}",
            "train.steps=2",
            "train.batch_size=4",
            "train.eval_fraction=0.25",
        ]
    )
    hist = json.loads((tmp_path / "ft" / "history.json").read_text())
    assert hist["train_loss"] == [hist["first_loss"], hist["last_loss"]]
    assert hist["n_train"] == 6 and hist["n_eval"] == 2 and hist["steps"] == 2
    assert [s for s, _ in hist["eval_mean_log_likelihood"]] == [0, 2]
    assert sorted(p.name for p in (tmp_path / "ft").iterdir()) == ["history.json", "model"]
    assert ankh.load(summary["model_dir"]).num_params() == ankh.load("tiny").num_params()
