"""A regular install works: the wheel built from this tree, installed into a fresh virtual
environment, imports every module and runs ``python -m jobs.quickstart`` from outside the
checkout, on the bundled sample it ships as package data (issue 26).

The venv sees the heavy dependencies (JAX, Ray, ...) through a path file naming this
interpreter's site-packages, not ``--system-site-packages``: that would also run their ``.pth``
files, among them an editable install's finder that adds its own tree to the ``ankh_platform``
namespace (``.ci/run`` installs the checkout editable) -- and would hide a module missing from
the wheel. Every first-party module must then come from the venv: asserted, not assumed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# What a build reads: the packaging files, the README (the project's long description) and the
# three package folders. The copy keeps the build's own files (build/, *.egg-info) out of REPO.
SOURCES = ("pyproject.toml", "setup.py", "README.md", "ankh", "platform", "jobs")
PACKAGES = ("ankh", "ankh_platform", "jobs")

# Run by the venv's interpreter: every module of the three packages, where each came from, and
# where the bundled sample and the default pretraining run's data are found.
CHECK = """
import importlib, json, pkgutil, sys
import ankh, ankh_platform, jobs

names = []
for pkg in (ankh, ankh_platform, jobs):
    names.append(pkg.__name__)
    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        importlib.import_module(info.name)
        names.append(info.name)

from ankh_platform.core import samples
from ankh_platform.core.config import PRESETS_DIR
from ankh_platform.train.config import PretrainConfig, resolve_paths

cfg = resolve_paths(PretrainConfig())
print(json.dumps({
    "modules": names,
    "files": {n: getattr(sys.modules[n], "__file__", None) for n in names},
    "paths": {n: list(sys.modules[n].__path__) for n in ("ankh", "ankh_platform", "jobs")},
    "sample": str(samples.protein_parquet()),
    "fasta": str(samples.bundled_fasta()),
    "train": list(cfg.data.paths) + list(cfg.source.eval_paths),
    "presets": str(PRESETS_DIR),
}))
"""


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> str:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


def _build_wheel(tmp: Path, env: dict[str, str]) -> Path:
    src = tmp / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=ignore)
        else:
            shutil.copy2(REPO / name, src / name)
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    _run([*cmd, "--no-index", "-w", str(tmp / "dist"), str(src)], tmp, env, 600)
    (wheel,) = (tmp / "dist").glob("ankh_platform-*.whl")
    return wheel


def _venv(tmp: Path, wheel: Path, env: dict[str, str]) -> Path:
    """A fresh venv with the wheel installed; the dependencies visible through a path file."""
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp, env, 300)
    python = venv / "bin" / "python"
    purelib = _run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        tmp,
        env,
        60,
    ).strip()
    # this interpreter's site directories (system, user, an outer venv's), not the rest of
    # sys.path: neither the checkout nor an editable install's path entries
    deps = [p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages")]
    Path(purelib, "_shared_deps.pth").write_text("\n".join(deps) + "\n")
    # pip comes from the shared site-packages, and installs into the venv it runs in
    _run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], tmp, env, 300
    )
    return venv


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_wheel_installs_imports_every_module_and_runs_the_quickstart(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ANKH_DATA_DIR")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    wheel = _build_wheel(tmp_path, env)
    venv = _venv(tmp_path, wheel, env)
    python = str(venv / "bin" / "python")
    away = tmp_path / "elsewhere"  # the working directory: no checkout on sys.path
    away.mkdir()

    got = json.loads(_run([python, "-c", CHECK], away, env, 600).strip().splitlines()[-1])
    inside = str(venv.resolve()) + os.sep

    def in_venv(path: str | None) -> bool:
        return path is not None and os.path.realpath(path).startswith(inside)

    assert all(in_venv(p) for paths in got["paths"].values() for p in paths), got["paths"]
    for name in ("ankh", "jobs"):
        assert in_venv(got["files"][name]), got["files"][name]
    outside = {n: f for n, f in got["files"].items() if f is not None and not in_venv(f)}
    assert not outside, outside
    # every module of the source tree is in the wheel (a hand-written list once left one out)
    tree = {
        ".".join([pkg, *p.relative_to(REPO / folder).with_suffix("").parts]).removesuffix(
            ".__init__"
        )
        for pkg, folder in zip(PACKAGES, ("ankh", "platform", "jobs"))
        for p in (REPO / folder).rglob("*.py")
    }
    assert tree <= set(got["modules"]), sorted(tree - set(got["modules"]))
    assert "ankh_platform.ablate.sweep" in got["modules"]

    # the bundled sample and the shipped presets are package data of the installed wheel
    assert in_venv(got["sample"]) and Path(got["sample"]).is_dir(), got["sample"]
    assert got["sample"].endswith(
        os.path.join("ankh_platform", "core", "data", "uniprot_sample", "train")
    )
    assert in_venv(got["fasta"]) and Path(got["fasta"]).is_file(), got["fasta"]
    assert all(in_venv(p) and Path(p).is_dir() for p in got["train"]), got["train"]
    assert (Path(got["presets"]) / "pretrain-tiny.yaml").is_file() and in_venv(got["presets"])

    # the quickstart reads samples.protein_parquet(): in this environment, got["sample"]
    out = _run([python, "-m", "jobs.quickstart", "--n", "4"], away, env, 600)
    assert "pooled embeddings: (4, " in out and "embedded 4 sequences" in out, out
