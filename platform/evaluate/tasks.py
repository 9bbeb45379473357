"""Evaluation tasks: load real labelled proteins, align labels to residues, split them fixedly.

Built-in tasks read ``<repo>/../shared/data`` (``ANKH_DATA_DIR`` overrides; the bundled
``<repo>/data`` is the fallback): ``ss3``/``ss8``/``contacts`` from ``pdb_dssp8.parquet``,
``go`` from ``uniprot_go``. User tasks come from CSV/Parquet/FASTA files (``user_task``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow.parquet as pq

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
class Limits:
    """Chains per split (taken in a fixed hash order) and the longest chain kept."""

    train: int = 2000
    valid: int = 300
    test: int = 500
    max_length: int = 1000
    contact_max_length: int = 300


def data_dir() -> Path:
    if os.environ.get("ANKH_DATA_DIR"):
        return Path(os.environ["ANKH_DATA_DIR"])
    repo = Path(__file__).resolve().parents[2]
    shared = repo.parent / "shared" / "data"
    return shared if (shared / "pdb_dssp8.parquet").exists() else repo / "data"


def _hash(key: str) -> int:
    return int(hashlib.sha1(key.encode()).hexdigest()[:12], 16)


def pdb_split(chain_id: str) -> str:
    """Fixed split of a chain by its PDB entry (4-char prefix): 80/10/10 train/valid/test."""
    b = _hash(chain_id.split("_")[0][:4].upper()) % 100
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


def near_duplicates(train_seqs: list[str], query_seqs: list[str], k: int = 8,
                    threshold: float = 0.3) -> np.ndarray:
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


def _take(idx: list[int], keys: list[str], n: int) -> list[int]:
    return sorted(idx, key=lambda i: _hash(keys[i]))[:n]


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


def load_pdb_task(name: str, limits: Limits = Limits(), root: Path | None = None) -> TaskData:
    path = (root or data_dir()) / "pdb_dssp8.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{name}: {path} not found (see data/README.md)")
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
        cand = _take([i for i in by_split[s] if 0 < len(seqs[i]) <= max_len], ids, len(ids))
        keep: list[int] = []
        removed[s] = 0
        while cand and len(keep) < getattr(limits, s):  # dedupe in chunks until the slice is full
            chunk, cand = cand[: 2 * getattr(limits, s)], cand[2 * getattr(limits, s):]
            if s != "train":
                dup = near_duplicates(train_seqs, [seqs[i] for i in chunk])
                removed[s] += int(dup[: max(0, getattr(limits, s) - len(keep))].sum())
                chunk = [i for i, d in zip(chunk, dup) if not d]
            keep += chunk[: getattr(limits, s) - len(keep)]
        rows = table.take(keep).to_pydict()
        if name == "contacts":
            labels = [np.asarray(x, np.float32).reshape(-1, 3) for x in rows["ca_xyz"]]
        else:
            labels = [ss_labels(x, 3 if name == "ss3" else 8) for x in rows["dssp8"]]
        splits[s] = Split(rows["id"], rows["sequence"], labels)
        for cid, seq, lab in zip(rows["id"], rows["sequence"], labels):
            if len(lab) != len(seq):
                raise ValueError(f"{name}: chain {cid} has {len(seq)} residues but {len(lab)} labels")
    classes = [] if name == "contacts" else list(SS3 if name == "ss3" else SS8)
    kind: Kind = "contacts" if name == "contacts" else "residue_class"
    return TaskData(name, kind, classes, splits,
                    {"source": str(path), "near_duplicates_skipped": removed,
                     "split": "by PDB id (sha1 of the 4-char entry id), 80/10/10"})


# ---- GO ---------------------------------------------------------------------------------------------
def load_go_task(limits: Limits = Limits(), top_n: int = 20, root: Path | None = None) -> TaskData:
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
    return TaskData("go", "multilabel", terms, splits,
                    {"top_n_per_ontology": top_n, "near_duplicates_removed": removed,
                     "ontology_of_term": ontology,
                     "split": "the dataset's fixed split column (hash of the accession)"})


# ---- user tasks ------------------------------------------------------------------------------------
BUILTIN = ("ss3", "ss8", "contacts", "go")
USER_KINDS = ("residue_class", "protein_class", "protein_reg")
_SPEC_KEYS = {"name", "kind", "label", "sequence", "file", "train", "valid", "test"}


def parse_task_spec(spec: str) -> dict[str, str]:
    """``ss3`` | ``path.csv`` | ``name=x,kind=protein_reg,label=y,train=a.csv,valid=b.csv,test=c.csv``."""
    if spec in BUILTIN:
        return {"name": spec}
    if "=" not in spec:
        return {"name": Path(spec).stem, "file": spec}
    out = {}
    for item in spec.split(","):
        k, sep, v = item.partition("=")
        if not sep or k.strip() not in _SPEC_KEYS:
            raise ValueError(f"task spec {spec!r}: bad item {item!r}; keys: {sorted(_SPEC_KEYS)}")
        out[k.strip()] = v.strip()
    if "file" not in out and not {"train", "test"} <= set(out):
        raise ValueError(f"task spec {spec!r}: give file=PATH or train=PATH,test=PATH[,valid=PATH]")
    if out.get("kind") and out["kind"] not in USER_KINDS:
        raise ValueError(f"task spec {spec!r}: kind must be one of {USER_KINDS}")
    out.setdefault("name", Path(out.get("file") or out["train"]).stem)
    return out


def read_fasta_labels(path: str | Path) -> dict[str, list]:
    """FASTA with a per-residue label line after each sequence line (``>id``, ``SEQ``, ``LAB``);
    an optional ``split=train|valid|test`` token in the header."""
    rows: dict[str, list] = {"id": [], "sequence": [], "label": [], "split": []}
    records = Path(path).read_text().split(">")[1:]
    if not records:
        raise ValueError(f"{path}: no FASTA records (expected '>' headers)")
    for rec in records:
        lines = [ln.strip() for ln in rec.strip().splitlines() if ln.strip()]
        head = lines[0].split()
        if len(lines) != 3:
            raise ValueError(f"{path}: record {head[0] if head else '?'} has {len(lines) - 1} lines "
                             "after the header; expected a sequence line and a label line")
        split = next((h.split("=", 1)[1] for h in head[1:] if h.startswith("split=")), "")
        for k, v in zip(rows, (head[0], lines[1].upper(), lines[2], split)):
            rows[k].append(v)
    return rows


def read_table(path: str | Path) -> dict[str, list]:
    p = str(path)
    if p.endswith((".fasta", ".fa", ".fas")):
        return read_fasta_labels(p)
    if p.endswith(".parquet"):
        return pq.read_table(p).to_pydict()
    if p.endswith((".csv", ".tsv")):
        import pyarrow.csv as pacsv

        opts = pacsv.ParseOptions(delimiter="\t" if p.endswith(".tsv") else ",")
        return pacsv.read_csv(p, parse_options=opts).to_pydict()
    raise ValueError(f"{p}: unsupported file type (csv, tsv, parquet, fasta)")


def _infer_kind(seqs: list[str], labels: list) -> str:
    if all(isinstance(y, str) and len(y) == len(s) for s, y in zip(seqs, labels)):
        return "residue_class"
    if all(isinstance(y, (int, float)) and not isinstance(y, bool) for y in labels):
        vals = np.asarray(labels, np.float64)
        return "protein_class" if np.all(vals == np.round(vals)) and len(set(labels)) <= 50 else "protein_reg"
    return "protein_class"


def load_user_task(spec: dict[str, str], limits: Limits = Limits(), seed: int = 0) -> TaskData:
    label, seq_col = spec.get("label", "label"), spec.get("sequence", "sequence")
    raw: dict[str, tuple[list, list, list]] = {}
    for s in SPLITS:  # explicit split files, else one file split by column or by hash
        if spec.get(s):
            t = read_table(spec[s])
            raw[s] = _columns(t, spec[s], seq_col, label)
    if not raw:
        t = read_table(spec["file"])
        ids, seqs, labels = _columns(t, spec["file"], seq_col, label)
        if any(t.get("split") or []):
            col = [{"validation": "valid", "val": "valid"}.get(x, x) for x in t["split"]]
        else:
            col = [("test" if b < 10 else "valid" if b < 20 else "train")
                   for b in (_hash(f"{seed}:{s}") % 100 for s in seqs)]
        for s in SPLITS:
            pick = [i for i, c in enumerate(col) if c == s]
            raw[s] = ([ids[i] for i in pick], [seqs[i] for i in pick], [labels[i] for i in pick])
    if "train" not in raw or "test" not in raw:
        raise ValueError(f"task {spec['name']}: needs train and test data")
    if "valid" not in raw or not raw["valid"][0]:  # carve 10% of train for early stopping
        ids, seqs, labels = raw["train"]
        val = [_hash(f"v{seed}:{s}") % 10 == 0 for s in seqs]
        raw["valid"] = tuple([x for x, v in zip(col, val) if v] for col in raw["train"])  # type: ignore
        raw["train"] = tuple([x for x, v in zip(col, val) if not v] for col in (ids, seqs, labels))  # type: ignore
    files = [spec.get(k) or "" for k in ("file", "train")]
    fasta = any(f.endswith((".fasta", ".fa", ".fas")) for f in files)  # label lines: per residue
    kind = spec.get("kind") or ("residue_class" if fasta else _infer_kind(raw["train"][1], raw["train"][2]))
    return _build_user(spec["name"], kind, raw, limits, spec)


def _columns(t: dict[str, list], path: str, seq_col: str, label: str) -> tuple[list, list, list]:
    for c in (seq_col, label):
        if c not in t:
            raise ValueError(f"{path}: no column {c!r}; columns are {sorted(t)}")
    seqs = [str(s).strip().upper() for s in t[seq_col]]
    ids = [str(x) for x in t["id"]] if "id" in t else [f"{Path(path).stem}:{i}" for i in range(len(seqs))]
    missing = [i for i, y in enumerate(t[label]) if y is None]
    if missing:
        raise ValueError(f"{path}: {len(missing)} rows have no {label!r} (first: row {missing[0]})")
    return ids, seqs, list(t[label])


def _build_user(name: str, kind: str, raw: dict, limits: Limits, spec: dict) -> TaskData:
    train_labels = raw["train"][2]
    if kind == "residue_class":
        classes = sorted({c for y in train_labels for c in str(y)})
    elif kind == "protein_class":
        classes = sorted({str(y) for y in train_labels})
    else:
        classes = []
    index = {c: i for i, c in enumerate(classes)}
    splits = {}
    for s in SPLITS:
        ids, seqs, labels = raw[s]
        keep = _take([i for i, q in enumerate(seqs) if 0 < len(q) <= limits.max_length], ids,
                     getattr(limits, s))
        out = []
        for i in keep:
            y = labels[i]
            if kind == "residue_class":
                y = str(y)
                if len(y) != len(seqs[i]):
                    raise ValueError(f"task {name}: {ids[i]} has {len(seqs[i])} residues but {len(y)} labels")
                unseen = set(y) - set(index)
                if unseen:
                    raise ValueError(f"task {name}: {ids[i]} has label(s) {sorted(unseen)} not in train")
                out.append(np.array([index[c] for c in y], np.int8))
            elif kind == "protein_class":
                if str(y) not in index:
                    raise ValueError(f"task {name}: {ids[i]} has label {y!r} not seen in train")
                out.append(index[str(y)])
            else:
                out.append(float(y))
        splits[s] = Split([ids[i] for i in keep], [seqs[i] for i in keep], out)
    return TaskData(name, kind, classes, splits, {"source": {k: v for k, v in spec.items() if k != "name"}})


def load_task(spec: str, limits: Limits = Limits(), go_top_n: int = 20, seed: int = 0) -> TaskData:
    parsed = parse_task_spec(spec)
    if parsed["name"] in ("ss3", "ss8", "contacts") and len(parsed) == 1:
        return load_pdb_task(parsed["name"], limits)
    if parsed["name"] == "go" and len(parsed) == 1:
        return load_go_task(limits, go_top_n)
    return load_user_task(parsed, limits, seed)
