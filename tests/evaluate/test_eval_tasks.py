"""Evaluation tasks on small slices of the real data: labels aligned, splits disjoint, files parsed."""

import numpy as np
import pyarrow.parquet as pq
import pytest

from ankh_platform.evaluate import task_specs as ts
from ankh_platform.evaluate import tasks as et

LIMITS = et.TaskLimits(train=30, valid=8, test=12, max_length=400, contact_max_length=200)


@pytest.fixture(scope="module")
def pdb_rows(data_dir):
    path = data_dir / "pdb_dssp8.parquet"
    t = pq.read_table(path, columns=["id", "sequence", "dssp8", "ca_xyz"]).to_pydict()
    return {cid: (s, d, c) for cid, s, d, c in zip(t["id"], t["sequence"], t["dssp8"], t["ca_xyz"])}


@pytest.fixture(scope="module")
def ss3():
    return ts.load_task("ss3", LIMITS)


def test_ss_mapping_by_hand():
    assert "".join("HEC"[i] for i in et.ss_labels("HGIEBTSC", 3)) == "HHHEECCC"
    assert et.ss_labels("HGIEBTSC", 8).tolist() == list(range(8))
    with pytest.raises(ValueError, match="unknown DSSP state 'X'"):
        et.ss_labels("HHX", 3)


@pytest.mark.timeout(300)
def test_ss3_labels_aligned_to_residues(ss3, pdb_rows):
    hand = {"H": 0, "G": 0, "I": 0, "E": 1, "B": 1, "T": 2, "S": 2, "C": 2}
    assert {s: len(sp.ids) for s, sp in ss3.splits.items()} == {"train": 30, "valid": 8, "test": 12}
    for sp in ss3.splits.values():
        for cid, seq, lab in zip(sp.ids, sp.seqs, sp.labels):
            raw_seq, dssp8, _ = pdb_rows[cid]
            assert seq == raw_seq and len(lab) == len(seq) == len(dssp8)
            assert lab.tolist() == [hand[c] for c in dssp8]


@pytest.mark.timeout(300)
def test_no_chain_or_entry_in_train_and_test(ss3, pdb_rows):
    entry = lambda cid: cid.split("_")[0]  # noqa: E731
    train_entries = {entry(c) for c in ss3.splits["train"].ids}
    for s in ("valid", "test"):
        assert not train_entries & {entry(c) for c in ss3.splits[s].ids}
    # Against the WHOLE training split: no held-out sequence is identical to a training chain.
    full_train = {seq for cid, (seq, _, _) in pdb_rows.items() if et.pdb_split(cid) == "train"}
    assert not full_train & set(ss3.splits["test"].seqs)
    assert all(et.pdb_split(c) == "test" for c in ss3.splits["test"].ids)


def test_near_duplicates_flags_close_copies_only(pdb_rows):
    rng = np.random.default_rng(0)
    seqs = [s for s, _, _ in list(pdb_rows.values())[:50] if len(s) > 120]
    base, other = seqs[0], seqs[1]

    def mutate(s, frac):
        chars = list(s)
        for i in rng.choice(len(s), int(frac * len(s)), replace=False):
            chars[i] = "W" if chars[i] != "W" else "A"
        return "".join(chars)

    dup = et.near_duplicates([base], [base, mutate(base, 0.03), mutate(base, 0.4), other])
    assert dup.tolist() == [True, True, False, False]


@pytest.mark.timeout(300)
def test_contacts_task_labels(pdb_rows):
    task = ts.load_task("contacts", LIMITS)
    assert task.kind == "contacts"
    for sp in task.splits.values():
        for cid, seq, ca in zip(sp.ids, sp.seqs, sp.labels):
            assert ca.shape == (len(seq), 3) and len(seq) <= 200
            assert np.allclose(ca.ravel(), np.asarray(pdb_rows[cid][2], np.float32))
    cm = et.contact_map(task.splits["test"].labels[0])
    assert cm.any() and np.array_equal(cm, cm.T) and not np.diag(cm).any()


def test_go_task_multilabel(tmp_path, data_dir):
    sample = data_dir / "uniprot_go_sample.parquet"  # GO labels: the shared data (or ANKH_DATA_DIR)
    (tmp_path / "uniprot_go_sample.parquet").symlink_to(sample)
    task = et.load_go_task(et.TaskLimits(train=300, valid=40, test=40), top_n=5, root=tmp_path)
    assert task.kind == "multilabel" and len(task.classes) == 15
    assert task.info["ontology_of_term"] == ["mf"] * 5 + ["bp"] * 5 + ["cc"] * 5
    raw = {r["id"]: r for r in pq.read_table(sample).to_pylist()}
    for cid, y in zip(task.splits["train"].ids, task.splits["train"].labels):
        terms = (
            set(raw[cid]["go_mf"] or [])
            | set(raw[cid]["go_bp"] or [])
            | set(raw[cid]["go_cc"] or [])
        )
        assert y.tolist() == [t in terms for t in task.classes]
    assert not set(task.splits["train"].seqs) & set(task.splits["test"].seqs)


def test_user_csv_and_fasta_tasks(tmp_path, pdb_rows):
    items = list(pdb_rows.items())[:60]
    csv = tmp_path / "stab.csv"
    lines = ["id,sequence,score,split"] + [
        f"{cid},{s},{len(s) / 10:.1f},{('train', 'valid', 'test')[i % 3]}"
        for i, (cid, (s, _, _)) in enumerate(items)
    ]
    csv.write_text("\n".join(lines) + "\n")
    task = ts.load_task(f"name=stab,kind=protein_reg,label=score,file={csv}", LIMITS)
    assert task.kind == "protein_reg" and len(task.splits["test"].ids) == 12
    assert task.splits["train"].labels[0] == pytest.approx(len(task.splits["train"].seqs[0]) / 10)
    fasta = tmp_path / "ss.fasta"
    fasta.write_text(
        "".join(
            f">{cid} split={('train', 'valid', 'test')[i % 3]}\n{s}\n{d}\n"
            for i, (cid, (s, d, _)) in enumerate(items)
        )
    )
    task = ts.load_task(str(fasta), LIMITS)
    assert task.kind == "residue_class" and task.classes == sorted(
        set("".join(d for _, (_, d, _) in items))
    )
    sp = task.splits["test"]
    for cid, seq, lab in zip(sp.ids, sp.seqs, sp.labels):
        assert "".join(task.classes[i] for i in lab) == pdb_rows[cid][1] and len(lab) == len(seq)
    bad = tmp_path / "bad.fasta"
    bad.write_text(">a split=train\nACDEF\nHHH\n>b split=test\nACD\nHHH\n")
    with pytest.raises(ValueError, match="a has 5 residues but 3 labels"):
        ts.load_task(str(bad), LIMITS)
    with pytest.raises(ValueError, match="no column 'fitness'"):
        ts.load_task(f"name=x,label=fitness,file={csv}", LIMITS)
    with pytest.raises(ValueError, match="bad item"):
        ts.parse_task_spec("name=x,colour=red,file=a.csv")
