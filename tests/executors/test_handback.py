"""Handing a workspace back from the sandbox's uid: no setuid file of that uid survives."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from fsrlm.executors.docker.handback import chown_tree

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")


def _file(path: Path, mode: int, uid: int) -> Path:
    path.write_bytes(b"#!/bin/sh\n")
    os.chown(path, uid, uid)
    os.chmod(path, mode)
    return path


def test_hand_back_clears_setuid_and_setgid_bits(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / "scratch").mkdir(parents=True)
    plain = _file(ws / "scratch" / "suid", 0o6755, 1000)
    linked = _file(ws / "scratch" / "linked", 0o4755, 1000)
    os.link(linked, ws / "scratch" / "linked-2")

    chown_tree(ws, 0, 0, drop_setid=True)

    assert stat.S_IMODE(plain.stat().st_mode) == 0o755 and plain.stat().st_uid == 0
    assert stat.S_IMODE(linked.stat().st_mode) == 0o755
    assert linked.stat().st_uid == 1000  # hard-linked files keep their owner, but lose the bits


def test_without_drop_setid_modes_are_not_touched(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    linked = _file(ws / "linked", 0o4755, 0)
    os.link(linked, ws / "linked-2")
    chown_tree(ws, 1000, 1000)
    assert stat.S_IMODE(linked.stat().st_mode) == 0o4755
