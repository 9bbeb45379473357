"""One way to reach storage: local paths and ``gs://`` URLs (fsspec; gcsfs for GCS), without Ray.

Everything that opens, lists or publishes a file -- ``ankh.load`` of a gs:// checkpoint or HF
directory as much as the Ray jobs -- goes through here, so three decisions live in one place:

- **Which filesystem** a path names (``filesystem``, ``is_local``, ``norm_path``, ``join``).
- **The GCS emulator environment.** With ``STORAGE_EMULATOR_HOST`` set (tests, local
  development) every GCS client must go to that emulator: gcsfs is pointed there anonymously,
  tensorstore (Orbax's I/O, which reads only ``TENSORSTORE_GCS_HTTP_URL``) gets that variable,
  gcsfs is told not to probe for the hierarchical-namespace API the emulator lacks, and Ray
  workers inherit all of it (``storage_env``). Unset (production): nothing changes, the usual
  Google credentials (metadata server, ADC) and endpoints apply. No other module reads
  ``STORAGE_EMULATOR_HOST``.
- **Atomic publication** of a finished file (``atomic_write``): readers see it whole or not at
  all, and a writer that fails part-way leaves nothing under the final name.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

import fsspec

EMULATOR_VAR = "STORAGE_EMULATOR_HOST"
TENSORSTORE_VAR = "TENSORSTORE_GCS_HTTP_URL"
HNS_VAR = "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"
_GCS_PREFIXES = ("gs://", "gcs://")
_TMP = ".tmp-"  # marks a file that atomic_write has not published yet


# ---- which filesystem ------------------------------------------------------------------------
def is_gcs(path: str) -> bool:
    return str(path).startswith(_GCS_PREFIXES)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """True for the local disk (fsspec names it ``file`` or ``("file", "local")``)."""
    protos = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protos


def filesystem(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """``(filesystem, path as that filesystem names it)`` for a local path or any fsspec URL.

    Local paths come back absolute; URL paths without their scheme and trailing ``/``
    (``gs://b/x/`` -> ``b/x``), as the filesystem's own listings name them.
    """
    path = str(path)
    if is_gcs(path):
        return gcs_filesystem(), path.split("://", 1)[1].rstrip("/")
    if "://" in path and not path.startswith("file://"):
        fs, p = fsspec.core.url_to_fs(path)
        return fs, p.rstrip("/")
    return fsspec.filesystem("file"), os.path.abspath(path.removeprefix("file://"))


def norm_path(path: str) -> str:
    """Local paths absolute (Orbax and Ray workers elsewhere need it); URLs unchanged."""
    path = str(path)
    return path if "://" in path else os.path.abspath(path)


def join(base: str, *parts: str) -> str:
    return "/".join([str(base).rstrip("/"), *[p.strip("/") for p in parts]])


def open_sequential(fs: fsspec.AbstractFileSystem, path: str, mode: str = "rb"):
    """Open for one front-to-back pass; remote files get large read-ahead blocks (gcsfs'
    default cache otherwise re-requests small ranges, which is slow on big files)."""
    if is_local(fs) or "r" not in mode:
        return fs.open(path, mode)
    return fs.open(path, mode, block_size=2**23, cache_type="readahead")


def open_file(path: str, mode: str = "rb", **kwargs: Any):
    """Open a local path or URL (``fs.open`` of ``filesystem(path)``, so gs:// goes to the
    emulator when one is configured); a writing mode first creates the parent directory, as
    ``fsspec.open`` does. A file others read whole (a summary, a figure) is published with
    ``atomic_write`` instead; this is for reads and for appending to a log."""
    fs, p = filesystem(path)
    if "r" not in mode:
        fs.makedirs(fs._parent(p), exist_ok=True)
    return fs.open(p, mode, **kwargs)


def read_parquet(
    path: str, columns: list[str] | None = None, fs: fsspec.AbstractFileSystem | None = None
):
    """One Parquet file, whole, as a ``pyarrow.Table`` (a local path or URL; with ``fs``,
    ``path`` as that filesystem names it).

    Read through ``ParquetFile``, not ``pq.read_table(file object)``: the latter's dataset
    scanner leaves Arrow threads that can abort the interpreter at exit ("terminate called
    without an active exception", a few runs in a hundred on a loaded machine after the work
    is done; apache/arrow#34314, #50482)."""
    import pyarrow.parquet as pq

    if fs is None:
        fs, path = filesystem(path)
    with fs.open(path, "rb") as fh:
        return pq.ParquetFile(fh).read(columns=columns)


def append_text(path: str, text: str) -> None:
    """Append ``text`` to the file at ``path`` (created if absent). Object stores cannot append
    (gcsfs' mode "a" silently overwrites), so there the file is read and published whole again
    (``atomic_write``): for small logs only."""
    fs, p = filesystem(path)
    fs.makedirs(fs._parent(p), exist_ok=True)
    if is_local(fs):
        with fs.open(p, "a") as fh:
            fh.write(text)
        return
    whole = (fs.cat(p).decode() if fs.exists(p) else "") + text

    def write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            fh.write(whole)

    atomic_write(p, write, fs=fs)


# ---- the GCS emulator environment --------------------------------------------------------------
def emulator_url() -> str | None:
    """``$STORAGE_EMULATOR_HOST`` as a URL with a scheme, or None (real GCS)."""
    host = os.environ.get(EMULATOR_VAR)
    if not host:
        return None
    return host if "://" in host else f"http://{host}"


def apply_emulator_env() -> str | None:
    """Point every GCS client of this process at the emulator, if one is configured.

    Sets ``TENSORSTORE_GCS_HTTP_URL`` (tensorstore reads it at each kvstore open; without it a
    checkpoint's arrays would go to real GCS -- or hang offline -- while its JSON went to the
    emulator) and ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` unless already set. Returns the
    emulator URL, or None when none is configured (then nothing is changed).
    """
    url = emulator_url()
    if url:
        os.environ[TENSORSTORE_VAR] = url
        os.environ.setdefault(HNS_VAR, "false")
    return url


def storage_env() -> dict[str, str]:
    """The storage variables a Ray worker must inherit from this driver (for ``runtime_env``)."""
    apply_emulator_env()
    return {k: os.environ[k] for k in (EMULATOR_VAR, TENSORSTORE_VAR, HNS_VAR) if k in os.environ}


def gcs_filesystem(**kwargs: Any) -> fsspec.AbstractFileSystem:
    """A gcsfs filesystem without listing cache (Orbax/tensorstore writes behind its back).

    Under an emulator the endpoint is passed explicitly, so pickled copies (Ray tasks) keep it.
    """
    emulator = apply_emulator_env()
    if emulator:
        kwargs.setdefault("token", "anon")
        kwargs.setdefault("endpoint_url", emulator)
    import gcsfs  # here, not at the top: gcsfs reads GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT at import

    kwargs.setdefault("use_listings_cache", False)
    return gcsfs.GCSFileSystem(**kwargs)


def pyarrow_gcs(path: str) -> tuple[str, Any]:
    """``(path, pyarrow filesystem or None)`` for libraries that open ``gs://`` with pyarrow
    (Ray Train's ``storage_path``), which ignores ``STORAGE_EMULATOR_HOST``: under an emulator an
    explicit pyarrow GCS filesystem pointed there; otherwise ``(path, None)`` (pyarrow's own
    credentials)."""
    url = emulator_url()
    if not url or not is_gcs(path):
        return path, None
    import pyarrow.fs as pafs

    u = urlparse(url)
    return str(path).split("://", 1)[1], pafs.GcsFileSystem(
        anonymous=True, scheme=u.scheme, endpoint_override=u.netloc
    )


# ---- atomic publication ------------------------------------------------------------------------
def atomic_write(
    path: str, write: Callable[[str], Any], fs: fsspec.AbstractFileSystem | None = None
) -> str:
    """Publish the file that ``write(local_tmp_path)`` creates at ``path``, whole or not at all.

    ``write`` gets a path on the local disk (so any writer works: pyarrow, h5py, open()).
    Local destination: the temporary file sits beside the final one (a hidden
    ``.<name>.tmp-<id>``, which Parquet readers skip) and ``os.replace`` renames it -- atomic on
    POSIX. Object stores (gs://): the finished file is uploaded as one object; GCS makes an
    object visible only when its upload completes (a failed resumable upload is cancelled), so
    the upload is the commit. No temporary *object* and no server-side copy or move (two more
    requests, and gcsfs' move needs an API emulators lack). ``write`` raising, or the upload
    failing, leaves nothing under ``path``. With ``fs``, ``path`` is as that filesystem names it
    (what ``filesystem`` returned). Returns ``path``.
    """
    fs, p = (fs, path) if fs is not None else filesystem(path)
    local = is_local(fs)
    if local:
        os.makedirs(os.path.dirname(p), exist_ok=True)
        tmp = temp_path(p)
    else:
        fd, tmp = tempfile.mkstemp(prefix="ankh-upload-", suffix=_TMP + os.path.basename(p))
        os.close(fd)
    try:
        write(tmp)
        if local:
            os.replace(tmp, p)
        else:
            fs.put_file(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def temp_path(local_path: str) -> str:
    """A fresh temporary name beside a local file (hidden, so Parquet and Ray Data skip it)."""
    d, name = os.path.split(local_path)
    return os.path.join(d, f".{name}{_TMP}{uuid.uuid4().hex[:12]}")


def remove_stale_temps(directory: str, fs: fsspec.AbstractFileSystem | None = None) -> int:
    """Delete what killed ``atomic_write`` calls left in a local ``directory``; returns how many."""
    fs, d = (fs, directory) if fs is not None else filesystem(directory)
    if not is_local(fs) or not fs.isdir(d):
        return 0  # remote writers stage in the local temp dir: nothing is left in the bucket
    stale = fs.glob(f"{d}/.*{_TMP}*")
    for f in stale:
        fs.rm(f)
    return len(stale)
