"""Structural pins of the code layout (docs/architecture.md): every check reads the source with
``ast`` -- nothing is imported -- so a violation is reported with its file and line.

- no import cycle among first-party modules (``ankh``, ``ankh_platform`` = ``platform/``,
  ``jobs``), counting imports inside functions and under ``if TYPE_CHECKING:``;
- ``ankh/`` never imports Ray or ``ankh_platform`` and has no function-level first-party import;
- ``platform/`` is capability subpackages plus a few loose modules; no module over 400 lines;
- ``ankh/``'s module map (the reading order in ``ankh/__init__.py`` and docs/architecture.md)
  lists every module once, each importing only modules above it.

The "one decision, one place" rules are ``test_decisions.py``.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator

from tests.core._source import PACKAGES, REPO, modules, rel, source_files, tree

MAX_LINES = 400


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


def test_platform_never_imports_the_jobs():
    """Layers point down: ``jobs`` -> ``ankh_platform`` -> ``ankh``; the shared CLI helper lives in
    ``ankh_platform.core.cli`` so that benchmark parsers use it without importing ``jobs``."""
    bad = [
        f"{rel(modules()[m])}:{node.lineno} imports {name}"
        for m in modules()
        if m.startswith("ankh_platform")
        for node, name, _ in imports(m)
        if name.split(".")[0] == "jobs"
    ]
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


# ---- ankh/'s module map --------------------------------------------------------------------

MAP_LINE = re.compile(r"^  ([a-z_]+) {2,}\S")  # "  config        the architecture ..."
DOC_ROW = re.compile(r"^\| `ankh/([a-z_]+)\.py` \|")


def init_map() -> list[str]:
    """The modules named by ``ankh/__init__.py``'s docstring map, in its order."""
    doc = ast.get_docstring(tree(REPO / "ankh" / "__init__.py")) or ""
    return [m.group(1) for line in doc.splitlines() if (m := MAP_LINE.match(line))]


def doc_map() -> list[str]:
    """The modules of docs/architecture.md's module-map table, in its order."""
    text = (REPO / "docs" / "architecture.md").read_text()
    section = text.split("## Reading `ankh/`", 1)[1].split("\n## ", 1)[0]
    return [m.group(1) for line in section.splitlines() if (m := DOC_ROW.match(line))]


def test_module_map_lists_every_ankh_module_once_in_both_places():
    on_disk = sorted(p.stem for p in (REPO / "ankh").glob("*.py") if p.stem != "__init__")
    listed = init_map()
    assert sorted(listed) == on_disk, (
        f"ankh/__init__.py's module map: missing {sorted(set(on_disk) - set(listed))}, "
        f"stale {sorted(set(listed) - set(on_disk))}, repeated "
        f"{sorted({m for m in listed if listed.count(m) > 1})}"
    )
    assert doc_map() == listed, "docs/architecture.md's module map differs from ankh/__init__.py's"


def test_module_map_is_a_reading_order():
    """Each module imports only modules listed above it: read top to bottom, no name is used
    before the module that defines it."""
    order = {m: i for i, m in enumerate(init_map())}
    bad = []
    for m, i in order.items():
        for node, name, _ in imports(f"ankh.{m}"):
            dep = (first_party(name) or "").removeprefix("ankh.")
            if dep in order and order[dep] > i:
                bad.append(f"ankh/{m}.py:{node.lineno} imports ankh.{dep}, listed below it")
    assert not bad, "\n".join(bad)
