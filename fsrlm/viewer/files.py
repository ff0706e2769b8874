"""Reading a workspace for the viewer, never through a link.

The agent controls every file in its workspace. Whole files are read with
``safe_fs.read_text_beneath``; the two things it does not do are here, built
on the same ``open_beneath`` walk with the same refusals (symlinks anywhere on
the path, hard links, non-regular files): reading a growing file from an
offset (tailing ``state/events.jsonl``) and listing a folder
(``scratch/scripts/``).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from fsrlm.safe_fs import open_beneath

MAX_LOG_BYTES = 64 * 1024 * 1024


def read_bytes_from(root: Path, rel: str, offset: int, max_bytes: int) -> tuple[bytes, int] | None:
    """Up to ``max_bytes`` of ``root/rel`` from ``offset``, and the file's size; None if absent or unsafe."""
    try:
        fd = open_beneath(root, rel, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:  # absent, a link on the way, a FIFO, a bad path (WorkspaceError is an OSError)
        return None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
            return None
        if offset > st.st_size:
            return b"", st.st_size
        f.seek(offset)
        return f.read(max_bytes), st.st_size


def list_names(root: Path, rel: str, suffix: str, limit: int) -> list[str]:
    """Sorted names in the folder ``root/rel`` ending with ``suffix`` (no hidden names), at most ``limit``."""
    try:
        fd = open_beneath(root, rel, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return []
    try:
        names = os.listdir(fd)
    finally:
        os.close(fd)
    return sorted(n for n in names if n.endswith(suffix) and not n.startswith("."))[:limit]


class LineTail:
    """The complete lines of a growing file, numbered from 0, each read once.

    ``read()`` returns the lines added since the last call as ``(number, bytes)``;
    a line still being written (no newline yet) waits for the next call. When the
    file got shorter (replaced or truncated), ``reset`` is set and numbering
    starts again from 0.
    """

    def __init__(self, root: Path, rel: str, max_bytes: int = MAX_LOG_BYTES) -> None:
        self.root = root
        self.rel = rel
        self.max_bytes = max_bytes
        self.offset = 0
        self.count = 0  # lines consumed so far = the number of the next line
        self.reset = False

    def read(self) -> list[tuple[int, bytes]]:
        self.reset = False
        got = read_bytes_from(self.root, self.rel, self.offset, self.max_bytes)
        if got is None:
            return []
        data, size = got
        if size < self.offset:
            self.offset = self.count = 0
            self.reset = True
            got = read_bytes_from(self.root, self.rel, 0, self.max_bytes)
            if got is None:
                return []
            data, size = got
        end = data.rfind(b"\n")
        if end < 0:
            if len(data) < self.max_bytes:
                return []
            end = len(data) - 1  # one line longer than max_bytes: give it up as a (broken) line
        chunk = data[: end + 1]
        lines = chunk.split(b"\n")
        if chunk.endswith(b"\n"):
            lines.pop()
        self.offset += end + 1
        numbered = list(enumerate(lines, start=self.count))
        self.count += len(lines)
        return numbered
