"""The folder-to-import-name mapping works from a source checkout and from an uploaded
``ray job submit --working-dir`` (issue 2's skeleton requirement)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import uuid
from pathlib import Path

import pytest

from tests.raycluster import LocalRayCluster

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("ankh", "platform", "jobs", "ankh_platform", "pyproject.toml")
STDLIB_PLATFORM = os.path.realpath(os.path.join(sysconfig.get_paths()["stdlib"], "platform.py"))


def test_repo_root_imports_stdlib_platform_and_ankh_platform():
    """From the repo root, `platform` is still the stdlib and `ray`/`ankh_platform` import."""
    code = (
        "import json, platform, ray, ankh_platform, ankh_platform.core.runtime as rt;"
        "print(json.dumps({'platform': platform.__file__, 'system': platform.system(),"
        " 'ankh_platform': list(ankh_platform.__path__), 'origins': rt.package_origins()}))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    got = json.loads(out.strip().splitlines()[-1])
    assert os.path.realpath(got["platform"]) == STDLIB_PLATFORM
    assert got["system"] == "Linux"  # the stdlib module works, not a shadowing package
    assert [os.path.realpath(p) for p in got["ankh_platform"]] == [str(REPO / "platform")]
    assert got["origins"]["ankh"] == str(REPO / "ankh")
    assert got["origins"]["jobs"] == str(REPO / "jobs")
    assert got["origins"]["platform"] == STDLIB_PLATFORM
    assert not (REPO / "platform" / "__init__.py").exists()  # would shadow the stdlib


def _copy_sources(dest: Path) -> str:
    """Copy the project's source into ``dest`` and mark the copy with a unique id."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            shutil.copy2(src, dest / name)
    marker = uuid.uuid4().hex
    (dest / "UPLOAD_MARKER").write_text(marker)
    return marker


def _assert_from_upload(origins: dict[str, str], marker: str) -> None:
    """Every project package comes from one uploaded working dir that holds our marker."""
    roots = {Path(origins[n]).parent for n in ("ankh", "ankh_platform", "jobs")}
    assert len(roots) == 1, origins
    root = roots.pop()
    assert "runtime_resources/working_dir_files" in str(root), origins
    assert (root / "UPLOAD_MARKER").read_text() == marker  # the copy we uploaded
    for name in ("ankh", "jobs"):
        assert origins[name] == str(root / name)
    assert origins["ankh_platform"] == str(root / "platform")
    for path in origins.values():
        assert not path.startswith(str(REPO) + os.sep), origins
    assert origins["platform"] == STDLIB_PLATFORM


@pytest.mark.timeout(420)
def test_submitted_job_runs_uploaded_code(tmp_path):
    work = tmp_path / "upload"
    work.mkdir()
    marker = _copy_sources(work)
    with LocalRayCluster(num_cpus=1) as cluster:
        cluster.start_head()
        res = cluster.submit(work, ["python", "-m", "jobs.whereami"], timeout=300)
        assert res.succeeded, res.output[-3000:]
        line = next(x for x in res.output.splitlines() if x.startswith('{"driver"'))
        report = json.loads(line)
        _assert_from_upload(report["driver"], marker)
        _assert_from_upload(report["worker"], marker)
    assert cluster.alive_pids() == []
