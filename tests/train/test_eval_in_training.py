"""Evaluation during pretraining: the SS3 (and SS8) linear probes, the unigram line, curves.png,
TensorBoard.

Real data throughout: PDB/DSSP chains (the shared ``pdb_dssp8.parquet`` when present, else the
bundled ``pdb_sample``, which holds the same probe slice) and the bundled UniProt sample.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from ankh_platform.core import samples
from tests.train.helpers import pretrain_config

BUNDLED_PDB = samples.bundled_dir() / "pdb_sample"


@pytest.fixture(scope="module")
def probe():
    from ankh_platform.train.probe import SS3Probe

    return SS3Probe.load(train_chains=250, test_chains=150)


def test_onehot_probe_is_deterministic_and_sane(probe):
    c = probe.chains
    assert len(c.train_seqs) == 250 and len(c.test_seqs) == 150
    assert max(map(len, c.train_seqs + c.test_seqs)) <= 127
    q = probe.q3_onehot()
    assert 0.4 < q < 0.6, q  # residue identity alone: ~0.48 on SS3
    assert probe.q3_onehot() == q  # fixed chains, zero init, fixed iterations: bit-identical


def test_probe_separates_an_informative_feature_from_noise(probe):
    """One-hot of the true SS3 label appended to noise -> near-perfect; noise alone -> the
    majority class (so a broken fit, split or label alignment fails here)."""
    rng = np.random.default_rng(0)

    def noise(seqs):
        return [rng.standard_normal((len(s), 16)).astype(np.float32) for s in seqs]

    labels = {
        id(s): y
        for s, y in zip(
            probe.chains.train_seqs + probe.chains.test_seqs,
            probe.chains.train_labels + probe.chains.test_labels,
        )
    }

    def informative(seqs):
        return [
            np.concatenate([x, np.eye(3, dtype=np.float32)[labels[id(s)]]], 1)
            for s, x in zip(seqs, noise(seqs))
        ]

    y = np.concatenate(probe.chains.test_labels)
    majority = np.bincount(y).max() / len(y)
    assert probe.q3(informative) > 0.95
    q_noise = probe.q3(noise)
    assert abs(q_noise - majority) < 0.04 and q_noise < 0.45, (q_noise, majority)


def test_ss8_probe_separates_an_informative_feature_from_noise(probe):
    """SS8 over the same chains: one-hot of the true SS8 label beside noise -> near-perfect Q8
    (and Q3, its coarsening); noise alone -> the majority SS8 class."""
    from ankh_platform.train.probe import SS3Probe

    both = SS3Probe(probe.chains, tasks=("ss3", "ss8"))
    train8, test8 = probe.chains.labels["ss8"]
    assert max(np.concatenate(test8)) > 2  # real 8-state ids, not the SS3 ones
    rng = np.random.default_rng(0)

    def noise(seqs):
        return [rng.standard_normal((len(s), 16)).astype(np.float32) for s in seqs]

    labels = {
        id(s): y for s, y in zip(probe.chains.train_seqs + probe.chains.test_seqs, train8 + test8)
    }

    def informative(seqs):
        return [
            np.concatenate([x, np.eye(8, dtype=np.float32)[labels[id(s)]]], 1)
            for s, x in zip(seqs, noise(seqs))
        ]

    good = both.scores(informative)
    assert good["ss8_q8"] > 0.95 and good["ss3_q3"] > 0.95, good
    y = np.concatenate(test8)
    majority = np.bincount(y).max() / len(y)
    bad = both.scores(noise)["ss8_q8"]
    assert abs(bad - majority) < 0.04 and bad < good["ss8_q8"] - 0.5, (bad, majority)


def test_adding_ss8_leaves_ss3_unchanged(probe):
    """SS3 labels derived from the SS8 ones are the SS3 task's own labels, byte for byte, and
    SS3 Q3 is the same number whether or not SS8 is probed beside it."""
    from ankh_platform.core.samples import pdb_dir
    from ankh_platform.evaluate.embedders import OneHotFeatures
    from ankh_platform.evaluate.tasks import TaskLimits, load_pdb_task
    from ankh_platform.train.probe import SS3Probe

    ss3 = load_pdb_task("ss3", TaskLimits(train=250, valid=0, test=150), root=pdb_dir())
    for mine, theirs in (
        (probe.chains.train_labels, ss3.splits["train"].labels),
        (probe.chains.test_labels, ss3.splits["test"].labels),
    ):
        assert len(mine) == len(theirs)
        assert all(
            a.dtype == b.dtype and a.tobytes() == b[:127].tobytes() for a, b in zip(mine, theirs)
        )
    calls = []

    def onehot(seqs):  # counts embedding calls: one per split, however many tasks
        calls.append(len(seqs))
        return OneHotFeatures().embed(seqs)

    alone = SS3Probe(probe.chains, tasks=("ss3",)).scores(onehot)
    both = SS3Probe(probe.chains, tasks=("ss3", "ss8")).scores(onehot)
    assert calls == [250, 150] * 2  # the features are computed once per scoring, not per task
    assert list(alone) == ["ss3_q3"] and list(both) == ["ss3_q3", "ss8_q8"]
    assert alone["ss3_q3"] == both["ss3_q3"] == probe.q3_onehot()
    assert 0.25 < both["ss8_q8"] < both["ss3_q3"], both  # 8 states: harder than 3


def test_bundled_sample_holds_the_same_probe_slice(probe):
    from ankh_platform.train.probe import load_chains

    bundled = load_chains(250, 150, 127, root=BUNDLED_PDB)
    assert (
        bundled.train_seqs == probe.chains.train_seqs
        and bundled.test_seqs == probe.chains.test_seqs
    )
    assert all((a == b).all() for a, b in zip(bundled.test_labels, probe.chains.test_labels))


def test_eval_residue_targets_follow_the_tokenizer():
    """A vocabulary whose residues are not ids 3..27 (as an ankh3 tokenizer.json): the residue
    loss counts exactly the targets the tokenizer calls residues."""
    import jax
    from flax import nnx

    from ankh.config import PRESETS
    from ankh.tokenizer import AMINO_ACIDS, RESIDUE_IDS, AnkhTokenizer
    from ankh.training import build_model, eval_step, graphdef_of

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, "[NLU]": 3, "[S2S]": 4}
    vocab |= {a: 5 + i for i, a in enumerate(AMINO_ACIDS)}
    vocab |= {f"<extra_id_{k}>": 255 - k for k in range(256 - len(vocab))}
    tok = AnkhTokenizer(vocab)
    table = tok.residue_table(256)
    assert table.sum() == len(AMINO_ACIDS) and not table[:5].any() and table[5:30].all()
    cfg = PRESETS["tiny"].replace(vocab_size=256, num_layers=1, num_decoder_layers=1)
    params = nnx.split(build_model(cfg, 0))[1].to_pure_dict()
    labels = np.array([[3, 20, 28, 29, 200, 1, 2, 0]], np.int32)  # id 3 is [NLU] here
    batch = {
        "input_ids": np.array([[7, 8, 9, 1, 0, 0, 0, 0]], np.int32),
        "segment_ids": np.array([[1, 1, 1, 1, 0, 0, 0, 0]], np.int32),
        "positions": np.arange(8, dtype=np.int32)[None],
        "labels": labels,
        "decoder_input_ids": np.roll(labels, 1, 1),
        "decoder_segment_ids": np.ones((1, 8), np.int32),
        "decoder_positions": np.arange(8, dtype=np.int32)[None],
        "loss_mask": np.ones((1, 8), np.int32),
    }
    graphdef = graphdef_of(cfg)
    with_table = jax.jit(lambda p, b: eval_step(graphdef, p, b, table))
    out = jax.device_get(with_table(params, batch))
    assert out["res_tokens"] == 3  # 20, 28, 29 ("O", "U", "Z" here); not [NLU], 200, </s>, ...
    only = dict(batch, loss_mask=table[labels].astype(np.int32))
    assert np.isclose(out["res_ce"], jax.device_get(with_table(params, only))["ce"], rtol=1e-5)
    # The fixed Ankh ids 3..27 would count [NLU] and 20 only: the bug this fixes.
    assert np.isin(labels, RESIDUE_IDS).sum() == 2


def test_console_eval_line_shows_unigram_and_q3():
    from ankh_platform.train.records import console_lines

    rec = {
        "step": 100,
        "val_loss": 1.5,
        "val_accuracy": 0.5,
        "val_residue_loss": 2.75,
        "unigram_entropy": 2.888,
        "ss3_q3": 0.512,
    }
    assert console_lines(rec, 300) == [
        "eval step 100 | val_loss 1.500 | val_acc 0.500 | "
        "val_residue_loss 2.750 (unigram 2.888) | ss3_q3 0.512"
    ]
    ref = {"step": 0, "event": "reference", "unigram_entropy": 2.888, "ss3_q3_onehot": 0.48}
    assert console_lines(ref, 300) == [
        "reference | unigram entropy (held-out residues) 2.888 | SS3 Q3 one-hot 0.480"
    ]
    assert console_lines(rec | {"ss8_q8": 0.301}, 300)[0].endswith("| ss3_q3 0.512 | ss8_q8 0.301")
    assert console_lines(ref | {"ss8_q8_onehot": 0.35}, 300)[0].endswith(
        "SS3 Q3 one-hot 0.480 | SS8 Q8 one-hot 0.350"
    )


def test_bad_probe_settings_are_config_errors():
    from ankh_platform.core.config import ConfigError

    with pytest.raises(ConfigError, match="probe_test_chains"):
        pretrain_config("/tmp/x", "bad", "eval.probe=true", "eval.probe_test_chains=0")
    pretrain_config("/tmp/x", "ok", "eval.probe=false", "eval.probe_test_chains=0")


def test_probe_tasks_are_checked():
    from ankh_platform.core.config import ConfigError

    assert pretrain_config("/tmp/x", "d", "eval.probe=true").eval.probe_tasks == ("ss3",)
    cfg = pretrain_config("/tmp/x", "both", "eval.probe=true", "eval.probe_tasks=[ss3,ss8]")
    assert cfg.eval.probe_tasks == ("ss3", "ss8")
    with pytest.raises(ConfigError, match=r"unknown task 'dssp' \(allowed: ss3, ss8\)"):
        pretrain_config("/tmp/x", "bad", "eval.probe_tasks=[ss3,dssp]")
    with pytest.raises(ConfigError, match="probe_tasks is empty but eval.probe is true"):
        pretrain_config("/tmp/x", "bad", "eval.probe=true", "eval.probe_tasks=[]")
    with pytest.raises(ConfigError, match="repeated"):
        pretrain_config("/tmp/x", "bad", "eval.probe_tasks=[ss8,ss8]")
    pretrain_config("/tmp/x", "off", "eval.probe=false", "eval.probe_tasks=[]")


def tensorboard_tags(folder: Path) -> set[str]:
    """Scalar tags in a TensorBoard events file (TFRecord framing, Event protos)."""
    from tensorboardX.proto import event_pb2

    tags: set[str] = set()
    for path in folder.glob("events.out.tfevents.*"):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + n])
            tags |= {v.tag for v in event.summary.value}
            pos += 12 + n + 4  # length, its crc, the record, its crc
    return tags


def test_short_run_reports_probe_unigram_curves_and_tensorboard(tmp_path, monkeypatch, capsys):
    from ankh_platform.train import curves, probe
    from ankh_platform.train.job import run_local_process

    monkeypatch.setattr(
        probe, "pdb_dir", lambda: BUNDLED_PDB
    )  # the bundled slice: no shared data needed
    cfg = pretrain_config(
        tmp_path,
        "evalrun",
        "eval.probe=true",
        "source.kind=local",
        "steps=4",
        "log_every=2",
        "eval_every=2",
        "checkpoint.every=4",
        "eval.probe_train_chains=40",
        "eval.probe_test_chains=20",
        "eval.probe_tasks=[ss3,ss8]",
    )
    summary = run_local_process(cfg)
    run = tmp_path / "evalrun"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in evals] == [2, 4]
    for r in evals:
        assert 0.0 <= r["ss3_q3"] <= 1.0 and 2.0 < r["unigram_entropy"] < 3.2, r
        assert 0.0 <= r["ss8_q8"] <= 1.0, r  # eval.probe_tasks=[ss3,ss8]: both, every eval
    on_disk = json.loads((run / "summary.json").read_text())
    for s in (summary, on_disk):
        for key in (
            "ss3_q3",
            "unigram_entropy",
            "ss3_q3_onehot",
            "ss3_q3_random_init",
            "ss8_q8",
            "ss8_q8_onehot",
            "ss8_q8_random_init",
        ):
            assert 0.0 < s[key] < 3.2, (key, s)
    assert summary["ss3_q3"] == evals[-1]["ss3_q3"] and summary["ss8_q8"] == evals[-1]["ss8_q8"]
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and summary[
        "curves"
    ] == f"{run}/curves.png"
    assert {
        "ss3_q3",
        "val_residue_loss",
        "unigram_entropy",
        "ss3_q3_onehot",
        "ss8_q8",
        "ss8_q8_onehot",
    } <= tensorboard_tags(run / "tensorboard")
    err = capsys.readouterr().err
    assert "reference | unigram entropy (held-out residues) " in err and "SS3 Q3 one-hot" in err
    assert "SS8 Q8 one-hot" in err
    assert "(unigram " in err and "| ss3_q3 0." in err and "| ss8_q8 0." in err

    # The redraw helper: the same figure from metrics.jsonl alone.
    assert curves.main([str(run), "--output", str(tmp_path / "again.png")]) == 0
    assert (tmp_path / "again.png").stat().st_size > 10_000
    assert curves.main([str(tmp_path / "nothing")]) == 2


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_workers_with_sharded_params_probe_on_process_zero(tmp_path, ray_local):
    """fsdp=2 over two Ray Train workers: every parameter is split across the two processes;
    process 0 gathers them and probes, the other keeps in step; the Q3 is the one-process run's."""
    from ankh_platform.train.job import run, run_local_process

    args = (
        "eval.probe=true",
        "source.kind=local",
        "steps=4",
        "log_every=2",
        "eval_every=2",
        "checkpoint.every=4",
        "data.rows=2",
        "eval.probe_train_chains=80",
        "eval.probe_test_chains=40",
    )
    summary = run(
        pretrain_config(
            tmp_path, "fsdp", *args, "scale.num_workers=2", "mesh.fsdp=2", "mesh.data=1"
        )
    )
    reference = run_local_process(pretrain_config(tmp_path, "one", *args, "data.rows=4"))
    assert summary["step"] == 4 and 0.3 < summary["ss3_q3"] < 0.7
    assert summary["unigram_entropy"] == pytest.approx(reference["unigram_entropy"], abs=1e-6)
    assert summary["ss3_q3"] == pytest.approx(reference["ss3_q3"], abs=0.01)


def _masked_fraction(batches: list[dict]) -> float:
    """Masked residues (residue labels) per residue token seen by the encoder or decoder."""
    lab = np.concatenate([b["labels"][b["loss_mask"] > 0] for b in batches])
    masked = int(((lab >= 3) & (lab < 28)).sum())
    enc = np.concatenate([b["input_ids"].ravel() for b in batches])
    unmasked = int(((enc >= 3) & (enc < 28)).sum())
    return masked / (masked + unmasked)


@pytest.mark.parametrize("kind", ["local", "stream"])
def test_eval_mask_prob_fixes_the_held_out_objective(kind, ray_local):
    """source.eval_mask_prob: runs trained at different masking rates are scored on the same
    held-out targets (byte-identical batches); 0 keeps the run's own rate."""
    from ankh_platform.core.config import ConfigError
    from ankh_platform.data.pipeline import DataConfig
    from ankh_platform.train.config import SourceConfig
    from ankh_platform.train.source import make_source
    from tests.train.helpers import TRAIN, VALID

    def held_out(train_p: float, eval_p: float) -> list[dict]:
        data = DataConfig(
            paths=(TRAIN,), rows=4, enc_len=264, max_residues=128, mask_prob=train_p, prefetch=0
        )
        src = make_source(
            data,
            SourceConfig(kind=kind, eval_paths=(VALID,), eval_batches=3, eval_mask_prob=eval_p),
            0,
            1,
        )
        try:
            return src.eval_batches()
        finally:
            src.close()

    a, b = held_out(0.10, 0.30), held_out(0.30, 0.30)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)
    own = held_out(0.10, 0.0)
    assert abs(_masked_fraction(own) - 0.10) < 0.04
    assert abs(_masked_fraction(a) - 0.30) < 0.05
    with pytest.raises(ConfigError, match="eval_mask_prob"):
        SourceConfig(eval_mask_prob=1.0)
