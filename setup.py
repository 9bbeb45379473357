"""Package discovery (everything else is in pyproject.toml).

``platform/`` installs as ``ankh_platform`` (a package named ``platform`` would shadow the
standard library), and ``[tool.setuptools.packages.find]`` can only name a package after its
folder, so the packages are found here: every package under ``ankh/``, ``jobs/`` and
``platform/`` (the last with the ``ankh_platform.`` prefix), none listed by hand. The top-level
``ankh_platform/`` folder is the source checkout's import shim and is not installed.
"""

from setuptools import find_packages, setup

setup(
    packages=[
        *find_packages(include=["ankh", "ankh.*", "jobs", "jobs.*"]),
        "ankh_platform",
        *(f"ankh_platform.{name}" for name in find_packages("platform")),
    ],
    package_dir={"ankh_platform": "platform"},
)
