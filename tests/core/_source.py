"""Reading first-party source with ``ast`` for the layout tests (``test_layout.py``,
``test_decisions.py``): the module table, parsed trees, and the node helpers their rules use.
Nothing here imports the code it reads."""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = {"ankh": "ankh", "ankh_platform": "platform", "jobs": "jobs"}  # import name -> folder


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


def where(path: Path, node: ast.AST) -> str:
    return f"{rel(path)}:{node.lineno}"
