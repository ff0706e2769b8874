"""Moving a workspace as a tar stream: packed on the way in, extracted safely on the way back.

``WorkspacePacker`` streams the host run folder as a tar (entries owned by the
container's user, no link that points out of the folder, no special file,
never following a link) for ``put_archive``; it never holds a file in memory.

``extract_archive`` is the way back, and the only code that writes what a
container produced into the host run folder. It treats the archive as hostile:

* names: no absolute path, no ``..``, nothing outside the expected top folder
  (``workspace/`` for ``get_archive`` of ``/workspace``) — the archive is
  refused (``ArchiveError``) at the first such name;
* types: regular files, directories, symlinks whose target stays inside, and
  hard links to a file of the same archive (written as a copy); a symlink or
  hard link pointing out, a device, a FIFO or a sparse file is skipped and
  listed in ``ExtractReport.rejected``;
* writing: each parent is opened one component at a time with ``O_NOFOLLOW``
  beneath the root, so a link planted by an earlier entry (or already in the
  folder) is never followed; files are written to a temp name and renamed;
* caps: total bytes of file data and number of entries (``ArchiveError`` when
  exceeded, checked against each header before its data is read); the stream
  is never decompressed, headers are bounded per entry, and reads only go forward.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import posixpath
import secrets
import stat
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fsrlm.errors import ArchiveError
from fsrlm.safe_fs import DirIdentity, open_beneath, walk_tree

logger = logging.getLogger(__name__)

BLOCK = tarfile.BLOCKSIZE
CHUNK = 1024 * 1024
MAX_HEADER_BYTES = 4 * 1024 * 1024  # long names and PAX headers of one entry
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_REJECTABLE = (errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOTEMPTY, errno.EPERM, errno.EACCES)


def stays_inside(name: str, target: str) -> bool:
    """Whether a symlink at ``name`` (relative to the root) pointing to ``target`` resolves inside the root.

    Only ``..`` at the start of ``target`` is accepted, at most as many as ``name`` is deep:
    a ``..`` after another name may climb out of a link (``d0/l -> ..`` then
    ``d1/l -> ../d0/l/..`` is the root's parent), which no check of the text can see.
    With that rule every accepted link resolves inside, whatever the other links are:
    its folder is a real one (entries are never written through a link), the leading
    ``..`` stay below the root, and each name after them is a folder or an accepted link.
    """
    if not target or target.startswith("/") or "\0" in target:
        return False
    parts = [p for p in target.split("/") if p not in ("", ".")]
    ups = 0
    while ups < len(parts) and parts[ups] == "..":
        ups += 1
    if ".." in parts[ups:]:
        return False
    depth = len([p for p in posixpath.dirname(name).split("/") if p not in ("", ".")])
    return ups <= depth


# -- packing -------------------------------------------------------------------------


def _header(name: str, kind: bytes, st: os.stat_result, uid: int, gid: int, *, size: int = 0,
            linkname: str = "") -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = stat.S_IMODE(st.st_mode) & 0o777
    info.uid, info.gid = uid, gid
    info.uname = info.gname = ""
    info.mtime = int(st.st_mtime)
    info.size = size
    info.linkname = linkname
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


class WorkspacePacker:
    """Stream ``root`` as a tar. ``sent`` maps each file sent to its ``(size, mtime_ns)`` on the host.

    ``expect``: the identity of the run folder the host created; the folder opened must be it.
    """

    def __init__(self, root: Path, *, uid: int, gid: int, expect: DirIdentity | None = None) -> None:
        self.root = root
        self.expect = expect
        self.uid, self.gid = uid, gid
        self.sent: dict[str, tuple[int, int]] = {}
        self.skipped: list[str] = []
        self.bytes = 0

    def chunks(self) -> Iterator[bytes]:
        top = os.open(self.root, _DIR_FLAGS)
        try:
            if self.expect is not None and DirIdentity.of_fd(top) != self.expect:
                raise ArchiveError(f"{self.root} is not the run folder the host created; refusing to send it")
            # One descriptor at a time, however deep or wide the folder (safe_fs.walk_tree).
            for entry in walk_tree(top):
                st = entry.st
                if entry.kind == "enter":
                    yield _header(entry.rel, tarfile.DIRTYPE, st, self.uid, self.gid)
                elif entry.kind == "leave":
                    continue
                elif stat.S_ISREG(st.st_mode) and st.st_nlink == 1:
                    yield from self._file(entry.dir_fd, entry.name, entry.rel)
                elif stat.S_ISLNK(st.st_mode) and stays_inside(
                        entry.rel, target := os.readlink(entry.name, dir_fd=entry.dir_fd)):
                    yield _header(entry.rel, tarfile.SYMTYPE, st, self.uid, self.gid, linkname=target)
                else:
                    self.skipped.append(entry.rel)  # a special file, a hard link, a link pointing out
        finally:
            os.close(top)
        yield b"\0" * (2 * BLOCK)

    def _file(self, dir_fd: int, name: str, path: str) -> Iterator[bytes]:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError:
            self.skipped.append(path)
            return
        with os.fdopen(fd, "rb", buffering=0) as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                self.skipped.append(path)
                return
            size = st.st_size
            yield _header(path, tarfile.REGTYPE, st, self.uid, self.gid, size=size)
            left = size
            while left:
                block = f.read(min(CHUNK, left)) or b"\0" * min(CHUNK, left)  # shrank meanwhile: pad
                left -= len(block)
                yield block
            if size % BLOCK:
                yield b"\0" * (BLOCK - size % BLOCK)
        self.sent[path] = (size, st.st_mtime_ns)
        self.bytes += size


# -- extracting ----------------------------------------------------------------------


@dataclass
class ExtractReport:
    files: int = 0
    directories: int = 0
    links: int = 0
    bytes: int = 0
    written: list[str] = field(default_factory=list)  # files written (relative paths)
    kept: list[str] = field(default_factory=list)  # the host's version was kept (``keep`` said so)
    rejected: list[str] = field(default_factory=list)  # "path: why"


class _ForwardReader:
    """A read-only, forward-only file over chunks, with caps on what one read may ask for."""

    def __init__(self, chunks: Iterable[bytes], limit: int) -> None:
        self._chunks = iter(chunks)
        self._buf = bytearray()
        self._pos = 0
        self._limit = limit
        self.in_data = False
        self.header_bytes = 0

    def _fill(self, n: int) -> None:
        while len(self._buf) < n:
            chunk = next(self._chunks, b"")
            if not chunk:
                return
            if self._pos + len(self._buf) + len(chunk) > self._limit:
                raise ArchiveError(f"the archive is larger than the cap of {self._limit} bytes")
            self._buf += chunk

    def read(self, n: int = -1) -> bytes:
        if n < 0 or (not self.in_data and n > MAX_HEADER_BYTES):
            raise ArchiveError(f"the archive asks for a read of {n} bytes (an oversized header?)")
        if not self.in_data:
            self.header_bytes += n
            if self.header_bytes > MAX_HEADER_BYTES:
                raise ArchiveError("an archive entry has more than 4 MiB of headers")
        self._fill(n)
        data = bytes(self._buf[:n])
        del self._buf[:n]
        self._pos += len(data)
        return data

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        target = offset if whence == 0 else self._pos + offset if whence == 1 else -1
        if target < self._pos:
            raise ArchiveError("the archive needs a backward seek (it is not a plain tar stream)")
        while self._pos < target:
            was, self.in_data = self.in_data, True
            try:
                if not self.read(min(CHUNK, target - self._pos)):
                    break
            finally:
                self.in_data = was
        return self._pos


def _relative(name: str, strip: str | None) -> str | None:
    """The path below the root for an archive name; None for the root itself. Raises for a hostile name."""
    if "\0" in name or name.startswith("/") or len(name) > 4096:
        raise ArchiveError(f"the archive holds an absolute or malformed name {name[:200]!r}; refused")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"the archive holds a name with '..' ({name[:200]!r}); refused")
    if strip is not None:
        if not parts or parts[0] != strip:
            raise ArchiveError(f"the archive holds {name[:200]!r}, outside {strip}/; refused")
        parts = parts[1:]
    return "/".join(parts) or None


@contextlib.contextmanager
def _parent(root: Path, rel: str) -> Iterator[tuple[int, str]]:
    """A descriptor of ``rel``'s folder and its last name; folders on the way are made, links never followed."""
    parent, _, name = rel.rpartition("/")
    fd = os.open(root, _DIR_FLAGS)
    try:
        for part in parent.split("/") if parent else ():
            try:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                os.mkdir(part, 0o755, dir_fd=fd)
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
        yield fd, name
    finally:
        os.close(fd)


def _write_file(root: Path, rel: str, src, size: int, mode: int) -> None:
    """Write ``size`` bytes of ``src`` to a temp name beside ``rel``, then rename it over ``rel``."""
    with _parent(root, rel) as (dir_fd, name):
        tmp = f".{name[:100]}.{secrets.token_hex(6)}.fsrlm-tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
        try:
            with os.fdopen(fd, "wb", buffering=0) as out:
                left = size
                while left:
                    block = src.read(min(CHUNK, left))
                    if not block:
                        raise ArchiveError(f"the archive ends inside {rel}")
                    out.write(block)
                    left -= len(block)
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)  # replaces a link, never follows it
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise


def _make_dir(root: Path, rel: str, mode: int) -> None:
    with _parent(root, rel) as (dir_fd, name):
        try:
            os.mkdir(name, mode, dir_fd=dir_fd)
        except FileExistsError:
            if not stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                raise OSError(errno.ENOTDIR, "exists and is not a folder") from None


def _make_symlink(root: Path, rel: str, target: str) -> None:
    with _parent(root, rel) as (dir_fd, name):
        try:
            os.symlink(target, name, dir_fd=dir_fd)
        except FileExistsError:
            if not stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                raise OSError(errno.EEXIST, "exists and is not a link") from None
            if os.readlink(name, dir_fd=dir_fd) != target:
                os.unlink(name, dir_fd=dir_fd)
                os.symlink(target, name, dir_fd=dir_fd)


class _Extractor:
    def __init__(self, root: Path, *, max_bytes: int, max_files: int, strip: str | None,
                 keep: Callable[[str], bool] | None) -> None:
        self.root = root
        self.max_bytes, self.max_files = max_bytes, max_files
        self.strip = strip
        self.keep = keep
        self.report = ExtractReport()
        self.extracted: set[str] = set()
        # Room for the headers of every entry on top of the file data.
        self.reader = _ForwardReader((), limit=max_bytes + (max_files + 2) * 3 * BLOCK + MAX_HEADER_BYTES)

    def count_bytes(self, size: int) -> None:
        self.report.bytes += size
        if self.report.bytes > self.max_bytes:
            raise ArchiveError(f"the archive holds more than {self.max_bytes} bytes (executor.max_collect_bytes)")

    def data(self, tar: tarfile.TarFile, member: tarfile.TarInfo):
        src = tar.extractfile(member)
        assert src is not None  # a regular file
        return src

    def skip_data(self, member: tarfile.TarInfo) -> None:
        """Read past what is left of ``member``'s data (counted as data, not header)."""
        end = member.offset_data + member.size
        if self.reader.tell() < end:
            self.reader.seek(end)

    def run(self, chunks: Iterable[bytes]) -> ExtractReport:
        self.reader._chunks = iter(chunks)
        try:
            tar = tarfile.TarFile(fileobj=self.reader, mode="r")  # type: ignore[arg-type]  # never decompresses
            entries = 0
            while (member := tar.next()) is not None:
                self.reader.header_bytes = 0
                entries += 1
                if entries > self.max_files:
                    raise ArchiveError(
                        f"the archive holds more than {self.max_files} entries (executor.max_collect_files)")
                rel = _relative(member.name, self.strip)
                if member.isreg():
                    self.count_bytes(member.size)
                if rel is None:
                    continue
                why = self.one(tar, member, rel)
                if why:
                    self.report.rejected.append(f"{rel}: {why}")
                    logger.warning("not copied back: %s: %s", rel, why)
                if member.isreg():
                    self.skip_data(member)
        except tarfile.TarError as e:
            raise ArchiveError(f"the archive from the sandbox is not a valid tar stream: {e}") from None
        return self.report

    def one(self, tar: tarfile.TarFile, member: tarfile.TarInfo, rel: str) -> str | None:
        """Write one entry; return why it was rejected, or None."""
        try:
            if member.isreg():
                if member.issparse():
                    return "sparse files are not copied back"
                if self.keep is not None and self.keep(rel):
                    self.report.kept.append(rel)
                    return None
                self.reader.in_data = True
                try:
                    _write_file(self.root, rel, self.data(tar, member), member.size, (member.mode & 0o777) | 0o600)
                finally:
                    self.reader.in_data = False
                self.extracted.add(rel)
                self.report.written.append(rel)
                self.report.files += 1
            elif member.isdir():
                _make_dir(self.root, rel, (member.mode & 0o777) | 0o700)
                self.report.directories += 1
            elif member.issym():
                if not stays_inside(rel, member.linkname):
                    return f"a symlink pointing out of the workspace ({member.linkname[:200]!r})"
                _make_symlink(self.root, rel, member.linkname)
                self.report.links += 1
            elif member.islnk():
                return self.hard_link(rel, member.linkname)
            else:
                return "not a regular file, folder or link (a device, FIFO or other special file)"
        except OSError as e:
            if e.errno in _REJECTABLE:
                return f"cannot be written safely ({e.strerror})"
            raise ArchiveError(f"Cannot write {rel} into {self.root}: {e}") from e
        return None

    def hard_link(self, rel: str, linkname: str) -> str | None:
        """A hard link to a file of this archive becomes a copy of it; any other is rejected."""
        try:
            target = _relative(linkname, self.strip)
        except ArchiveError:
            target = None
        if target is None or target not in self.extracted:
            return f"a hard link to something outside the archive ({linkname[:200]!r})"
        fd = open_beneath(self.root, target, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb", buffering=0) as src:
            st = os.fstat(src.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
                return "a hard link to something that is not a plain file"
            self.count_bytes(st.st_size)
            _write_file(self.root, rel, src, st.st_size, stat.S_IMODE(st.st_mode) | 0o600)
        self.extracted.add(rel)
        self.report.written.append(rel)
        self.report.files += 1
        return None


def extract_archive(
    chunks: Iterable[bytes],
    root: Path,
    *,
    max_bytes: int,
    max_files: int,
    strip: str | None = None,
    keep: Callable[[str], bool] | None = None,
) -> ExtractReport:
    """Extract a tar stream (an iterable of byte chunks) into ``root`` safely; see the module docstring.

    ``strip``: the top folder every name must be under (removed). ``keep(rel)``:
    True to leave the host's file at ``rel`` as it is. Raises ``ArchiveError``
    for a hostile or oversized archive; what was written before it stays (all of it inside ``root``).
    """
    return _Extractor(root, max_bytes=max_bytes, max_files=max_files, strip=strip, keep=keep).run(chunks)
