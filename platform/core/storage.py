"""One way to open local paths and ``gs://`` URLs (fsspec; gcsfs for GCS).

With ``STORAGE_EMULATOR_HOST`` set (tests, local development) GCS requests go to that emulator
anonymously; otherwise gcsfs uses the usual Google credentials (metadata server, ADC).
"""

from __future__ import annotations

import os
from typing import Any

import fsspec


def is_gcs(path: str) -> bool:
    return str(path).startswith(("gs://", "gcs://"))


def gcs_filesystem(**kwargs: Any) -> fsspec.AbstractFileSystem:
    """A gcsfs filesystem; the emulator endpoint is captured so pickled copies (Ray tasks) keep it."""
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if emulator:
        # The emulator has no hierarchical-namespace API; gcsfs must not probe for it.
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
        kwargs.setdefault("token", "anon")
        kwargs.setdefault("endpoint_url", emulator)
    import gcsfs  # imported late: the env var above must be set first

    kwargs.setdefault("use_listings_cache", False)
    return gcsfs.GCSFileSystem(**kwargs)


def filesystem(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """``(filesystem, path as that filesystem names it)`` for a local path or ``gs://`` URL."""
    path = str(path)
    if is_gcs(path):
        return gcs_filesystem(), path.split("://", 1)[1].rstrip("/")
    if "://" in path and not path.startswith("file://"):
        fs, p = fsspec.core.url_to_fs(path)
        return fs, p
    return fsspec.filesystem("file"), os.path.abspath(path.removeprefix("file://"))


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protos = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protos


def open_sequential(fs: fsspec.AbstractFileSystem, path: str, mode: str = "rb"):
    """Open for one front-to-back pass; remote files get large read-ahead blocks (gcsfs'
    default cache otherwise re-requests small ranges, which is slow on big files)."""
    if is_local(fs) or "r" not in mode:
        return fs.open(path, mode)
    return fs.open(path, mode, block_size=2 ** 23, cache_type="readahead")


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])
