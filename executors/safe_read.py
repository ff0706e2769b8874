"""Read a file the agent wrote without trusting the workspace.

The agent controls everything under its workspace: it can turn
``output/answer.md`` into a symlink to ``/etc/shadow``, a hard link to a host
file, a FIFO that blocks forever, or a 50 GB file. ``read_text_in_workspace``
walks the path one component at a time with ``O_NOFOLLOW`` relative to the
parent directory's descriptor, so no symlink anywhere in the path is followed,
refuses anything that is not a regular file with a single link, and reads at
most ``max_bytes``. Used for results of every executor, isolating or not.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path, PurePosixPath

logger = logging.getLogger(__name__)

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO must not block the open


class UnsafePath(ValueError):
    """The path is not a plain relative path inside the workspace."""


def _parts(rel: str) -> list[str]:
    path = PurePosixPath(rel)
    if not rel or path.is_absolute() or "\\" in rel or "\0" in rel:
        raise UnsafePath(f"not a relative workspace path: {rel!r}")
    parts = [p for p in path.parts if p != "."]
    if not parts or any(p == ".." for p in parts):
        raise UnsafePath(f"not a relative workspace path: {rel!r}")
    return parts


def read_bytes_in_workspace(workspace: Path, rel: str, max_bytes: int) -> bytes | None:
    """Return at most ``max_bytes`` of ``workspace/rel``, or None if missing or refused.

    Refused (logged as a warning, returns None): a symlink in any component of
    ``rel``, a directory, FIFO, socket or device, a file with more than one hard
    link. ``workspace`` itself is trusted (the orchestrator made it).
    """
    if max_bytes < 0:
        raise ValueError("max_bytes must be >= 0")
    parts = _parts(rel)
    try:
        dir_fd = os.open(workspace, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
    except FileNotFoundError:
        return None
    fds = [dir_fd]
    try:
        for name in parts[:-1]:
            try:
                fds.append(os.open(name, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC, dir_fd=fds[-1]))
            except FileNotFoundError:
                return None
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    logger.warning("refusing to read %s: %s is a symlink or not a folder", rel, name)
                    return None
                raise
        try:
            fd = os.open(parts[-1], os.O_RDONLY | _O_NOFOLLOW | _O_NONBLOCK | _O_CLOEXEC, dir_fd=fds[-1])
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.EMLINK, errno.ENXIO, errno.EISDIR):
                logger.warning("refusing to read %s: it is a symlink or not a regular file", rel)
                return None
            raise
        fds.append(fd)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            logger.warning("refusing to read %s: not a regular file", rel)
            return None
        if st.st_nlink > 1:
            logger.warning("refusing to read %s: it has %d hard links", rel, st.st_nlink)
            return None
        chunks = []
        left = max_bytes
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) == max_bytes and st.st_size > max_bytes:
            logger.warning("%s is %d bytes; read only the first %d", rel, st.st_size, max_bytes)
        return data
    finally:
        for fd in fds:
            os.close(fd)


def read_text_in_workspace(workspace: Path, rel: str, max_bytes: int) -> str | None:
    """Like ``read_bytes_in_workspace``, decoded as UTF-8 (invalid bytes replaced)."""
    data = read_bytes_in_workspace(workspace, rel, max_bytes)
    return None if data is None else data.decode("utf-8", errors="replace")
