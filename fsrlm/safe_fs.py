"""Create, fill, read, walk and remove run folders without ever following a link out of them.

The agent controls every path in its workspace: it can plant a symlink where the
orchestrator or broker will later write (``state/subcalls.jsonl``) or read
(``output/answer.md``). Every host-side access to the workspace goes through
``open_beneath``, which walks the path one component at a time with
``O_NOFOLLOW`` relative to the parent's descriptor, so no component can be a
link, and refuses hard links to regular files when reading.

A run folder itself is made with ``make_private_dir`` (one ``mkdirat`` in a
folder no sandbox can write, then opened without following a link) and
known afterwards by its ``DirIdentity`` (device and inode), so an executor can
check that what it mounts is the folder the host created. ``walk_tree`` visits a
tree holding one directory descriptor at a time (however deep or wide the agent
made it) and ``remove_tree`` removes one on top of it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal, NamedTuple

from fsrlm.errors import WorkspaceError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _parts(rel: str) -> list[str]:
    parts = [p for p in Path(rel).parts if p not in ("", ".")]
    if not parts or Path(rel).is_absolute() or ".." in parts:
        raise WorkspaceError(f"refusing path {rel!r}: must be relative and stay inside the workspace")
    return parts


def open_beneath(root: Path, rel: str, flags: int, mode: int = 0o644, *, make_dirs: bool = False) -> int:
    """Open ``root/rel`` with ``flags``, following no symlink on the way; return an fd."""
    parts = _parts(rel)
    fd = os.open(root, _DIR_FLAGS)
    try:
        for name in parts[:-1]:
            try:
                nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not make_dirs:
                    raise
                os.mkdir(name, 0o755, dir_fd=fd)
                nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=fd)
    finally:
        os.close(fd)


def read_text_beneath(root: Path, rel: str, max_bytes: int) -> str | None:
    """Read a regular file inside ``root`` (at most ``max_bytes``); None if absent or unsafe.

    Symlinks anywhere on the path, hard links (a second name for a file that may
    live outside the workspace) and non-regular files (FIFOs, devices) are
    refused rather than read.
    """
    try:
        fd = open_beneath(root, rel, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENXIO):
            return None
        raise WorkspaceError(f"cannot read {rel} in {root}: {e.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:  # checked before fdopen, which rejects directories
        os.close(fd)
        return None
    with os.fdopen(fd, "rb") as f:
        data = f.read(max_bytes + 1)
    text = data[:max_bytes].decode("utf-8", errors="replace")
    if len(data) > max_bytes:
        text += f"\n[fsrlm: truncated at {max_bytes} bytes]"
    return text


def append_beneath(root: Path, rel: str, data: bytes) -> None:
    """Append ``data`` to ``root/rel`` (created if missing) without following links."""
    # O_NONBLOCK: a FIFO planted by the agent fails (ENXIO) instead of blocking the broker forever.
    fd = open_beneath(root, rel, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK, make_dirs=True)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
            raise WorkspaceError(f"refusing to append to {rel}: not a plain file")
        os.write(fd, data)
    finally:
        os.close(fd)


class BeneathAppender:
    """``append_beneath`` for a log written line by line: the file is opened once, not per line.

    What was opened stays what is written: a link or FIFO the agent puts in its place later is never
    followed. A file the agent deleted (no name left) or that went bad is opened afresh, as
    ``append_beneath`` would, on the next line.
    """

    def __init__(self, root: Path, rel: str) -> None:
        self.root, self.rel = root, rel
        self._fd: int | None = None

    def append(self, data: bytes) -> None:
        if self._fd is not None:
            try:
                if os.fstat(self._fd).st_nlink == 1:
                    os.write(self._fd, data)
                    return
            except OSError:
                pass
            self.close()
        fd = open_beneath(self.root, self.rel, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK,
                          make_dirs=True)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
                raise WorkspaceError(f"refusing to append to {self.rel}: not a plain file")
            os.write(fd, data)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def write_beneath(root: Path, rel: str, data: bytes) -> None:
    """Write ``root/rel`` atomically (temp file + rename), never through a link."""
    parts = _parts(rel)
    parent = "/".join(parts[:-1])
    # A random part: a name the agent planted (it can guess the pid) cannot block every write.
    tmp_name = f".{parts[-1]}.{os.getpid()}.{secrets.token_hex(6)}.tmp"
    tmp_rel = f"{parent}/{tmp_name}" if parent else tmp_name
    fd = open_beneath(root, tmp_rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL, make_dirs=True)
    try:
        dir_fd = open_beneath(root, parent, _DIR_FLAGS) if parent else os.open(root, _DIR_FLAGS)
    except BaseException:
        os.close(fd)
        raise
    try:
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp_name, parts[-1], src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):  # never leave a half-written temp file behind
            os.unlink(tmp_name, dir_fd=dir_fd)
        raise
    finally:
        os.close(dir_fd)


def create_beneath(root: Path, rel: str, *, exclusive: bool = True, mode: int = 0o644) -> IO[bytes]:
    """A new regular file ``root/rel`` open for writing (parents made), never through a link.

    ``exclusive``: fail with ``FileExistsError`` when the name exists (whatever it is);
    otherwise an existing plain file is truncated and anything else refused.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = open_beneath(root, rel, flags, mode, make_dirs=True)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        os.close(fd)
        raise WorkspaceError(f"refusing to write {rel}: not a plain file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "wb")


def make_dirs_beneath(root: Path, rel: str, mode: int = 0o755) -> None:
    """``mkdir -p root/rel`` that creates and enters each folder by descriptor, never through a link."""
    os.close(_dir_beneath(root, rel, mode))


def _dir_beneath(root: Path, rel: str, mode: int) -> int:
    fd = os.open(root, _DIR_FLAGS)
    try:
        for name in _parts(rel):
            try:
                os.mkdir(name, mode, dir_fd=fd)
            except FileExistsError:
                pass
            nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)  # ELOOP/ENOTDIR when the name is a link or a file
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def copy_tree_beneath(source: Path, root: Path, rel: str) -> None:
    """Copy the trusted folder ``source`` (package data) to ``root/rel``, writing only through descriptors."""
    make_dirs_beneath(root, rel)
    for entry in sorted(os.scandir(source), key=lambda e: e.name):
        target = f"{rel}/{entry.name}"
        if entry.is_dir(follow_symlinks=False):
            copy_tree_beneath(Path(entry.path), root, target)
        elif entry.is_file(follow_symlinks=False):
            with open(entry.path, "rb") as src, create_beneath(root, target, exclusive=False) as out:
                shutil.copyfileobj(src, out, 1 << 20)


# -- run folders: made once, known by identity -------------------------------------------


class DirIdentity(NamedTuple):
    """A folder's device and inode: which folder it is, whatever path reaches it."""

    dev: int
    ino: int

    def __str__(self) -> str:
        return f"{self.dev}:{self.ino}"  # as `stat -c %d:%i` prints it

    @classmethod
    def of_fd(cls, fd: int) -> DirIdentity:
        st = os.fstat(fd)
        return cls(st.st_dev, st.st_ino)


def make_private_dir(parent: Path, name: str, mode: int = 0o700) -> DirIdentity:
    """Create the folder ``parent/name`` (``FileExistsError`` if the name is taken) and return its identity.

    ``parent`` must be a folder no sandbox can write (the user's ``workspace_dir``, or
    one made by this function): it is opened once and the new folder created and
    opened through its descriptor, so it is the one reopened, never a link put there.
    """
    if "/" in name or name in ("", ".", ".."):
        raise WorkspaceError(f"refusing folder name {name!r}")
    pfd = os.open(parent, _DIR_FLAGS)
    try:
        os.mkdir(name, mode, dir_fd=pfd)
        fd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
    finally:
        os.close(pfd)
    try:
        os.fchmod(fd, mode)  # whatever the umask
        return DirIdentity.of_fd(fd)
    finally:
        os.close(fd)


def open_private_dir(parent: Path, name: str) -> DirIdentity:
    """The identity of the existing folder ``parent/name`` if it is a real folder of ours, private to us.

    Raises ``WorkspaceError`` for a link, a file, or a folder someone else owns or can write.
    """
    pfd = os.open(parent, _DIR_FLAGS)
    try:
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise WorkspaceError(f"{parent}/{name} is not a folder (a link or a file); remove it") from None
            raise
    finally:
        os.close(pfd)
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise WorkspaceError(f"{parent}/{name} belongs to uid {st.st_uid} with mode "
                                 f"{oct(stat.S_IMODE(st.st_mode))}; it must be this user's and private (0700)")
        return DirIdentity(st.st_dev, st.st_ino)
    finally:
        os.close(fd)


def identity_of(path: Path) -> DirIdentity:
    """The identity of the folder ``path`` (its last component must not be a link)."""
    fd = os.open(path, _DIR_FLAGS)
    try:
        return DirIdentity.of_fd(fd)
    finally:
        os.close(fd)


def check_identity(path: Path, expected: DirIdentity) -> None:
    """``WorkspaceError`` unless ``path`` is (still) the folder with identity ``expected``."""
    try:
        actual = identity_of(path)
    except OSError as e:
        raise WorkspaceError(f"the run folder {path} is gone or replaced by a link ({e.strerror})") from None
    if actual != expected:
        raise WorkspaceError(f"{path} is not the run folder the host created (device:inode {actual}, "
                             f"expected {expected}); refusing to use it")


# -- walking and removing a tree -----------------------------------------------------------


@dataclass(frozen=True)
class TreeEntry:
    """One step of ``walk_tree``: ``dir_fd`` is the folder holding ``name`` (valid during the step only)."""

    kind: Literal["file", "enter", "leave"]  # a non-folder; a folder before its contents; the same after them
    dir_fd: int
    name: str
    rel: str
    st: os.stat_result
    fd: int = -1  # "enter": the folder itself, open


def walk_tree(root_fd: int, *, unlock: bool = False) -> Iterator[TreeEntry]:
    """Every entry below the open folder ``root_fd``, depth first, never following a link.

    One descriptor is open per step (plus ``root_fd``), so a tree thousands of folders deep
    or wide needs no more; the way back up is by ``..``, checked against the identity
    each folder had on the way down (``WorkspaceError`` if the tree moved meanwhile).
    ``unlock``: a folder this user cannot read or enter is made 0700 first (for removal).
    The caller may change or remove an entry during its step, not other entries.
    """
    # Each level: the folder's descriptor, its identity, its sub-folders still to visit, its path.
    fd = os.dup(root_fd)
    levels: list[tuple[DirIdentity, list[str], str]] = []
    try:
        pending = yield from _list_level(fd, "")
        levels.append((DirIdentity.of_fd(fd), pending, ""))
        while levels:
            ident, pending, rel = levels[-1]
            if pending:
                name = pending.pop()
                child_rel = f"{rel}/{name}" if rel else name
                try:
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    if not stat.S_ISDIR(st.st_mode):
                        continue  # replaced meanwhile; never followed
                    child = _open_dir(fd, name, unlock=unlock)
                except FileNotFoundError:
                    continue
                try:
                    yield TreeEntry("enter", fd, name, child_rel, st, child)
                    child_pending = yield from _list_level(child, child_rel)
                except BaseException:
                    os.close(child)
                    raise
                os.close(fd)
                fd = child
                levels.append((DirIdentity.of_fd(fd), child_pending, child_rel))
                continue
            levels.pop()
            if not levels:
                break
            up = os.open("..", _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = up
            if DirIdentity.of_fd(fd) != levels[-1][0]:
                raise WorkspaceError(f"the folder {levels[-1][2] or '.'} moved while it was walked")
            name = rel.rsplit("/", 1)[-1]
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            yield TreeEntry("leave", fd, name, rel, st)
    finally:
        os.close(fd)


def _list_level(fd: int, rel: str) -> Iterator[TreeEntry]:
    """Yield the non-folders of the open folder ``fd``; return the names of its sub-folders."""
    folders: list[str] = []
    for name in sorted(os.listdir(fd), reverse=True):
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if stat.S_ISDIR(st.st_mode):
            folders.append(name)
        else:
            yield TreeEntry("file", fd, name, f"{rel}/{name}" if rel else name, st)
    return folders


def _open_dir(dir_fd: int, name: str, *, unlock: bool) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except PermissionError:
        if not unlock:
            raise
    # A folder we own but may not read (mode 000): give ourselves access through an O_PATH
    # descriptor of that very folder (its /proc/self/fd entry names it, not a path).
    path_fd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        os.chmod(f"/proc/self/fd/{path_fd}", 0o700)
    finally:
        os.close(path_fd)
    return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


def remove_tree(parent: Path, name: str) -> None:
    """Remove ``parent/name`` and everything below it; never follows a link, whatever the tree's shape.

    A link is removed, not its target. Folders the agent locked (mode 000, no write bit)
    are unlocked first. ``parent`` must be a folder no sandbox can write. Missing: no-op.
    """
    pfd = os.open(parent, _DIR_FLAGS)
    try:
        try:
            st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=pfd)
            return
        top = _open_dir(pfd, name, unlock=True)
        try:
            _make_writable(top)
            for entry in walk_tree(top, unlock=True):
                if entry.kind == "file":
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.name, dir_fd=entry.dir_fd)
                elif entry.kind == "enter":
                    _make_writable(entry.fd)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.rmdir(entry.name, dir_fd=entry.dir_fd)
        finally:
            os.close(top)
        os.rmdir(name, dir_fd=pfd)
    finally:
        os.close(pfd)


def _make_writable(fd: int) -> None:
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    if mode & 0o700 != 0o700 and os.geteuid() != 0:
        os.fchmod(fd, mode | 0o700)
