"""fsrlm.locks.locked_file: one holder at a time across processes, and nothing left in the temp folder."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from fsrlm.locks import locked_file


def _hold(path: str, log: str, rounds: int) -> None:
    for _ in range(rounds):
        with locked_file(Path(path)):
            with open(log, "a") as f:
                f.write("in\n")
                f.flush()
                time.sleep(0.002)
                f.write("out\n")


def test_the_lock_file_goes_with_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    with locked_file(path):
        assert path.exists()
    assert not path.exists()


def test_holders_in_several_processes_never_overlap(tmp_path: Path) -> None:
    path, log = tmp_path / "x.lock", tmp_path / "log"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_hold, args=(str(path), str(log), 40)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lines = log.read_text().split()
    assert len(lines) == 4 * 40 * 2
    assert lines == ["in", "out"] * (4 * 40)  # never two holders at once, although files came and went
    assert not path.exists()


def test_a_link_in_its_place_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("keep")
    (tmp_path / "x.lock").symlink_to(target)
    with pytest.raises(OSError):
        with locked_file(tmp_path / "x.lock"):
            pass
    assert target.read_text() == "keep"


def test_image_build_locks_leave_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    from fsrlm.executors.docker import image

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with image.build_lock("ship-tcp://127.0.0.1:41234-fsrlm-sandbox:0.1.0-abc"):
        assert len(list(tmp_path.glob("fsrlm-image-*.lock"))) == 1
    assert list(tmp_path.iterdir()) == []
