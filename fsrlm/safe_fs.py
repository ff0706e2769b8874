"""Open files inside a workspace without ever following a link out of it.

The agent controls every path in its workspace: it can plant a symlink where the
orchestrator or broker will later write (``state/subcalls.jsonl``) or read
(``output/answer.md``). Every host-side access to the workspace goes through
``open_beneath``, which walks the path one component at a time with
``O_NOFOLLOW`` relative to the parent's descriptor, so no component can be a
link, and refuses hard links to regular files when reading.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path

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
