"""Packing a workspace and extracting what comes back: round trips, and hostile archives refused.

No engine needed: the archives are crafted here (``hostile_tar`` in conftest.py).
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest
from fsrlm.executors.docker.archive import (
    ArchiveError,
    WorkspacePacker,
    extract_archive,
    stays_inside,
)

LIMITS = {"max_bytes": 10 * 1024 * 1024, "max_files": 1000}


def _tree(root: Path) -> dict[str, object]:
    """Everything under ``root``: files by content, links by target, folders as None."""
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                out[rel] = None
            elif not path.is_file():
                out[rel] = "special"
            else:
                out[rel] = path.read_bytes()
    return out


def _extract(data: bytes, root: Path, **kw):
    chunks = [data[i:i + 7000] for i in range(0, len(data), 7000)]  # odd chunking on purpose
    return extract_archive(chunks, root, **{**LIMITS, **kw})


def test_pack_then_extract_round_trip(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "input" / "attachments").mkdir(parents=True)
    (src / "input" / "prompt.md").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (src / "input" / "attachments" / "ünïcode name.txt").write_text("ü")
    (src / "empty").mkdir()
    (src / "run.sh").write_text("#!/bin/sh\n")
    (src / "run.sh").chmod(0o755)
    (src / "inside").symlink_to("input/prompt.md")
    outside = tmp_path / "secret"
    outside.write_text("host secret")
    (src / "out").symlink_to(outside)  # points out: not sent
    (src / "hard").hardlink_to(src / "run.sh")  # a second name: not sent
    os.mkfifo(src / "fifo")  # not sent, and never blocks the packer

    packer = WorkspacePacker(src, uid=1000, gid=1000)
    data = b"".join(packer.chunks())
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert {m.uid for m in members.values()} == {1000} and {m.gid for m in members.values()} == {1000}
    assert set(members) == {"input", "input/prompt.md", "input/attachments", "input/attachments/ünïcode name.txt",
                            "empty", "inside"}
    assert sorted(packer.skipped) == ["fifo", "hard", "out", "run.sh"]  # run.sh has two names now
    assert packer.sent["input/prompt.md"][0] == 3 * 1024 * 1024 + 17

    dest = tmp_path / "dest"
    dest.mkdir()
    report = _extract(data, dest)
    expected = _tree(src)
    for name in ("out", "hard", "fifo", "run.sh"):
        expected.pop(name)
    assert _tree(dest) == expected
    assert report.files == 2 and report.directories == 3 and report.links == 1 and not report.rejected


def test_extract_keeps_what_the_host_says(tmp_path: Path, make_tar) -> None:
    dest = tmp_path / "dest"
    (dest / "state").mkdir(parents=True)
    (dest / "state" / "subcalls.jsonl").write_text("broker")
    data = make_tar([("workspace/state", "dir"), ("workspace/state/subcalls.jsonl", b"agent"),
                     ("workspace/state/artifacts.jsonl", b"facts")])
    report = _extract(data, dest, strip="workspace", keep=lambda rel: rel == "state/subcalls.jsonl")
    assert (dest / "state" / "subcalls.jsonl").read_text() == "broker"
    assert (dest / "state" / "artifacts.jsonl").read_text() == "facts"
    assert report.kept == ["state/subcalls.jsonl"] and report.written == ["state/artifacts.jsonl"]


def test_hard_link_inside_becomes_a_copy(tmp_path: Path, make_tar) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    data = make_tar([("workspace/a.txt", b"same"), ("workspace/b.txt", ("hardlink", "workspace/a.txt"))])
    report = _extract(data, dest, strip="workspace")
    assert (dest / "b.txt").read_text() == "same" and (dest / "a.txt").stat().st_nlink == 1
    assert not report.rejected


@pytest.mark.parametrize("name", ["/etc/cron.d/evil", "workspace/../evil", "workspace/a/../../evil", "../evil",
                                  "elsewhere/evil", "//etc/evil", "workspace/./../evil"])
def test_hostile_names_are_refused(tmp_path: Path, make_tar, name: str) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    before = _tree(tmp_path)
    with pytest.raises(ArchiveError, match="refused|malformed"):
        _extract(make_tar([(name, b"pwned")]), dest, strip="workspace")
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("entry,why", [
    (("workspace/out", ("symlink", "/etc/passwd")), "symlink pointing out"),
    (("workspace/out", ("symlink", "../../../etc")), "symlink pointing out"),
    (("workspace/sub/out", ("symlink", "../../x")), "symlink pointing out"),
    (("workspace/h", ("hardlink", "/etc/passwd")), "hard link"),
    (("workspace/h", ("hardlink", "workspace/../../etc/passwd")), "hard link"),
    (("workspace/h", ("hardlink", "etc/passwd")), "hard link"),
    (("workspace/h", ("hardlink", "workspace/never-sent.txt")), "hard link"),
    (("workspace/dev", "chr"), "special file"),
    (("workspace/blk", "blk"), "special file"),
    (("workspace/fifo", "fifo"), "special file"),
])
def test_hostile_entries_are_rejected_and_the_rest_extracted(tmp_path: Path, make_tar, entry, why) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    before = _tree(tmp_path)
    data = make_tar([("workspace/sub", "dir"), entry, ("workspace/ok.txt", b"fine")])
    report = _extract(data, dest, strip="workspace")
    assert len(report.rejected) == 1 and why in report.rejected[0]
    after = _tree(tmp_path)
    added = {k: v for k, v in after.items() if k not in before}
    assert added == {"dest/sub": None, "dest/ok.txt": b"fine"}  # nothing else, anywhere


def test_nothing_is_written_through_a_link(tmp_path: Path, make_tar) -> None:
    """A link the archive made (pointing inside) or one already in the folder is never followed."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "file").write_text("host")
    dest = tmp_path / "dest"
    (dest / "output").mkdir(parents=True)
    (dest / "planted").symlink_to(outside)  # e.g. left by an earlier run
    (dest / "output" / "answer.md").symlink_to(outside / "file")
    data = make_tar([
        ("workspace/inner", ("symlink", "output")),  # points inside: kept as a link...
        ("workspace/inner/x.txt", b"through the link"),  # ...but never written through
        ("workspace/planted/file", b"pwned"),
        ("workspace/output/answer.md", b"the answer"),  # replaces the planted link, not its target
    ])
    report = _extract(data, dest, strip="workspace")
    assert (outside / "file").read_text() == "host" and sorted(os.listdir(outside)) == ["file"]
    assert (dest / "output" / "answer.md").read_text() == "the answer"
    assert not (dest / "output" / "answer.md").is_symlink()
    assert not (dest / "output" / "x.txt").exists()
    assert [r.split(":")[0] for r in report.rejected] == ["inner/x.txt", "planted/file"]


def test_chained_links_cannot_climb_out(tmp_path: Path, make_tar) -> None:
    """Each link of a chain looks inside on its own; together they would reach the parent folder."""
    dest = tmp_path / "dest"
    dest.mkdir()
    data = make_tar([
        ("workspace/d0", "dir"), ("workspace/d1", "dir"), ("workspace/d2", "dir"),
        ("workspace/d0/l", ("symlink", "..")),  # the run folder itself: fine
        ("workspace/d1/l", ("symlink", "../d0/l/..")),  # d0/l/.. = the run folder's parent
        ("workspace/d2/l", ("symlink", "../d0/l/d1/l/x")),  # through an accepted link: inside
    ])
    report = _extract(data, dest, strip="workspace")
    assert [r.split(":")[0] for r in report.rejected] == ["d1/l"]
    assert os.readlink(dest / "d0" / "l") == ".." and not (dest / "d1" / "l").is_symlink()
    for link in dest.rglob("*"):
        if link.is_symlink():
            assert os.path.realpath(link).startswith(str(dest.resolve())), link


def test_caps_on_bytes_and_entries(tmp_path: Path, make_tar) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    big = make_tar([("workspace/a", b"x" * 600), ("workspace/b", b"y" * 600)])
    with pytest.raises(ArchiveError, match="more than 1000 bytes"):
        _extract(big, dest, strip="workspace", max_bytes=1000)
    assert (dest / "a").read_bytes() == b"x" * 600 and not (dest / "b").exists()  # stopped before b's data
    many = make_tar([(f"workspace/f{i}", b"") for i in range(20)])
    with pytest.raises(ArchiveError, match="more than 10 entries"):
        _extract(many, dest, strip="workspace", max_files=10)


def test_a_bomb_is_refused_before_its_data_is_read(tmp_path: Path) -> None:
    """A header that claims 1 TB: refused from the header, with no byte of data read."""
    dest = tmp_path / "dest"
    dest.mkdir()
    info = tarfile.TarInfo("workspace/bomb")
    info.size = 10**12
    header = info.tobuf(tarfile.PAX_FORMAT)
    reads = []

    def chunks():
        yield header
        while True:  # an endless stream of zeros: must never be consumed to the end
            reads.append(1)
            yield b"\0" * 65536

    with pytest.raises(ArchiveError, match="bytes"):
        extract_archive(chunks(), dest, strip="workspace", **LIMITS)
    assert len(reads) < 4 and os.listdir(dest) == []


def test_oversized_headers_and_compression_are_refused(tmp_path: Path, make_tar) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    pax = tarfile.TarInfo("././@PaxHeader")
    pax.type = tarfile.XHDTYPE
    pax.size = 64 * 1024 * 1024  # a 64 MB extended header
    with pytest.raises(ArchiveError, match="header|read of"):
        _extract(pax.tobuf(tarfile.USTAR_FORMAT) + b"\0" * 1024, dest)
    compressed = gzip.compress(make_tar([("workspace/a", b"a" * 100_000)]))
    with pytest.raises(ArchiveError, match="not a valid tar"):
        _extract(compressed, dest, strip="workspace")
    with pytest.raises(ArchiveError, match="not a valid tar"):
        _extract(b"not a tar at all" * 100, dest)
    assert os.listdir(dest) == []


def test_an_endless_stream_hits_the_cap(tmp_path: Path, make_tar) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    info = tarfile.TarInfo("workspace/f")
    info.size = 1000
    entry = info.tobuf(tarfile.PAX_FORMAT) + b"z" * 1000 + b"\0" * 24  # one entry, never an end

    def forever():
        while True:
            yield entry

    with pytest.raises(ArchiveError, match="more than"):
        extract_archive(forever(), dest, strip="workspace", max_bytes=10**9, max_files=50)


def test_a_folder_in_the_way_is_not_replaced(tmp_path: Path, make_tar) -> None:
    dest = tmp_path / "dest"
    (dest / "output" / "answer.md").mkdir(parents=True)
    (dest / "file").write_text("host")
    report = _extract(make_tar([("workspace/output/answer.md", b"x"), ("workspace/file", "dir")]), dest,
                      strip="workspace")
    assert (dest / "output" / "answer.md").is_dir() and (dest / "file").read_text() == "host"
    assert len(report.rejected) == 2


def test_modes_are_tamed(tmp_path: Path, make_tar) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    _extract(make_tar([("workspace/suid", (b"x", 0o4777)), ("workspace/ro", (b"y", 0o400))]), dest,
             strip="workspace")
    assert stat.S_IMODE((dest / "suid").stat().st_mode) & 0o7000 == 0  # no setuid, setgid or sticky bit
    assert stat.S_IMODE((dest / "ro").stat().st_mode) & 0o600 == 0o600  # the host can always rewrite it


def test_stays_inside() -> None:
    assert stays_inside("a/b", "c") and stays_inside("a/b", "../c") and stays_inside("a", "./x/y")
    assert stays_inside("a/b", "..") and stays_inside("a/b/c", "../../x/./y")
    assert not stays_inside("a/b", "../../c") and not stays_inside("a", "/etc") and not stays_inside("a", "")
    assert not stays_inside("a", "..") and not stays_inside("a/b/c", "../../../x")
    # a ".." after a name may climb out through a link: d0/l -> .., then d1/l -> ../d0/l/.. is the parent
    assert stays_inside("d0/l", "..") and not stays_inside("d1/l", "../d0/l/..")
    assert not stays_inside("a", "./x/../y") and not stays_inside("a/b", "x/..")
