"""The fault-injection hold (``ankh_platform.train.faults.maybe_hold``), in one process."""

from __future__ import annotations

import threading
from pathlib import Path

from ankh_platform.train.faults import hold_path, maybe_hold
from tests.train.helpers import pretrain_config


def test_hold_finishes_saves_then_waits_while_its_file_exists(tmp_path):
    cfg = pretrain_config(tmp_path, "held", "fault.hold_steps=[3]")
    hold = Path(hold_path(cfg, 3))
    hold.parent.mkdir(parents=True)
    hold.touch()
    saves: list[int] = []
    maybe_hold(cfg, 2, lambda: saves.append(2))  # not a hold step: no wait, no storage call
    assert saves == []
    removed = threading.Timer(0.5, hold.unlink)
    removed.start()
    maybe_hold(cfg, 3, lambda: saves.append(3))
    assert saves == [3] and not hold.exists()  # returned only once the file was gone
    removed.join()
    maybe_hold(cfg, 3, lambda: saves.append(3))  # no file: goes on at once
    assert saves == [3, 3]
