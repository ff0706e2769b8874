"""A lock file that does not outlive its holder: ``with locked_file(path): ...``.

``flock`` on a file in the temp folder serialises work across processes (one
image build of a tag at a time). Leaving the file behind litters the temp
folder with one empty file per key (the tests ship images to a fresh loopback
port each session). Removing it safely takes the usual protocol: the holder
unlinks the file while it still holds the lock, and whoever locked a file
checks, once it has the lock, that the path still names that same file — if it
does not (the previous holder removed it), it starts again with a new one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def locked_file(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed, never through a link), removed on release."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                current = None
            mine = os.fstat(fd)
            if current is not None and (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
                break  # the path still names the file we locked
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the previous holder removed it: lock the new one
    try:
        yield
    finally:
        try:
            os.unlink(path)  # while still holding the lock, so no one else can be holding this file
        finally:
            os.close(fd)
