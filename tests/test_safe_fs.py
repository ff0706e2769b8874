"""safe_fs: host-side access to the workspace never follows a link out of it."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest

from fsrlm.errors import WorkspaceError
from fsrlm.safe_fs import BeneathAppender, append_beneath, open_beneath, read_text_beneath, write_beneath

LINK_ERRNOS = (errno.ELOOP, errno.ENOTDIR)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "ws"
    (r / "state").mkdir(parents=True)
    (r / "output").mkdir()
    return r


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    o = tmp_path / "outside"
    o.mkdir()
    (o / "secret.txt").write_text("host secret")
    return o


def listing(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


# -- open_beneath ----------------------------------------------------------------------


def test_open_beneath_plain_file(root: Path) -> None:
    (root / "state" / "a.txt").write_text("hello")
    fd = open_beneath(root, "state/a.txt", os.O_RDONLY)
    with os.fdopen(fd, "rb") as f:
        assert f.read() == b"hello"
    fd = open_beneath(root, "./state/./a.txt", os.O_RDONLY)
    os.close(fd)


@pytest.mark.parametrize("rel", ["../x", "state/../../x", "state/..", "/etc/passwd", "/", "", ".", "./"])
def test_open_beneath_refuses_escaping_paths(root: Path, rel: str) -> None:
    with pytest.raises(WorkspaceError, match="must be relative"):
        open_beneath(root, rel, os.O_RDONLY)


def test_open_beneath_refuses_symlinked_final_component(root: Path, outside: Path) -> None:
    (root / "output" / "answer.md").symlink_to(outside / "secret.txt")
    with pytest.raises(OSError) as info:
        open_beneath(root, "output/answer.md", os.O_RDONLY)
    assert info.value.errno in LINK_ERRNOS


def test_open_beneath_refuses_symlinked_directory(root: Path, outside: Path) -> None:
    (root / "linked").symlink_to(outside)
    with pytest.raises(OSError) as info:
        open_beneath(root, "linked/secret.txt", os.O_RDONLY)
    assert info.value.errno in LINK_ERRNOS
    # deeper down too, and also when creating missing directories
    (root / "state" / "deep").symlink_to(outside)
    with pytest.raises(OSError) as info:
        open_beneath(root, "state/deep/new/file.txt", os.O_WRONLY | os.O_CREAT, make_dirs=True)
    assert info.value.errno in LINK_ERRNOS
    assert listing(outside) == ["secret.txt"]


def test_open_beneath_dangling_symlinked_directory_not_created(root: Path, outside: Path) -> None:
    (root / "state" / "dir").symlink_to(outside / "would-be-created")
    with pytest.raises(OSError):
        open_beneath(root, "state/dir/f.txt", os.O_WRONLY | os.O_CREAT, make_dirs=True)
    assert listing(outside) == ["secret.txt"]


def test_open_beneath_make_dirs(root: Path) -> None:
    with pytest.raises(FileNotFoundError):
        open_beneath(root, "a/b/c.txt", os.O_WRONLY | os.O_CREAT)
    fd = open_beneath(root, "a/b/c.txt", os.O_WRONLY | os.O_CREAT, make_dirs=True)
    os.close(fd)
    assert (root / "a" / "b" / "c.txt").is_file()


def test_open_beneath_root_itself_may_be_a_resolved_path(root: Path) -> None:
    (root / "state" / "f").write_text("x")
    fd = open_beneath(root.resolve(), "state/f", os.O_RDONLY)
    os.close(fd)


# -- read_text_beneath -----------------------------------------------------------------


def test_read_text_beneath_refuses_links(root: Path, outside: Path) -> None:
    (root / "output" / "sym.md").symlink_to(outside / "secret.txt")
    assert read_text_beneath(root, "output/sym.md", 1000) is None
    try:
        os.link(outside / "secret.txt", root / "output" / "hard.md")
    except OSError as e:
        pytest.skip(f"no hard links here: {e}")
    assert read_text_beneath(root, "output/hard.md", 1000) is None


def test_read_text_beneath_caps(root: Path) -> None:
    (root / "output" / "big.md").write_bytes(b"z" * 50)
    assert read_text_beneath(root, "output/big.md", 5) == "zzzzz\n[fsrlm: truncated at 5 bytes]"
    assert read_text_beneath(root, "output/missing.md", 5) is None
    assert read_text_beneath(root, "output", 5) is None  # a directory is not a file


# -- append_beneath --------------------------------------------------------------------


def test_append_creates_and_appends(root: Path) -> None:
    append_beneath(root, "state/new/log.jsonl", b"one\n")
    append_beneath(root, "state/new/log.jsonl", b"two\n")
    assert (root / "state" / "new" / "log.jsonl").read_bytes() == b"one\ntwo\n"


def test_append_never_writes_through_a_symlink(root: Path, outside: Path) -> None:
    (root / "state" / "subcalls.jsonl").symlink_to(outside / "secret.txt")
    with pytest.raises(OSError):
        append_beneath(root, "state/subcalls.jsonl", b"evil\n")
    assert (outside / "secret.txt").read_text() == "host secret"


def test_append_never_creates_through_a_dangling_symlink(root: Path, outside: Path) -> None:
    (root / "state" / "subcalls.jsonl").symlink_to(outside / "created.txt")
    with pytest.raises(OSError):
        append_beneath(root, "state/subcalls.jsonl", b"evil\n")
    assert listing(outside) == ["secret.txt"]


def test_append_never_writes_through_a_symlinked_directory(root: Path, outside: Path) -> None:
    (root / "state").rename(root / "state.real")
    (root / "state").symlink_to(outside)
    with pytest.raises(OSError):
        append_beneath(root, "state/subcalls.jsonl", b"evil\n")
    assert listing(outside) == ["secret.txt"]


def test_append_refuses_hard_link(root: Path, outside: Path) -> None:
    try:
        os.link(outside / "secret.txt", root / "state" / "subcalls.jsonl")
    except OSError as e:
        pytest.skip(f"no hard links here: {e}")
    with pytest.raises(WorkspaceError, match="not a plain file"):
        append_beneath(root, "state/subcalls.jsonl", b"evil\n")
    assert (outside / "secret.txt").read_text() == "host secret"


def test_append_refuses_fifo(root: Path) -> None:
    os.mkfifo(root / "state" / "events.jsonl")
    with pytest.raises(OSError):  # ENXIO (no reader) or "not a plain file": never blocks
        append_beneath(root, "state/events.jsonl", b"x\n")


def test_append_refuses_escaping_paths(root: Path) -> None:
    with pytest.raises(WorkspaceError):
        append_beneath(root, "../escape.jsonl", b"x")
    assert not (root.parent / "escape.jsonl").exists()


# -- write_beneath ---------------------------------------------------------------------


def test_write_creates_dirs_and_replaces(root: Path) -> None:
    write_beneath(root, "cache/llm/k.json", b'{"a": 1}')
    write_beneath(root, "cache/llm/k.json", b'{"a": 2}')
    assert (root / "cache" / "llm" / "k.json").read_bytes() == b'{"a": 2}'
    write_beneath(root, "top.txt", b"top")
    assert (root / "top.txt").read_bytes() == b"top"
    assert listing(root / "cache" / "llm") == ["k.json"]  # no temp file left behind


def test_write_replaces_a_symlink_instead_of_following_it(root: Path, outside: Path) -> None:
    target = root / "output" / "entry.json"
    target.symlink_to(outside / "secret.txt")
    write_beneath(root, "output/entry.json", b"new")
    assert (outside / "secret.txt").read_text() == "host secret"
    assert not target.is_symlink() and target.read_bytes() == b"new"


def test_write_replaces_a_dangling_symlink_without_creating_its_target(root: Path, outside: Path) -> None:
    (root / "output" / "entry.json").symlink_to(outside / "created.json")
    write_beneath(root, "output/entry.json", b"new")
    assert listing(outside) == ["secret.txt"]
    assert (root / "output" / "entry.json").read_bytes() == b"new"


def test_write_replaces_a_hard_link_without_changing_the_other_name(root: Path, outside: Path) -> None:
    try:
        os.link(outside / "secret.txt", root / "output" / "entry.json")
    except OSError as e:
        pytest.skip(f"no hard links here: {e}")
    write_beneath(root, "output/entry.json", b"new")
    assert (outside / "secret.txt").read_text() == "host secret"
    assert (root / "output" / "entry.json").read_bytes() == b"new"


def test_write_never_writes_through_a_symlinked_directory(root: Path, outside: Path) -> None:
    (root / "cache").symlink_to(outside)
    with pytest.raises(OSError):
        write_beneath(root, "cache/entry.json", b"evil")
    assert listing(outside) == ["secret.txt"]


def test_write_refuses_escaping_paths(root: Path) -> None:
    for rel in ("../escape.json", "/tmp/escape.json"):
        with pytest.raises(WorkspaceError):
            write_beneath(root, rel, b"x")
    assert not (root.parent / "escape.json").exists()


def test_write_is_atomic_replace_not_in_place(root: Path) -> None:
    path = root / "output" / "entry.json"
    path.write_bytes(b"old content")
    before = path.stat().st_ino
    with path.open("rb") as old_reader:
        write_beneath(root, "output/entry.json", b"new content")
        assert old_reader.read() == b"old content"  # the old file was never truncated
    assert path.stat().st_ino != before
    assert path.read_bytes() == b"new content"


def test_write_readers_never_see_a_partial_file(root: Path) -> None:
    size = 512 * 1024
    versions = [bytes([65 + i]) * size for i in range(4)]
    write_beneath(root, "output/big.bin", versions[0])
    stop = threading.Event()
    bad: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            data = (root / "output" / "big.bin").read_bytes()
            if len(data) != size or data.count(data[:1]) != size:
                bad.append(f"partial read: {len(data)} bytes")
                return

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(60):
            write_beneath(root, "output/big.bin", versions[i % 4])
    finally:
        stop.set()
        thread.join()
    assert bad == []


def test_failed_write_keeps_old_file_and_leaves_no_temp(root: Path) -> None:
    write_beneath(root, "output/entry.json", b"old")
    with pytest.raises(TypeError):
        write_beneath(root, "output/entry.json", "not bytes")  # type: ignore[arg-type]
    assert (root / "output" / "entry.json").read_bytes() == b"old"
    assert listing(root / "output") == ["entry.json"]
    write_beneath(root, "output/entry.json", b"again")  # a failed write does not block the next one
    assert (root / "output" / "entry.json").read_bytes() == b"again"


def test_planted_temp_name_does_not_block_or_redirect_writes(root: Path, outside: Path) -> None:
    # the agent can guess the broker's pid and plant a link where the temp file would go
    (root / "output" / f".entry.json.{os.getpid()}.tmp").symlink_to(outside / "secret.txt")
    write_beneath(root, "output/entry.json", b"new")
    assert (root / "output" / "entry.json").read_bytes() == b"new"
    assert (outside / "secret.txt").read_text() == "host secret"


def test_an_appender_never_follows_what_replaced_its_file(tmp_path: Path) -> None:
    """The audit log is opened once: a link swapped in later is not written through; a deleted log is made again."""
    root, outside = tmp_path / "ws", tmp_path / "outside.txt"
    root.mkdir()
    outside.write_text("")
    log = BeneathAppender(root, "state/log.jsonl")
    log.append(b"one\n")
    opened = root / "state" / "log.jsonl"
    opened.rename(root / "state" / "kept.jsonl")
    opened.symlink_to(outside)  # the agent plants a link where the log was
    log.append(b"two\n")  # the file still open is the one written: renamed, not gone
    assert (root / "state" / "kept.jsonl").read_bytes() == b"one\ntwo\n" and outside.read_text() == ""
    (root / "state" / "kept.jsonl").unlink()  # the log deleted: the next line opens the name again,
    with pytest.raises(OSError):  # which is a link now, and is refused rather than followed
        log.append(b"three\n")
    assert outside.read_text() == ""
    opened.unlink()
    log.append(b"four\n")
    log.close()
    assert opened.read_bytes() == b"four\n"
