"""``jobs.benchmark learn --reference mlm``: one held-out definition for every arm (the same
proteins, crops and masked positions, every selected residue masked, loss on those only), the
protocol's data settings reach our run, and the reference's BERT masking."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ankh.tokenizer import AnkhTokenizer
from ankh_platform.bench import learn_ref, reference_mlm
from ankh_platform.core.config import PRESETS_DIR, load_config
from ankh_platform.data.pipeline import DataConfig
from ankh_platform.train.config import PretrainConfig

TOK = AnkhTokenizer()
MASK = TOK.sentinel_id(0)


@pytest.fixture(scope="module")
def pairs(protein_parquet):
    p = learn_ref.Protocol(("unused",), str(protein_parquet), heldout_n=40, crop=66)
    return learn_ref.heldout_pairs(p, TOK)


def test_every_objective_scores_the_same_masked_residues(pairs):
    assert len(pairs) == 40 and all(len(r) <= 64 for r, _ in pairs)
    assert all(len(pos) == max(1, round(0.15 * len(r))) for r, pos in pairs)
    want = np.concatenate([r[pos] for r, pos in pairs])
    for data in (
        DataConfig(max_residues=64, objective="mlm"),
        DataConfig(max_residues=64),
        DataConfig(max_residues=64, shared_mask=True),
        DataConfig(max_residues=30),  # an arm trained on shorter crops: the same held-out rows
    ):
        batches = learn_ref.heldout_batches(pairs, data, TOK)
        lab = np.concatenate([b["labels"][b["loss_mask"] > 0] for b in batches])
        res = lab[(lab >= 3) & (lab < 28)]  # residue targets: what val loss is over
        assert np.array_equal(res, want), data.objective
        ids = np.concatenate([b["input_ids"].ravel() for b in batches])
        masks = np.isin(
            ids, [MASK] if data.objective == "mlm" or data.shared_mask else ids[ids >= 28]
        )
        assert masks.sum() == len(want)  # every selected residue is hidden, nothing else
    assert learn_ref.unigram(pairs) == pytest.approx(
        -sum(c / len(want) * np.log(c / len(want)) for c in np.bincount(want) if c), rel=1e-9
    )


def test_protocol_data_reaches_our_run_before_the_users_overrides():
    p = learn_ref.Protocol(("shared:uniprot_go/part-00[0-1].parquet",), "shared:x/part-010.parquet")
    cfg = load_config(
        PretrainConfig,
        "learn-cpu",
        p.overrides() + ["data.objective=mlm", "data.rows=8"],
        presets_dir=PRESETS_DIR,
    )
    assert (cfg.data.max_residues, cfg.data.enc_len, cfg.data.mask_prob) == (254, 256, 0.15)
    assert cfg.data.objective == "mlm" and cfg.data.rows == 8 and not cfg.eval.probe
    assert cfg.data.paths == ("shared:uniprot_go/part-00[0-1].parquet",)
    assert json.loads(p.overrides()[0].split("=", 1)[1]) == list(p.train)


def test_reference_batches_mask_as_bert(pairs):
    rc = reference_mlm.RefConfig(crop=66)
    rng = np.random.default_rng(0)
    seqs = [r.astype(np.int64) for r, _ in pairs] * 20
    ids, lab, seen = reference_mlm.train_batch(seqs, rc, rng, np.arange(3, 28), TOK)
    assert seen == sum(len(s) for s in seqs) and ids.shape[1] <= 66
    assert np.all(ids[:, 0] == reference_mlm.CLS_ID) and np.all(lab[:, 0] == -100)
    sel = lab != -100
    assert abs(sel.sum() / seen - 0.15) < 0.02
    frac_mask = (ids[sel] == reference_mlm.MASK_ID).mean()
    frac_kept = (ids[sel] == lab[sel]).mean()
    assert abs(frac_mask - 0.8) < 0.04 and abs(frac_kept - 0.1 - 0.1 / 25) < 0.03


def test_shorter_training_crops_warn_of_untrained_sentinels(pairs, caplog):
    with caplog.at_level("WARNING", logger=learn_ref.__name__):
        learn_ref.heldout_batches(pairs, DataConfig(max_residues=64), TOK)
        assert not caplog.records
        learn_ref.heldout_batches(pairs, DataConfig(max_residues=30, shared_mask=True), TOK)
        assert not caplog.records  # one mask token: nothing untrained
        learn_ref.heldout_batches(pairs, DataConfig(max_residues=30), TOK)
    assert "<extra_id_5>" in caplog.text  # 30 residues at 20 %: 6 sentinels
