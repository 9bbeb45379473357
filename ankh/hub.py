"""Hugging Face hub ids (``ElnaggarLab/ankh-base``, optionally ``@revision``) -> a local snapshot.

Used only by ``ankh.resolve``. ``huggingface_hub`` does the work as it does for
``transformers``: its cache (``HF_HOME`` / ``HF_HUB_CACHE``), ``HF_HUB_OFFLINE``, tokens from
``HF_TOKEN`` or the saved login. Only the files an Ankh model needs are fetched.
"""

from __future__ import annotations

import dataclasses
import logging
import re

log = logging.getLogger(__name__)

# "org/name" with the hub's allowed characters, optionally "@revision" (branch, tag or commit).
_HUB_RE = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[\w./-]+))?$")
FILES = (
    "config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "pytorch_model.bin",
)


@dataclasses.dataclass(frozen=True)
class Snapshot:
    repo_id: str
    revision: str  # the commit hash the snapshot is (what a run records)
    path: str  # local directory holding the files


def parse(ref: str, revision: str | None = None) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` if ``ref`` reads as a hub id, else None. ``ref@rev`` and a
    ``revision`` argument must agree when both are given."""
    m = _HUB_RE.match(ref)
    if not m or ref.startswith((".", "/")) or ".." in ref:
        return None
    rev = m.group("rev")
    if rev and revision and rev != revision:
        raise ValueError(f"{ref}: revision {rev!r} in the name and revision={revision!r} differ")
    return m.group("repo"), rev or revision


def snapshot(repo_id: str, revision: str | None = None) -> Snapshot:
    """Download (or find in the cache, offline) the Ankh files of one hub revision."""
    from huggingface_hub import errors, snapshot_download  # only when a hub id is used
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    # Newer clients tell a partly cached snapshot apart (a LocalEntryNotFoundError subclass).
    incomplete = getattr(errors, "IncompleteSnapshotError", ())

    where = f"{repo_id}@{revision}" if revision else repo_id
    try:
        path = snapshot_download(repo_id, revision=revision, allow_patterns=list(FILES))
    except RevisionNotFoundError:
        raise ValueError(f"{where}: the hub has no revision {revision!r} of {repo_id}") from None
    except (RepositoryNotFoundError, GatedRepoError) as e:
        raise ValueError(
            f"{where}: no such local path, nor a model on the hub (or it needs a "
            f"token: HF_TOKEN): {type(e).__name__}"
        ) from None
    except incomplete as e:
        raise FileNotFoundError(f"{where}: the cached snapshot misses files: {e}") from None
    except LocalEntryNotFoundError:
        raise FileNotFoundError(
            f"{where}: no such local path, not in the local Hugging Face cache, and the hub "
            f"cannot be reached "
            f"(offline: HF_HUB_OFFLINE is set, or no network); download it once online, "
            f"or point HF_HOME/HF_HUB_CACHE at a cache that holds it"
        ) from None
    except (EntryNotFoundError, HfHubHTTPError) as e:
        raise ValueError(f"{where}: hub download failed: {e}") from None
    commit = path.rstrip("/").rsplit("/", 1)[-1]  # snapshots/<commit hash>
    log.info("hub %s -> %s (commit %s)", where, path, commit)
    return Snapshot(repo_id, commit, path)
