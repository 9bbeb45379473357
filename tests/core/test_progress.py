"""The one progress helper: a tqdm bar on a terminal, plain periodic lines otherwise, silent
under ``--quiet``; and ``-q`` on a job's command line reaches it."""

from __future__ import annotations

import io
import re

import pytest

from ankh_platform.core import progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _not_quiet():
    progress.set_quiet(False)
    yield
    progress.set_quiet(False)


def test_plain_lines_when_not_a_terminal():
    out = io.StringIO()
    with progress.Progress("embed", total=4, unit="rows", stream=out, interval=0) as p:
        for _ in range(4):
            p.update()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0].startswith("embed: 1/4 rows (25%) | ") and "rows/s | ETA " in lines[0]
    assert lines[3].startswith("embed: 4/4 rows (100%)")
    assert lines[-1].startswith("embed: done, 4 rows in ")
    assert len(lines) == 5


def test_plain_lines_are_periodic_not_per_update():
    out = io.StringIO()
    with progress.Progress("prepare", unit="records", stream=out, interval=3600) as p:
        p.update(1000)
        p.update(234)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prepare: done, 1,234 records in "), lines


def test_tqdm_bar_on_a_terminal():
    out = _Terminal()
    items = list(progress.track(range(3), "parents", unit="parents", stream=out))
    assert items == [0, 1, 2]
    text = out.getvalue()
    assert "\r" in text and "parents: 100%" in text and "3/3" in text
    assert not re.search(r"^parents: done", text, re.M)  # the bar, not the plain lines


def test_quiet_prints_nothing():
    progress.set_quiet(True)
    for stream in (io.StringIO(), _Terminal()):
        with progress.Progress("evaluate", total=2, stream=stream, interval=0) as p:
            p.update(2)
        progress.console("step 1/2 | loss 1.000", stream)
        assert stream.getvalue() == ""


def test_console_line_and_worker_tag(monkeypatch, capsys):
    out = io.StringIO()
    progress.console("checkpoint step 20 -> x", out)
    assert out.getvalue() == "checkpoint step 20 -> x\n"
    monkeypatch.setenv(progress.WORKER_CONSOLE_ENV, "1")  # inside a Ray Train worker
    progress.console("step 10/20")
    assert capsys.readouterr().out == progress.CONSOLE_TAG + "step 10/20\n"


@pytest.mark.parametrize("seconds,text", [(0, "0s"), (9.4, "9s"), (72, "1m12s"), (7380, "2h03m")])
def test_format_duration(seconds, text):
    assert progress.format_duration(seconds) == text


def test_quiet_flag_of_a_job_reaches_the_helper():
    from ankh_platform.core import cli as _cli

    ap = _cli.parser("jobs.x", None)
    _cli.parse_args(ap, ["-q"])
    assert progress.is_quiet()
    _cli.parse_args(ap, [])
    assert not progress.is_quiet()


def test_pretrain_console_lines():
    from ankh_platform.train.worker import console_lines

    rec = {
        "step": 120,
        "loss": 2.8104,
        "accuracy": 0.1401,
        "tokens_per_s": 1930.4,
        "step_time_s": 0.4,
        "val_loss": 2.9,
        "val_accuracy": 0.12,
        "val_residue_loss": 3.1,
    }
    assert console_lines(rec, 300) == [
        "step 120/300 | loss 2.810 | acc 0.140 | 1,930 tok/s | ETA 1m12s",
        "eval step 120 | val_loss 2.900 | val_acc 0.120 | val_residue_loss 3.100",
    ]
    final = {
        "step": 300,
        "event": "final",
        "val_loss": 2.5,
        "val_accuracy": 0.2,
        "val_residue_loss": 3.0,
    }
    assert console_lines(final, 300) == [
        "final step 300 | val_loss 2.500 | val_acc 0.200 | val_residue_loss 3.000"
    ]


def test_log_file_takes_framework_chatter_the_console_keeps_the_rest(tmp_path):
    import logging

    from ankh_platform.core import runtime

    root = logging.getLogger()
    console = io.StringIO()
    mine = logging.StreamHandler(console)
    root.addHandler(mine)
    level = root.level
    try:
        runtime.configure_logging(logging.INFO, log_file=str(tmp_path / "logs" / "job.log"))
        logging.getLogger("orbax.checkpoint").info("CheckpointManagerOptions=...")
        logging.getLogger("ray.train").info("Reporting training result 1")
        logging.getLogger("ankh_platform.train.job").info("run started")
        logging.getLogger("absl").warning("disk almost full")
        for h in root.handlers + logging.getLogger("ray").handlers:
            h.flush()
        shown = console.getvalue()
        assert "run started" in shown and "disk almost full" in shown
        assert "CheckpointManagerOptions" not in shown and "Reporting training" not in shown
        logged = (tmp_path / "logs" / "job.log").read_text()
        for text in (
            "CheckpointManagerOptions",
            "Reporting training result 1",
            "run started",
            "disk almost full",
        ):
            assert text in logged, text
        runtime.configure_logging(logging.DEBUG)  # -v: the console shows framework lines too
        logging.getLogger("orbax.checkpoint").info("saved step 20")
        assert "saved step 20" in console.getvalue()
    finally:
        root.removeHandler(mine)
        for lg in (root, logging.getLogger("ray")):
            for h in [h for h in lg.handlers if h.get_name() == "ankh-job-log"]:
                lg.removeHandler(h)
                h.close()
        runtime.configure_logging(logging.INFO)
        root.setLevel(level)
