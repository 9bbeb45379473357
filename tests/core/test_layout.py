"""Structural pins of the code layout (docs/architecture.md): every check reads the source with
``ast`` -- nothing is imported -- so a violation is reported with its file and line.

- no import cycle among first-party modules (``ankh``, ``ankh_platform`` = ``platform/``,
  ``jobs``), counting imports inside functions and under ``if TYPE_CHECKING:``;
- ``ankh/`` never imports Ray or ``ankh_platform`` and has no function-level first-party import;
- ``platform/`` is capability subpackages plus a few loose modules; no module over 400 lines;
- each decision lives in exactly one module: the length ladder + batching policy
  (``ankh/batching.py``), the model-reference resolver (``ankh/resolve.py``), atomic writes +
  the storage environment (``ankh/storage.py``), the vocabulary facts (``ankh/tokenizer.py``),
  the FLOP formula and the matmul-peak probe (``ankh/flops.py``).
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = {"ankh": "ankh", "ankh_platform": "platform", "jobs": "jobs"}  # import name -> folder
MAX_LINES = 400


# ---- the module table --------------------------------------------------------------------------


@functools.cache
def modules() -> dict[str, Path]:
    """Dotted first-party module name -> file (``ankh_platform`` is the shim's package)."""
    out = {"ankh_platform": REPO / "ankh_platform" / "__init__.py"}
    for name, folder in PACKAGES.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = [name, *path.relative_to(REPO / folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


@functools.cache
def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def source_files(*folders: str) -> list[Path]:
    return sorted(p for f in folders for p in (REPO / f).rglob("*.py"))


def library_files() -> list[Path]:
    """Non-test first-party code: where a decision may be defined or restated."""
    return source_files("ankh", "platform", "jobs")


# ---- imports --------------------------------------------------------------------------------


def _package_of(module: str) -> str:
    return module if modules()[module].name == "__init__.py" else module.rpartition(".")[0]


def imported_modules(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """Absolute names an import statement loads: ``from pkg import mod`` names ``pkg.mod`` when
    that is a module, else ``pkg``; relative imports are resolved against ``module``."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        pkg = _package_of(module).split(".")
        pkg = pkg[: len(pkg) - (node.level - 1)]
        base = ".".join(pkg + ([base] if base else []))
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in modules() else base for a in node.names]


def first_party(name: str) -> str | None:
    """The first-party module a dotted import name executes (its longest known prefix)."""
    parts = name.split(".")
    if parts[0] not in PACKAGES:
        return None
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in modules():
            return ".".join(parts[:i])
    return None


def imports(module: str) -> Iterator[tuple[ast.stmt, str, bool]]:
    """(statement, imported name, inside a function?) for every import in ``module``."""

    def walk(node: ast.AST, in_func: bool) -> Iterator[tuple[ast.stmt, str, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for name in imported_modules(module, child):
                    yield child, name, in_func
            inner = in_func or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
            )
            yield from walk(child, inner)

    yield from walk(tree(modules()[module]), False)


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in modules()}
    for m in modules():
        for _, name, _ in imports(m):
            target = first_party(name)
            if target and target != m:
                graph[m].add(target)
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles: groups of two or more modules that all reach each other (the graph
    has ~100 nodes, so a reachability set per node is simpler than Tarjan and fast enough)."""
    reach = {m: reachable(graph, m) for m in graph}
    comps = {tuple(sorted({m} | {o for o in reach[m] if m in reach[o]})) for m in graph}
    return sorted(list(c) for c in comps if len(c) > 1)


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert strongly_connected(graph) == [["a", "b", "c"]]
    assert imported_modules("ankh_platform.serve.app", ast.parse("from . import http").body[0]) == [
        "ankh_platform.serve.http"
    ]
    assert imported_modules("ankh.api", ast.parse("from .config import X").body[0]) == [
        "ankh.config"
    ]


def test_no_import_cycle_among_first_party_modules():
    graph = import_graph()
    assert len(graph) > 50, sorted(graph)  # the table really covers ankh, platform and jobs
    cycles = strongly_connected(graph)
    detail = [
        " -> ".join(c) + f"  ({', '.join(sorted(graph[c[0]] & set(c)))} from {c[0]})"
        for c in cycles
    ]
    assert not cycles, "import cycles:\n" + "\n".join(detail)


def test_ankh_never_imports_ray_or_the_platform_nor_late_imports_itself():
    bad = []
    for m in (m for m in modules() if m == "ankh" or m.startswith("ankh.")):
        for node, name, in_func in imports(m):
            where = f"{rel(modules()[m])}:{node.lineno} imports {name}"
            if name.split(".")[0] in ("ray", "ankh_platform", "jobs"):
                bad.append(where)
            elif in_func and first_party(name):
                bad.append(where + " inside a function")
    assert not bad, "\n".join(bad)


# ---- folders and sizes ----------------------------------------------------------------------


def test_platform_is_capability_subpackages():
    plat = REPO / "platform"
    subpackages = sorted(p.name for p in plat.iterdir() if (p / "__init__.py").is_file())
    loose = sorted(p.name for p in plat.glob("*.py"))
    assert not (plat / "__init__.py").exists(), "platform/ must not be a package (stdlib clash)"
    assert len(subpackages) >= 5, subpackages
    assert len(loose) <= 6, loose
    assert "core" in subpackages, subpackages


def test_no_module_over_400_lines():
    long = {
        rel(p): n
        for p in source_files("ankh", "platform", "jobs", "tests", "ankh_platform")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, long


# ---- AST helpers for "defined in exactly one place" ------------------------------------------


def defs(path: Path) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(tree(path)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def top_level_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in tree(path).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def docstrings(path: Path) -> set[int]:
    """ids of the docstring nodes (prose may explain a decision without restating it)."""
    out = set()
    for node in ast.walk(tree(path)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def strings(path: Path) -> Iterator[ast.Constant]:
    skip = docstrings(path)
    for node in ast.walk(tree(path)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            yield node


def calls(path: Path) -> Iterator[ast.Call]:
    for node in ast.walk(tree(path)):
        if isinstance(node, ast.Call):
            yield node


def call_name(node: ast.Call) -> str:
    """``os.replace`` / ``.mv`` / ``is_checkpoint``: the dotted callee as written."""
    f, parts = node.func, []
    while isinstance(f, ast.Attribute):
        parts.append(f.attr)
        f = f.value
    parts.append(f.id if isinstance(f, ast.Name) else "")
    return ".".join(reversed(parts))


def mentions(node: ast.AST, *words: str) -> bool:
    text = ast.unparse(node)
    return any(w in text for w in words)


def owner(path: str) -> Path:
    p = REPO / path
    assert p.is_file(), f"{path} does not exist yet"
    return p


def others(path: str) -> list[Path]:
    return [p for p in library_files() if p != REPO / path]


def where(path: Path, node: ast.AST) -> str:
    return f"{rel(path)}:{node.lineno}"


# ---- each decision in exactly one place --------------------------------------------------

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


@pytest.mark.parametrize("check", [_pads_token_rows, _residue_range, _matmul_probe])
def test_heuristics_see_the_restatements_they_look_for(check):
    samples = {
        _pads_token_rows: "def f(toks, rows, length, pad_id):\n"
        "    return np.full((rows, length), pad_id, np.int32)",
        _residue_range: "lo, hi = (3, 27)",
        _matmul_probe: "def peak(a):\n    return a @ a",
    }
    module = ast.parse(samples[check])
    assert any(check(node) for node in ast.walk(module))
    assert not any(check(node) for node in ast.walk(ast.parse("x = np.full(4, -1); y = (3, 4)")))
