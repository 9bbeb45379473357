"""Every file that ``ankh/``, ``platform/`` and ``jobs/`` open goes through ``ankh.storage``: no
module but ``ankh/storage.py`` calls ``fsspec.open`` (or ``fsspec.open_files``), under any alias.

``ankh.storage`` is where a path's filesystem is chosen (gs:// to the emulator when one is
configured), where a writing mode makes its parent, and where a published file is written
atomically (``atomic_write``); a direct ``fsspec.open`` bypasses all three. Read with ``ast`` --
nothing is imported -- so a violation is reported with its file and line.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STORAGE = REPO / "ankh" / "storage.py"
FORBIDDEN = {"fsspec.open", "fsspec.open_files", "fsspec.core.open", "fsspec.core.open_files"}


def _dotted(node: ast.AST) -> str:
    """``a.b.c`` of a Name/Attribute chain, else ``""``."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return ""
    return ".".join([node.id, *reversed(parts)])


def _aliases(tree: ast.Module) -> dict[str, str]:
    """Local name -> the fsspec name it stands for (``import fsspec as f``,
    ``from fsspec import open as fopen``, ``from fsspec import core``)."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "fsspec" or a.name.startswith("fsspec."):
                    out[a.asname or a.name.split(".")[0]] = a.name if a.asname else "fsspec"
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "fsspec":
            for a in node.names:
                out[a.asname or a.name] = f"{node.module}.{a.name}"
    return out


def direct_opens(path: Path) -> list[str]:
    """``file:line name`` of every fsspec open call in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    aliases = _aliases(tree)
    label = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        head, _, rest = _dotted(node.func).partition(".")
        name = ".".join(p for p in (aliases.get(head, head), rest) if p)
        if name in FORBIDDEN:
            found.append(f"{label}:{node.lineno} {name}")
    return found


def library_files() -> list[Path]:
    return sorted(p for f in ("ankh", "platform", "jobs") for p in (REPO / f).rglob("*.py"))


def test_no_fsspec_open_outside_ankh_storage():
    bad = [hit for p in library_files() if p != STORAGE for hit in direct_opens(p)]
    assert not bad, "open files through ankh.storage (open_file / atomic_write):\n" + "\n".join(bad)


def test_the_rule_sees_every_spelling(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text(
        "import fsspec\nimport fsspec as f\nfrom fsspec import open as fopen\n"
        "from fsspec import core\n"
        "fsspec.open('a')\nf.open_files('b')\nfopen('c')\ncore.open('d')\n"
        "fs.open('e')  # a filesystem's own open, reached through ankh.storage: allowed\n"
    )
    hits = [h.split(":", 1)[1] for h in direct_opens(planted)]
    assert hits == ["5 fsspec.open", "6 fsspec.open_files", "7 fsspec.open", "8 fsspec.core.open"]
