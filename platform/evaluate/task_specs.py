"""What a ``--task`` spec names: a built-in task (``ss3 ss8 contacts go go_mf``, ``tasks``) or user
files -- CSV/TSV/Parquet with a sequence and a label column, or FASTA with a per-residue label
line -- split by their own column, by separate files, or by a fixed hash of the sequence.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from ankh_platform.evaluate.tasks import (
    SPLITS,
    Split,
    TaskData,
    TaskLimits,
    load_go_mf_task,
    load_go_task,
    load_pdb_task,
    stable_hash,
    take_in_hash_order,
)

# ---- user tasks ------------------------------------------------------------------------------------
BUILTIN = ("ss3", "ss8", "contacts", "go", "go_mf")
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
            raise ValueError(
                f"{path}: record {head[0] if head else '?'} has {len(lines) - 1} lines "
                "after the header; expected a sequence line and a label line"
            )
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
        return (
            "protein_class"
            if np.all(vals == np.round(vals)) and len(set(labels)) <= 50
            else "protein_reg"
        )
    return "protein_class"


def load_user_task(
    spec: dict[str, str], limits: TaskLimits = TaskLimits(), seed: int = 0
) -> TaskData:
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
            col = [
                ("test" if b < 10 else "valid" if b < 20 else "train")
                for b in (stable_hash(f"{seed}:{s}") % 100 for s in seqs)
            ]
        for s in SPLITS:
            pick = [i for i, c in enumerate(col) if c == s]
            raw[s] = ([ids[i] for i in pick], [seqs[i] for i in pick], [labels[i] for i in pick])
    if "train" not in raw or "test" not in raw:
        raise ValueError(f"task {spec['name']}: needs train and test data")
    if "valid" not in raw or not raw["valid"][0]:  # carve 10% of train for early stopping
        ids, seqs, labels = raw["train"]
        val = [stable_hash(f"v{seed}:{s}") % 10 == 0 for s in seqs]
        raw["valid"] = tuple([x for x, v in zip(col, val) if v] for col in raw["train"])  # type: ignore
        raw["train"] = tuple([x for x, v in zip(col, val) if not v] for col in (ids, seqs, labels))  # type: ignore
    files = [spec.get(k) or "" for k in ("file", "train")]
    fasta = any(f.endswith((".fasta", ".fa", ".fas")) for f in files)  # label lines: per residue
    kind = spec.get("kind") or (
        "residue_class" if fasta else _infer_kind(raw["train"][1], raw["train"][2])
    )
    return _build_user(spec["name"], kind, raw, limits, spec)


def _columns(t: dict[str, list], path: str, seq_col: str, label: str) -> tuple[list, list, list]:
    for c in (seq_col, label):
        if c not in t:
            raise ValueError(f"{path}: no column {c!r}; columns are {sorted(t)}")
    seqs = [str(s).strip().upper() for s in t[seq_col]]
    ids = (
        [str(x) for x in t["id"]]
        if "id" in t
        else [f"{Path(path).stem}:{i}" for i in range(len(seqs))]
    )
    missing = [i for i, y in enumerate(t[label]) if y is None]
    if missing:
        raise ValueError(f"{path}: {len(missing)} rows have no {label!r} (first: row {missing[0]})")
    return ids, seqs, list(t[label])


def _build_user(name: str, kind: str, raw: dict, limits: TaskLimits, spec: dict) -> TaskData:
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
        fits = [i for i, q in enumerate(seqs) if 0 < len(q) <= limits.max_length]
        keep = take_in_hash_order(fits, ids, getattr(limits, s))
        out = []
        for i in keep:
            y = labels[i]
            if kind == "residue_class":
                y = str(y)
                if len(y) != len(seqs[i]):
                    raise ValueError(
                        f"task {name}: {ids[i]} has {len(seqs[i])} residues but {len(y)} labels"
                    )
                unseen = set(y) - set(index)
                if unseen:
                    raise ValueError(
                        f"task {name}: {ids[i]} has label(s) {sorted(unseen)} not in train"
                    )
                out.append(np.array([index[c] for c in y], np.int8))
            elif kind == "protein_class":
                if str(y) not in index:
                    raise ValueError(f"task {name}: {ids[i]} has label {y!r} not seen in train")
                out.append(index[str(y)])
            else:
                out.append(float(y))
        splits[s] = Split([ids[i] for i in keep], [seqs[i] for i in keep], out)
    return TaskData(
        name, kind, classes, splits, {"source": {k: v for k, v in spec.items() if k != "name"}}
    )


def load_task(
    spec: str, limits: TaskLimits = TaskLimits(), go_top_n: int = 20, seed: int = 0
) -> TaskData:
    parsed = parse_task_spec(spec)
    if parsed["name"] in ("ss3", "ss8", "contacts") and len(parsed) == 1:
        return load_pdb_task(parsed["name"], limits)
    if parsed["name"] == "go" and len(parsed) == 1:
        return load_go_task(limits, go_top_n)
    if parsed["name"] == "go_mf" and len(parsed) == 1:
        return load_go_mf_task(limits, go_top_n)
    return load_user_task(parsed, limits, seed)
