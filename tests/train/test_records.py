"""What a run publishes about itself (``ankh_platform.train.records``), local and on gs:// (the
GCS emulator): ``summary.json`` and ``curves.png`` appear whole or not at all -- a write that
fails part-way leaves the previous file and no temporary beside it -- and ``metrics.jsonl``
keeps every record, across writers (a resumed run), where object stores cannot append; a
resume drops the example records of the steps it trains again, of any former worker count."""

from __future__ import annotations

import json

import pytest

from ankh import storage
from ankh_platform.train.records import (
    MetricsWriter,
    discard_examples_after,
    log_examples,
    write_curves,
    write_summary,
)

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(params=["local", "gcs"])
def run_dir(request, tmp_path):
    """A run directory on local disk or in a fresh emulator bucket."""
    if request.param == "local":
        return str(tmp_path / "run")
    return request.getfixturevalue("gcs_bucket") + "/runs/r"


def _files(run_dir: str) -> list[str]:
    fs, root = storage.filesystem(run_dir)
    return sorted(p.rsplit("/", 1)[-1] for p in fs.find(root)) if fs.exists(root) else []


def _read(path: str) -> bytes:
    with storage.open_file(path, "rb") as fh:
        return fh.read()


def test_summary_is_published_whole_or_not_at_all(run_dir):
    unserialisable = object()  # json.dump has written '{"step": 2, "bad": ' when it hits this
    with pytest.raises(TypeError):
        write_summary(run_dir, {"step": 2, "bad": unserialisable})
    assert _files(run_dir) == []  # nothing under the final name, no temporary
    assert write_summary(run_dir, {"step": 1}) == f"{run_dir}/summary.json"
    assert json.loads(_read(f"{run_dir}/summary.json")) == {"step": 1}
    with pytest.raises(TypeError):
        write_summary(run_dir, {"step": 2, "bad": unserialisable})
    assert json.loads(_read(f"{run_dir}/summary.json")) == {"step": 1}  # the old one, whole
    assert _files(run_dir) == ["summary.json"]
    write_summary(run_dir, {"step": 3})
    assert json.loads(_read(f"{run_dir}/summary.json")) == {"step": 3}


def test_metrics_survive_a_new_writer_and_curves_are_published_whole(run_dir):
    first = MetricsWriter(run_dir, enabled=True)
    first.write({"step": 1, "loss": 3.0})
    first.write({"step": 2, "loss": 2.5, "val_residue_loss": 2.9, "ss3_q3": 0.4})
    resumed = MetricsWriter(run_dir, enabled=True)  # a resumed run appends to the same file
    resumed.write({"step": 3, "loss": 2.0})
    lines = _read(f"{run_dir}/metrics.jsonl").decode().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3]
    MetricsWriter(run_dir, enabled=False).write({"step": 4})  # not process 0: writes nothing
    assert len(_read(f"{run_dir}/metrics.jsonl").decode().splitlines()) == 3

    assert write_curves(run_dir, "r") == f"{run_dir}/curves.png"
    png = _read(f"{run_dir}/curves.png")
    assert png[:8] == PNG
    assert "curves.png" in _files(run_dir)
    assert not [f for f in _files(run_dir) if ".tmp-" in f]  # no temporary left beside it


def test_curves_failure_only_warns_and_leaves_no_file(run_dir, caplog):
    assert write_curves(run_dir, "r") is None  # no metrics.jsonl yet: a warning, not an error
    assert "could not write" in caplog.text
    assert "curves.png" not in _files(run_dir)


def test_a_resume_drops_the_example_records_it_trains_again(run_dir, tmp_path):
    """Two workers recorded steps 0-5, a third (before the group shrank to 2) steps 0-3; the
    run resumes from step 4 with 2 workers: each drops its own records of steps 4 and 5, and
    process 0 those of the rank no longer there; earlier steps stay. On gs:// too, where an
    object cannot be appended to (gcsfs' mode "a" overwrote all but the last record)."""
    run = run_dir
    for rank, steps in ((0, 6), (1, 6), (2, 4)):
        for step in range(steps):
            log_examples(run, rank, step, [100 * rank + step])

    def recorded(rank: int) -> list[int]:
        lines = _read(f"{run}/examples/rank{rank}.jsonl").decode().splitlines()
        return [json.loads(line)["step"] for line in lines]

    assert [recorded(r) for r in range(3)] == [list(range(6)), list(range(6)), [0, 1, 2, 3]]

    assert discard_examples_after(run, 4, rank=0, world=2) == 2  # rank 2's steps 0-3 predate 4
    assert [recorded(r) for r in range(3)] == [[0, 1, 2, 3], list(range(6)), [0, 1, 2, 3]]
    assert discard_examples_after(run, 4, rank=1, world=2) == 2
    assert recorded(1) == [0, 1, 2, 3]
    assert discard_examples_after(run, 2, rank=0, world=1) == 6  # ranks 1 and 2 are gone now
    assert [recorded(r) for r in range(3)] == [[0, 1]] * 3
    assert discard_examples_after(str(tmp_path / "fresh"), 0, rank=0, world=1) == 0
