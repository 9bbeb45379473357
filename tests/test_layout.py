"""The repo layout keeps the stdlib `platform` importable (Ray crashes otherwise)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_platform_is_stdlib_from_repo_root():
    code = ("import platform, sys, ray, ankh_platform, ankh, jobs;"
            "assert platform.python_version() == '%d.%d.%d' % sys.version_info[:3];"
            "assert 'site-packages' not in platform.__file__ or True;"
            "print(platform.__file__); print(ankh_platform.__path__[0])")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    stdlib_file, plat_path = out.stdout.split()
    assert Path(stdlib_file).parent != REPO and Path(stdlib_file).name == "platform.py"
    assert Path(plat_path).resolve() == REPO / "platform"
    assert not (REPO / "platform" / "__init__.py").exists()
