"""The shared CLI binary is mounted from a neutral path: a hard link (or a copy) named by its fingerprint."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from fsrlm.executors.docker import sharedcli


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "home" / "alice" / ".venv" / "claude"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x7fELF binary")
    path.chmod(0o755)
    return path


@pytest.fixture
def neutral(tmp_path: Path, monkeypatch) -> Path:
    folder = tmp_path / "neutral" / "cli"
    monkeypatch.setattr(sharedcli, "neutral_dir", lambda: folder)
    monkeypatch.setattr(sharedcli, "ROOT_DIR", folder)
    if os.geteuid() != 0:
        folder.parent.mkdir()
    return folder


def test_a_hard_link_named_by_fingerprint(source: Path, neutral: Path, monkeypatch) -> None:
    monkeypatch.setattr(sharedcli, "ORPHAN_AGE_S", 0.0)
    path = sharedcli.neutral_cli(source)
    assert path is not None and path.parent == neutral and "alice" not in str(path)
    assert path.stat().st_ino == source.stat().st_ino and os.access(path, os.X_OK)
    assert sharedcli.neutral_cli(source) == path  # reused
    source.unlink()
    source.write_bytes(b"\x7fELF newer binary")  # a reinstalled wheel: new fingerprint, old link pruned
    newer = sharedcli.neutral_cli(source)
    assert newer is not None and newer != path and not path.exists()
    assert newer.read_bytes() == b"\x7fELF newer binary"


def test_two_installations_keep_each_others_links(source: Path, neutral: Path, tmp_path: Path,
                                                  monkeypatch) -> None:
    """A second virtualenv's CLI (another inode) must not remove the link the first one mounts."""
    monkeypatch.setattr(sharedcli, "ORPHAN_AGE_S", 0.0)
    other = tmp_path / "other-venv" / "claude"
    other.parent.mkdir()
    other.write_bytes(b"\x7fELF another installation")
    first = sharedcli.neutral_cli(source)
    second = sharedcli.neutral_cli(other)
    assert first is not None and second is not None and first != second
    assert first.exists() and second.exists()
    assert sharedcli.neutral_cli(source) == first and second.exists()


def test_a_copy_when_no_link_can_be_made(source: Path, neutral: Path, monkeypatch) -> None:
    def no_link(*args, **kwargs):
        raise OSError(errno.EXDEV, "cross-device link")

    monkeypatch.setattr(sharedcli.os, "link", no_link)
    path = sharedcli.neutral_cli(source)
    assert path is not None and path.read_bytes() == source.read_bytes()
    assert path.stat().st_ino != source.stat().st_ino


def test_a_folder_others_can_write_is_refused(source: Path, neutral: Path) -> None:
    neutral.mkdir(parents=True)
    neutral.chmod(0o777)
    assert sharedcli.neutral_cli(source) is None  # then the image's own copy is used
    assert list(neutral.iterdir()) == []
