"""Each decision lives in exactly one module (docs/architecture.md, "Decisions that live in
exactly one place"): the length ladder + batching policy (``ankh/batching.py``), the
model-reference resolver (``ankh/resolve.py``), atomic writes + the storage environment
(``ankh/storage.py``), the vocabulary facts (``ankh/tokenizer.py``), the FLOP formula and the
matmul-peak probe (``ankh/flops.py``), the attention masks and ``NEG_INF``
(``ankh/attention.py``), the batch keys (``ankh/training.py``). Every check reads the source
with ``ast``, so a restatement is reported with its file and line.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.core._source import (
    REPO,
    call_name,
    calls,
    defs,
    library_files,
    mentions,
    rel,
    strings,
    top_level_names,
    tree,
    where,
)


def owner(path: str) -> Path:
    p = REPO / path
    assert p.is_file(), f"{path} does not exist yet"
    return p


def others(path: str) -> list[Path]:
    return [p for p in library_files() if p != REPO / path]


BATCHING = "ankh/batching.py"
# Names of the batching policy from before it moved: a def of one of these elsewhere is a copy.
OLD_BATCHING = re.compile(r"^_?(bucket_length|default_buckets|pad_rows)$|ladder")


def _pads_token_rows(fn: ast.AST) -> ast.Call | None:
    """A ``np.full((rows, length), <pad...>)`` in ``fn``: padding token lists into id rows."""
    for node in ast.walk(fn):
        if (
            isinstance(node, ast.Call)
            and call_name(node) in ("np.full", "numpy.full")
            and node.args
            and isinstance(node.args[0], ast.Tuple)
            and len(node.args[0].elts) == 2
            and len(node.args) > 1
            and "pad" in ast.unparse(node.args[1]).lower()
        ):
            return node
    return None


def test_length_ladder_and_batching_policy_live_in_ankh_batching():
    path = owner(BATCHING)
    policy = {n for n in top_level_names(path) if not n.startswith("_") and not n.isupper()}
    assert "DEFAULT_BATCH_TOKENS" in top_level_names(path)
    assert any("ladder" in n for n in policy), policy
    assert any(_pads_token_rows(fn) for fn in defs(path)), "the pad-to-rows function"
    bad = []
    for p in others(BATCHING):
        bad += [
            f"{where(p, fn)} def {fn.name} (a ladder/batching function of ankh.batching)"
            for fn in defs(p)
            if fn.name in policy or OLD_BATCHING.search(fn.name)
        ]
        bad += [
            f"{where(p, call)} pads token lists into rows"
            for fn in defs(p)
            if (call := _pads_token_rows(fn)) is not None
        ]
        bad += [f"{where(p, n)} a batch_tokens default restated" for n in _batch_token_defaults(p)]
    assert not bad, "\n".join(sorted(set(bad)))


def _batch_token_defaults(path: Path) -> Iterator[ast.AST]:
    """``batch_tokens: int = 8192`` fields and ``def f(batch_tokens=4096)`` defaults."""
    for node in ast.walk(tree(path)):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and node.target.id == "batch_tokens"
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, int)
        ):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            pos = (a.posonlyargs + a.args)[len(a.posonlyargs + a.args) - len(a.defaults) :]
            pairs = list(zip(pos, a.defaults)) + list(zip(a.kwonlyargs, a.kw_defaults))
            if any(
                arg.arg == "batch_tokens"
                and isinstance(d, ast.Constant)
                and isinstance(d.value, int)
                for arg, d in pairs
            ):
                yield node


RESOLVE = "ankh/resolve.py"
# config.py defines AnkhConfig.from_hf_dict; checkpoint.py defines is_checkpoint and reads its
# own metadata; everything else asks the resolver what a model reference is.
RESOLVER_INTERNALS = {RESOLVE, "ankh/config.py", "ankh/checkpoint.py"}


def test_model_reference_resolver_lives_in_ankh_resolve():
    assert "resolve" in top_level_names(owner(RESOLVE))
    bad = [
        f"{where(p, c)} calls {call_name(c)}"
        for p in library_files()
        if rel(p) not in RESOLVER_INTERNALS
        for c in calls(p)
        if call_name(c).rpartition(".")[2] in ("is_checkpoint", "from_hf_dict")
    ]
    assert not bad, "callers must go through ankh.resolve:\n" + "\n".join(bad)


STORAGE = "ankh/storage.py"
COMMITS = {"os.replace", "os.rename", "shutil.move"}
MOVES = (".mv", ".move", ".rename")  # fsspec / pathlib moves: ``fs.mv(tmp, final)``, ``tmp.rename``


def _commits(call: ast.Call) -> bool:
    return call_name(call) in COMMITS or call_name(call).endswith(MOVES)


def test_atomic_writes_and_storage_environment_live_in_ankh_storage():
    path = owner(STORAGE)
    env_vars = ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL")
    assert any(mentions(s, *env_vars) for s in strings(path))
    assert any(_commits(c) for c in calls(path)), "the atomic commit"
    bad = [
        f"{where(p, s)} names {s.value}"
        for p in others(STORAGE)
        for s in strings(p)
        if mentions(s, *env_vars)
    ]
    bad += [
        f"{where(p, c)} commits with {call_name(c)}"
        for p in others(STORAGE)
        for c in calls(p)
        if _commits(c)
    ]
    assert not bad, "\n".join(bad)


def _reads_table_from_handle(node: ast.AST) -> ast.Call | None:
    """``with <...>open(...) as fh: pq.read_table(fh)`` in ``node``: Arrow's dataset scanner
    over a Python file object, which can abort the interpreter at exit
    (``ankh.storage.read_parquet`` reads through ``ParquetFile`` instead)."""
    handles = {
        item.optional_vars.id
        for w in ast.walk(node)
        if isinstance(w, ast.With | ast.AsyncWith)
        for item in w.items
        if isinstance(item.context_expr, ast.Call)
        and call_name(item.context_expr).rpartition(".")[2].startswith("open")
        and isinstance(item.optional_vars, ast.Name)
    }
    for c in ast.walk(node):
        if (
            isinstance(c, ast.Call)
            and call_name(c).endswith("read_table")
            and c.args
            and isinstance(c.args[0], ast.Name)
            and c.args[0].id in handles
        ):
            return c
    return None


def test_parquet_reads_from_file_objects_go_through_ankh_storage():
    assert _reads_table_from_handle(tree(owner(STORAGE))) is None
    bad = [
        f"{where(p, c)} reads a Parquet file object with {call_name(c)}"
        for p in others(STORAGE)
        if (c := _reads_table_from_handle(tree(p))) is not None
    ]
    assert not bad, "use ankh.storage.read_parquet:\n" + "\n".join(bad)


TOKENIZER = "ankh/tokenizer.py"
ALPHABET = "ALGVSREDTIPKFQNYMHWCXBOUZ"


def _residue_range(node: ast.AST) -> bool:
    """``(3, 27)`` / ``(3, 28)`` as a tuple or as a call's first two arguments."""
    elts = (
        node.elts
        if isinstance(node, ast.Tuple)
        else node.args
        if isinstance(node, ast.Call)
        else []
    )
    vals = [e.value for e in elts[:2] if isinstance(e, ast.Constant)]
    return (
        len(vals) == 2
        and vals[0] == 3
        and vals[1] in (27, 28)
        and (isinstance(node, ast.Call) or len(elts) == 2)
    )


def test_vocabulary_facts_live_in_ankh_tokenizer():
    assert any(ALPHABET in s.value for s in strings(owner(TOKENIZER)))
    bad = [
        f"{where(p, s)} restates the alphabet"
        for p in others(TOKENIZER)
        for s in strings(p)
        if ALPHABET in s.value.upper()
    ]
    bad += [
        f"{where(p, n)} restates the residue ids: {ast.unparse(n)[:60]}"
        for p in others(TOKENIZER)
        for n in ast.walk(tree(p))
        if _residue_range(n)
    ]
    assert not bad, "derive them from ankh.tokenizer:\n" + "\n".join(bad)


FLOPS = "ankh/flops.py"
MODEL_DIMS = ("d_model", "d_ff", "d_kv", "num_heads", "num_layers", "num_decoder_layers")


def _matmul_probe(fn: ast.AST) -> bool:
    """A function that times a matmul itself (``@``, ``dot``, ``matmul``, ``einsum``)."""
    for node in ast.walk(fn):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult):
            return True
        if isinstance(node, ast.Call) and call_name(node).rpartition(".")[2] in (
            "dot",
            "matmul",
            "einsum",
        ):
            return True
    return False


def test_flop_formula_and_peak_probe_live_in_ankh_flops():
    path = owner(FLOPS)
    names = {fn.name for fn in defs(path)}
    assert "measure_matmul_peak" in names, names
    assert any("flops" in fn.name and mentions(fn, *MODEL_DIMS) for fn in defs(path)), names
    bad = []
    for p in others(FLOPS):
        for fn in defs(p):
            if "flops" in fn.name.lower() and mentions(fn, *MODEL_DIMS):
                bad.append(f"{where(p, fn)} def {fn.name} computes a FLOP formula")
            if "peak" in fn.name.lower() and _matmul_probe(fn):
                bad.append(f"{where(p, fn)} def {fn.name} probes the matmul peak itself")
            if fn.name == "measure_matmul_peak":
                bad.append(f"{where(p, fn)} re-defines measure_matmul_peak")
    assert not bad, "\n".join(bad)


ATTENTION = "ankh/attention.py"
MASK_NAMES = ("additive_mask", "attention_bias", "attention_mask")  # builder names, old and new


def _masking_constant(node: ast.AST) -> bool:
    """``NEG_INF``, ``finfo(...).min`` or a negative literal of masking size (<= -1e4)."""
    text = ast.unparse(node)
    if "NEG_INF" in text or ("finfo" in text and text.endswith(".min")):
        return True
    return (
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, ast.USub)
        and isinstance(node.operand, ast.Constant)
        and isinstance(node.operand.value, (int, float))
        and node.operand.value >= 1e4
    )


def _hand_mask(node: ast.AST) -> bool:
    """``where(ok, 0.0, NEG_INF)``: an additive mask built by hand (a 0 branch and a masking
    constant; ``where(m, x, NEG_INF)``, a fill, is not a mask)."""
    if not (
        isinstance(node, ast.Call) and call_name(node).endswith("where") and len(node.args) == 3
    ):
        return False
    a, b = node.args[1:]
    zero = [isinstance(x, ast.Constant) and x.value == 0 for x in (a, b)]
    return (zero[0] and _masking_constant(b)) or (zero[1] and _masking_constant(a))


def _none_at(node: ast.AST) -> int | None:
    """Where ``x[:, :, None]`` inserts its one new axis (None if it is not such a subscript)."""
    if not (isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Tuple)):
        return None
    nones = [
        i for i, e in enumerate(node.slice.elts) if isinstance(e, ast.Constant) and e.value is None
    ]
    return nones[0] if len(nones) == 1 and len(node.slice.elts) >= 3 else None


def _segment_outer_compare(node: ast.AST) -> bool:
    """``q_seg[:, :, None] == k_seg[:, None, :]``: which query may see which key, by hand."""
    if not (isinstance(node, ast.Compare) and len(node.ops) == 1):
        return False
    if not isinstance(node.ops[0], ast.Eq):
        return False
    left, right = _none_at(node.left), _none_at(node.comparators[0])
    return left is not None and right is not None and left != right


def test_attention_masks_and_neg_inf_live_in_ankh_attention():
    path = owner(ATTENTION)
    assert {"additive_mask", "NEG_INF"} <= top_level_names(path)
    assert any(_hand_mask(n) for n in ast.walk(tree(path))), "the builder's where(ok, 0, NEG_INF)"
    bad = []
    for p in others(ATTENTION):
        bad += [f"{rel(p)} defines {n}" for n in top_level_names(p) & {"NEG_INF", *MASK_NAMES}]
        for n in ast.walk(tree(p)):
            if _hand_mask(n):
                bad.append(f"{where(p, n)} builds an additive mask: {ast.unparse(n)[:70]}")
            elif _segment_outer_compare(n):
                bad.append(f"{where(p, n)} compares segments by hand: {ast.unparse(n)[:70]}")
    assert not bad, "build masks with ankh.attention.additive_mask:\n" + "\n".join(bad)


TRAINING = "ankh/training.py"


def model_keys() -> set[str]:
    """The strings of ``ankh/training.py::MODEL_KEYS``, read from its assignment."""
    for node in tree(owner(TRAINING)).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "MODEL_KEYS" for t in node.targets
        ):
            return {e.value for e in node.value.elts if isinstance(e, ast.Constant)}
    raise AssertionError(f"{TRAINING} defines no MODEL_KEYS")


def _lists_batch_keys(node: ast.AST) -> bool:
    """A tuple/list/set literal naming most (>= 6) of the model batch keys: the list again."""
    if not isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return False
    named = {e.value for e in node.elts if isinstance(e, ast.Constant)}
    return len(named & model_keys()) >= 6


def test_batch_keys_live_in_ankh_training():
    assert len(model_keys()) >= 8, model_keys()
    bad = [
        f"{where(p, n)} lists the batch keys again: {ast.unparse(n)[:70]}"
        for p in others(TRAINING)
        for n in ast.walk(tree(p))
        if _lists_batch_keys(n)
    ]
    assert not bad, "use ankh.training.MODEL_KEYS:\n" + "\n".join(bad)


HEURISTICS = [
    _pads_token_rows,
    _reads_table_from_handle,
    _residue_range,
    _matmul_probe,
    _hand_mask,
    _segment_outer_compare,
    _lists_batch_keys,
]


@pytest.mark.parametrize("check", HEURISTICS, ids=lambda f: f.__name__)
def test_heuristics_see_the_restatements_they_look_for(check):
    samples = {
        _pads_token_rows: "def f(toks, rows, length, pad_id):\n"
        "    return np.full((rows, length), pad_id, np.int32)",
        _residue_range: "lo, hi = (3, 27)",
        _reads_table_from_handle: "with fs.open(p, 'rb') as fh:\n    t = pq.read_table(fh)",
        _matmul_probe: "def peak(a):\n    return a @ a",
        _hand_mask: "bias = jnp.where(k_pos <= t, 0.0, -1e9)[:, None]",
        _segment_outer_compare: "ok = q_seg[:, :, None] == k_seg[:, None, :]",
        _lists_batch_keys: "KEYS = ('input_ids', 'segment_ids', 'positions', 'labels', "
        "'decoder_input_ids', 'decoder_segment_ids', 'decoder_positions')",
    }
    # Near misses each heuristic must let pass: a fill value, a one-hot, a few keys.
    fine = (
        "x = np.full(4, -1); y = (3, 4); z = jnp.where(m, x, NEG_INF)\n"
        "onehot = seg[:, :, None] == jnp.arange(3); k = ('input_ids', 'labels', 'loss_mask')\n"
        "t = pq.read_table(path)\nwith fs.open(p, 'rb') as fh:\n    t = pq.ParquetFile(fh).read()"
    )
    assert any(check(node) for node in ast.walk(ast.parse(samples[check])))
    assert not any(check(node) for node in ast.walk(ast.parse(fine)))
