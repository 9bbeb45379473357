"""Evaluation tasks: load real labelled proteins, align labels to residues, split them fixedly.

Built-in tasks read ``ankh_platform.core.samples.data_dir()`` (``ANKH_DATA_DIR``, else
``<repo>/../shared/data``, else the bundled ``<repo>/data``): ``ss3``/``ss8``/``contacts`` from
``pdb_dssp8.parquet``, ``go`` from ``uniprot_go``. What a ``--task`` spec names (a built-in or
user files) is resolved in ``task_specs``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow.parquet as pq

from ankh_platform.core.samples import data_dir

log = logging.getLogger(__name__)

Kind = Literal["residue_class", "protein_class", "protein_reg", "multilabel", "contacts"]
SPLITS = ("train", "valid", "test")
SS8 = "HGIEBTSC"
SS3 = "HEC"
SS8_TO_SS3 = {"H": "H", "G": "H", "I": "H", "E": "E", "B": "E"}  # everything else -> C


@dataclasses.dataclass
class Split:
    ids: list[str]
    seqs: list[str]
    labels: list[Any]  # per kind: int array [L] | int | float | bool array [n] | ca xyz [L, 3]


@dataclasses.dataclass
class TaskData:
    name: str
    kind: Kind
    classes: list[str]  # class names (classification), term ids (multilabel), [] otherwise
    splits: dict[str, Split]
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def per_protein(self) -> bool:
        return self.kind in ("protein_class", "protein_reg", "multilabel")


@dataclasses.dataclass(frozen=True)
class TaskLimits:
    """Chains per split (taken in a fixed hash order) and the longest chain kept."""

    train: int = 2000
    valid: int = 300
    test: int = 500
    max_length: int = 1000
    contact_max_length: int = 300


def stable_hash(key: str) -> int:
    """A key's fixed position in split and selection orders (the same on every machine)."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:12], 16)


def pdb_split(chain_id: str) -> str:
    """Fixed split of a chain by its PDB entry (4-char prefix): 80/10/10 train/valid/test."""
    b = stable_hash(chain_id.split("_")[0][:4].upper()) % 100
    return "test" if b < 10 else "valid" if b < 20 else "train"


# ---- near-duplicate removal ---------------------------------------------------------------------
_CODE = np.full(256, 20, np.int64)
for _i, _a in enumerate("ACDEFGHIKLMNPQRSTVWY"):
    _CODE[ord(_a)] = _i


def kmer_codes(seq: str, k: int = 8) -> np.ndarray:
    """Distinct k-mers of a sequence as int64 codes (base 21)."""
    c = _CODE[np.frombuffer(seq.encode(), np.uint8)]
    if len(c) < k:
        return np.zeros(0, np.int64)
    w = np.lib.stride_tricks.sliding_window_view(c, k)  # [L-k+1, k]
    return np.unique(w @ (21 ** np.arange(k, dtype=np.int64)))


def _all_kmers(seqs: list[str], k: int) -> np.ndarray:
    """k-mer codes of many sequences at once (windows crossing a boundary dropped)."""
    if not seqs:
        return np.zeros(0, np.int64)
    c = _CODE[np.frombuffer("".join(seqs).encode(), np.uint8)]
    if len(c) < k:
        return np.zeros(0, np.int64)
    codes = np.lib.stride_tricks.sliding_window_view(c, k) @ (21 ** np.arange(k, dtype=np.int64))
    ends = np.cumsum([len(s) for s in seqs])  # exclusive end of each sequence
    start = np.arange(len(codes))
    owner_end = ends[np.searchsorted(ends, start, side="right")]
    return codes[start + k <= owner_end]


def near_duplicates(
    train_seqs: list[str], query_seqs: list[str], k: int = 8, threshold: float = 0.3
) -> np.ndarray:
    """Mask of query chains identical to a training chain, or with >= ``threshold`` of their
    k-mers found in training chains (8-mers shared by chance are ~1e-4 here; a chain at ~90%
    identity keeps ~0.9**8 = 43% of its 8-mers, so ~>85% identity is removed)."""
    train_set = set(train_seqs)
    pool = np.sort(_all_kmers(train_seqs, k))
    out = np.zeros(len(query_seqs), bool)
    for i, s in enumerate(query_seqs):
        if s in train_set:
            out[i] = True
            continue
        q = kmer_codes(s, k)
        if len(q) and len(pool):
            pos = np.minimum(np.searchsorted(pool, q), len(pool) - 1)  # pool is sorted
            out[i] = np.mean(pool[pos] == q) >= threshold
    return out


def take_in_hash_order(idx: list[int], keys: list[str], n: int) -> list[int]:
    """The first ``n`` of ``idx`` in the fixed order of their keys' hashes."""
    return sorted(idx, key=lambda i: stable_hash(keys[i]))[:n]


# ---- PDB tasks ------------------------------------------------------------------------------------
def ss_labels(dssp8: str, states: int) -> np.ndarray:
    """Per-residue class ids: SS8 in the order HGIEBTSC, SS3 in HEC (H,G,I->H; E,B->E; else C)."""
    unknown = set(dssp8) - set(SS8)
    if unknown:
        raise ValueError(f"unknown DSSP state {sorted(unknown)[0]!r} (expected one of {SS8})")
    if states == 8:
        alphabet, mapped = SS8, dssp8
    elif states == 3:
        alphabet, mapped = SS3, "".join(SS8_TO_SS3.get(c, "C") for c in dssp8)
    else:
        raise ValueError(f"states must be 3 or 8, got {states}")
    lut = np.full(256, -1, np.int64)
    for i, c in enumerate(alphabet):
        lut[ord(c)] = i
    ids = lut[np.frombuffer(mapped.encode(), np.uint8)]
    if (ids < 0).any():
        bad = mapped[int(np.argmax(ids < 0))]
        raise ValueError(f"unknown DSSP state {bad!r} (expected one of {SS8})")
    return ids.astype(np.int8)


def contact_map(ca: np.ndarray, cutoff: float = 8.0, min_sep: int = 6) -> np.ndarray:
    """``[L, L]`` bool: C-alpha distance < cutoff and sequence separation >= min_sep."""
    d = np.linalg.norm(ca[:, None, :] - ca[None, :, :], axis=-1)
    idx = np.arange(len(ca))
    return (d < cutoff) & (np.abs(idx[:, None] - idx[None, :]) >= min_sep)


def load_pdb_task(
    name: str, limits: TaskLimits = TaskLimits(), root: Path | None = None
) -> TaskData:
    path = (root or data_dir()) / "pdb_dssp8.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{name}: {path} not found (see platform/core/data/README.md)")
    table = pq.read_table(path)
    ids, seqs = table.column("id").to_pylist(), table.column("sequence").to_pylist()
    max_len = limits.contact_max_length if name == "contacts" else limits.max_length
    by_split: dict[str, list[int]] = {s: [] for s in SPLITS}
    for i, cid in enumerate(ids):
        by_split[pdb_split(cid)].append(i)
    # Held-out chains are checked against the WHOLE training split (not just the slice).
    train_seqs = [seqs[i] for i in by_split["train"]]
    removed, splits = {}, {}
    for s in SPLITS:
        cand = take_in_hash_order(
            [i for i in by_split[s] if 0 < len(seqs[i]) <= max_len], ids, len(ids)
        )
        keep: list[int] = []
        removed[s] = 0
        while cand and len(keep) < getattr(limits, s):  # dedupe in chunks until the slice is full
            chunk, cand = cand[: 2 * getattr(limits, s)], cand[2 * getattr(limits, s) :]
            if s != "train":
                dup = near_duplicates(train_seqs, [seqs[i] for i in chunk])
                removed[s] += int(dup[: max(0, getattr(limits, s) - len(keep))].sum())
                chunk = [i for i, d in zip(chunk, dup) if not d]
            keep += chunk[: getattr(limits, s) - len(keep)]
        rows = table.take(np.asarray(keep, np.int64)).to_pydict()  # typed: an empty slice too
        if name == "contacts":
            labels = [np.asarray(x, np.float32).reshape(-1, 3) for x in rows["ca_xyz"]]
        else:
            labels = [ss_labels(x, 3 if name == "ss3" else 8) for x in rows["dssp8"]]
        splits[s] = Split(rows["id"], rows["sequence"], labels)
        for cid, seq, lab in zip(rows["id"], rows["sequence"], labels):
            if len(lab) != len(seq):
                raise ValueError(
                    f"{name}: chain {cid} has {len(seq)} residues but {len(lab)} labels"
                )
    classes = [] if name == "contacts" else list(SS3 if name == "ss3" else SS8)
    kind: Kind = "contacts" if name == "contacts" else "residue_class"
    return TaskData(
        name,
        kind,
        classes,
        splits,
        {
            "source": str(path),
            "near_duplicates_skipped": removed,
            "split": "by PDB id (sha1 of the 4-char entry id), 80/10/10",
        },
    )


# ---- GO ---------------------------------------------------------------------------------------------
def load_go_task(
    limits: TaskLimits = TaskLimits(), top_n: int = 20, root: Path | None = None
) -> TaskData:
    """Multi-label over the ``top_n`` most frequent terms of each ontology in the train slice;
    the dataset's fixed ``split`` column; held-out proteins near-identical to a train one dropped."""
    parts = sorted(((root or data_dir()) / "uniprot_go").glob("part-*.parquet"))
    if not parts:
        sample = (root or data_dir()) / "uniprot_go_sample.parquet"
        parts = [sample] if sample.exists() else []
    if not parts:
        raise FileNotFoundError(f"go: no uniprot_go parquet under {root or data_dir()}")
    want = {"train": limits.train, "validation": limits.valid, "test": limits.test}
    rows: dict[str, list[dict]] = {k: [] for k in want}
    for p in parts:  # read parts until every split slice is full
        for r in pq.read_table(p).to_pylist():
            sp = r["split"]
            if sp in rows and len(rows[sp]) < want[sp] and 0 < r["length"] <= limits.max_length:
                rows[sp].append(r)
        if all(len(rows[k]) >= want[k] for k in want):
            break
    terms: list[str] = []
    ontology: list[str] = []
    for ont in ("go_mf", "go_bp", "go_cc"):
        counts: dict[str, int] = {}
        for r in rows["train"]:
            for g in r[ont] or []:
                counts[g] = counts.get(g, 0) + 1
        top = [g for g, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top_n]]
        terms += top
        ontology += [ont[3:]] * len(top)
    col = {g: i for i, g in enumerate(terms)}
    train_seqs = [r["sequence"] for r in rows["train"]]
    splits, removed = {}, {}
    for s, key in zip(SPLITS, ("train", "validation", "test")):
        rs = rows[key]
        if s != "train":
            dup = near_duplicates(train_seqs, [r["sequence"] for r in rs])
            removed[s] = int(dup.sum())
            rs = [r for r, d in zip(rs, dup) if not d]
        labels = []
        for r in rs:
            y = np.zeros(len(terms), bool)
            for ont in ("go_mf", "go_bp", "go_cc"):
                for g in r[ont] or []:
                    if g in col:
                        y[col[g]] = True
            labels.append(y)
        splits[s] = Split([r["id"] for r in rs], [r["sequence"] for r in rs], labels)
    return TaskData(
        "go",
        "multilabel",
        terms,
        splits,
        {
            "top_n_per_ontology": top_n,
            "near_duplicates_removed": removed,
            "ontology_of_term": ontology,
            "split": "the dataset's fixed split column (hash of the accession)",
        },
    )


def load_go_mf_task(
    limits: TaskLimits = TaskLimits(), top_n: int = 20, root: Path | None = None
) -> TaskData:
    """``go`` restricted to molecular function: the ``top_n`` most frequent GO-MF terms."""
    go = load_go_task(limits, top_n, root)
    cols = [i for i, o in enumerate(go.info["ontology_of_term"]) if o == "mf"]
    splits = {
        s: Split(sp.ids, sp.seqs, [np.asarray(y)[cols] for y in sp.labels])
        for s, sp in go.splits.items()
    }
    info = {**go.info, "ontology_of_term": ["mf"] * len(cols)}
    return TaskData("go_mf", "multilabel", [go.classes[i] for i in cols], splits, info)
