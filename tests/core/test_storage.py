"""``ankh.storage`` (atomic writes, opening local and gs:// files, the GCS emulator environment)
and the one data-dir lookup."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ankh import storage
from ankh_platform.core import samples


class Boom(RuntimeError):
    pass


def _half_then_fail(tmp: str) -> None:
    """A writer that gets part of the way, then dies (a full disk, a bug, a kill)."""
    Path(tmp).write_bytes(b"half of a file")
    raise Boom("writer failed part-way")


# ---- atomic_write --------------------------------------------------------------------------------
def test_atomic_write_local_publishes_whole_or_nothing(tmp_path):
    final = tmp_path / "sub" / "out.bin"
    assert storage.atomic_write(str(final), lambda t: Path(t).write_bytes(b"v1")) == str(final)
    assert final.read_bytes() == b"v1"
    with pytest.raises(Boom):
        storage.atomic_write(str(final), _half_then_fail)
    assert final.read_bytes() == b"v1"  # the old file is untouched, not half-replaced
    assert sorted(p.name for p in final.parent.iterdir()) == ["out.bin"]  # no temporary left
    with pytest.raises(Boom):
        storage.atomic_write(str(tmp_path / "new.bin"), _half_then_fail)
    assert not (tmp_path / "new.bin").exists()


def test_stale_temporaries_are_hidden_and_removable(tmp_path):
    """What a SIGKILL mid-write leaves: a hidden temp beside the final name, which readers skip
    and ``remove_stale_temps`` deletes (and nothing else)."""
    (tmp_path / "keep.parquet").write_bytes(b"x")
    stale = Path(storage.temp_path(str(tmp_path / "shard.parquet")))
    stale.write_bytes(b"partial")
    assert stale.parent == tmp_path and stale.name.startswith(".shard.parquet")
    assert [p.name for p in tmp_path.glob("*.parquet")] == [
        "keep.parquet"
    ]  # readers' globs skip it
    assert storage.remove_stale_temps(str(tmp_path)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.parquet"]


def test_atomic_write_gcs_publishes_whole_or_nothing(gcs_bucket):
    fs, root = storage.filesystem(gcs_bucket)
    url = f"{gcs_bucket}/a/out.parquet"
    with pytest.raises(Boom):
        storage.atomic_write(url, _half_then_fail)
    assert not fs.exists(f"{root}/a/out.parquet")
    assert fs.find(root) == []  # no temporary object either
    payload = os.urandom(6 * 2**20)  # > 5 MiB: gcsfs' resumable upload, not the simple one
    storage.atomic_write(url, lambda t: Path(t).write_bytes(payload))
    assert fs.cat_file(f"{root}/a/out.parquet") == payload
    with pytest.raises(Boom):
        storage.atomic_write(url, _half_then_fail)
    assert fs.cat_file(f"{root}/a/out.parquet") == payload
    assert fs.find(root) == [f"{root}/a/out.parquet"]


# ---- open_file -----------------------------------------------------------------------------------
def test_open_file_reads_appends_and_makes_the_parent(tmp_path):
    log = tmp_path / "new" / "dir" / "log.jsonl"
    for line in ("a\n", "b\n"):
        with storage.open_file(str(log), "a") as fh:  # the parent is created, then appended to
            fh.write(line)
    assert log.read_text() == "a\nb\n"
    with storage.open_file(str(log), "r") as fh:
        assert fh.read() == "a\nb\n"
    with pytest.raises(FileNotFoundError):
        storage.open_file(str(tmp_path / "missing.json"), "r")


def test_open_file_on_gcs(gcs_bucket):
    url = f"{gcs_bucket}/x/notes.txt"
    with storage.open_file(url, "w") as fh:
        fh.write("hello")
    with storage.open_file(url, "rb") as fh:
        assert fh.read() == b"hello"
    fs, root = storage.filesystem(gcs_bucket)
    assert fs.find(root) == [f"{root}/x/notes.txt"]


# ---- the emulator environment ------------------------------------------------------------------
@pytest.fixture
def clean_env(monkeypatch):
    for k in (storage.EMULATOR_VAR, storage.TENSORSTORE_VAR, storage.HNS_VAR):
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def test_emulator_env_applied_from_one_function(clean_env):
    assert storage.apply_emulator_env() is None  # production: nothing is changed
    assert storage.TENSORSTORE_VAR not in os.environ and storage.HNS_VAR not in os.environ
    assert storage.storage_env() == {}
    assert storage.pyarrow_gcs("gs://b/runs") == ("gs://b/runs", None)

    clean_env.setenv(storage.EMULATOR_VAR, "127.0.0.1:9")  # host:port, as gcloud tools write it
    assert storage.apply_emulator_env() == "http://127.0.0.1:9"
    assert os.environ[storage.TENSORSTORE_VAR] == "http://127.0.0.1:9"  # what tensorstore reads
    assert os.environ[storage.HNS_VAR] == "false"
    assert storage.storage_env() == {
        storage.EMULATOR_VAR: "127.0.0.1:9",
        storage.TENSORSTORE_VAR: "http://127.0.0.1:9",
        storage.HNS_VAR: "false",
    }
    path, fs = storage.pyarrow_gcs("gs://b/runs")
    assert path == "b/runs" and type(fs).__name__ == "GcsFileSystem"
    assert storage.pyarrow_gcs("/local/runs") == ("/local/runs", None)
    clean_env.setenv(storage.HNS_VAR, "true")  # an explicit setting is the user's: kept
    storage.apply_emulator_env()
    assert os.environ[storage.HNS_VAR] == "true"


def test_gcs_filesystem_goes_to_the_emulator(clean_env):
    clean_env.setenv(storage.EMULATOR_VAR, "http://127.0.0.1:9")
    fs, path = storage.filesystem("gs://bucket/x/")
    assert path == "bucket/x" and not storage.is_local(fs)
    assert fs._endpoint == "http://127.0.0.1:9"
    assert os.environ[storage.TENSORSTORE_VAR] == "http://127.0.0.1:9"
    local, p = storage.filesystem("rel/dir")
    assert storage.is_local(local) and p == os.path.abspath("rel/dir")
    assert (
        storage.norm_path("rel") == os.path.abspath("rel")
        and storage.norm_path("gs://b/x") == "gs://b/x"
    )


# ---- the data directory -------------------------------------------------------------------------
def test_data_dir_precedence(tmp_path, monkeypatch):
    """ANKH_DATA_DIR > <repo>/../shared/data (when it has the shared files) > bundled data/."""
    repo = tmp_path / "repo"
    (repo / "data" / "uniprot_sample" / "train").mkdir(parents=True)
    monkeypatch.setattr(samples, "_REPO", repo)
    monkeypatch.setattr(samples, "_BUNDLED", repo / "data")
    monkeypatch.delenv(samples.DATA_ENV, raising=False)
    assert samples.data_dir() == repo / "data"
    assert samples.protein_parquet() == repo / "data" / "uniprot_sample" / "train"

    shared = tmp_path / "shared" / "data"
    shared.mkdir(parents=True)  # present but without the shared files: not used
    assert samples.data_dir() == repo / "data"
    (shared / "uniprot_go_sample.parquet").write_bytes(b"")
    assert samples.data_dir() == shared
    assert samples.protein_parquet() == shared / "uniprot_go_sample.parquet"
    assert samples.protein_shard() == repo / "data" / "uniprot_sample" / "train"  # no uniprot_go/

    mine = tmp_path / "mine"
    mine.mkdir()
    monkeypatch.setenv(samples.DATA_ENV, str(mine))
    assert samples.data_dir() == mine
    assert samples.protein_parquet() == repo / "data" / "uniprot_sample" / "train"  # not in mine


def test_repo_path_finds_bundled_defaults_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rel = "data/uniprot_sample/train"
    assert samples.repo_path(rel) == str(samples.bundled_train())  # the bundled sample, packaged
    assert samples.bundled_train().is_dir()
    (tmp_path / "data" / "uniprot_sample" / "train").mkdir(parents=True)
    assert samples.repo_path(rel) == rel  # the working directory's own copy wins
    assert samples.repo_path("gs://b/x") == "gs://b/x" and samples.repo_path("nope/x") == "nope/x"
