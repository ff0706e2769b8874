"""How a sandbox reaches its run's broker (the broker's own type, handed to every executor), and
finding the socket folders of brokers that are gone (``fsrlm gc``)."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from pydantic import BaseModel, ConfigDict

SOCKET_DIR_PREFIX = "fsrlm-broker-"  # a broker's private socket folder in the temp dir


class BrokerSocket:
    """The broker's unix socket: bound and listening in a private 0700 folder of its own.

    Made before the broker starts (by the broker itself, or ahead of time by a warm
    pool, so that a sandbox can mount it before the run's broker exists: connections
    wait in the backlog until the broker accepts them). Closing it removes the folder.
    """

    def __init__(self, folder: Path, sock: socket.socket) -> None:
        self.folder = folder
        self.sock = sock
        self.path = folder / "broker.sock"

    @classmethod
    def create(cls, backlog: int = 1024) -> BrokerSocket:
        folder = Path(tempfile.mkdtemp(prefix=SOCKET_DIR_PREFIX))  # mode 0700
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(folder / "broker.sock"))
            os.chmod(folder / "broker.sock", 0o600)
            sock.listen(backlog)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return cls(folder, sock)

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.folder, ignore_errors=True)


class BrokerEndpoint(BaseModel):
    """How a sandbox can reach the run's broker on the host.

    ``unix_socket`` always exists (mode 0600, in a private 0700 folder).
    ``open_tcp`` asks the broker to also listen on a loopback port, for
    backends whose agent runs on the host itself.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    unix_socket: Path
    open_tcp: Callable[[], Awaitable[int]]


def remove_stale_socket_dirs(min_age_seconds: float = 60.0) -> list[str]:
    """Remove this user's broker socket folders whose broker is gone (a killed orchestrator's); return them.

    A folder counts as stale when its socket refuses connections, or has no socket
    and is older than ``min_age_seconds`` (a broker may be between making its
    folder and listening).
    """
    removed = []
    for folder in Path(tempfile.gettempdir()).glob(SOCKET_DIR_PREFIX + "*"):
        try:
            st = folder.lstat()
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            continue
        alive = _listening(folder / "broker.sock")
        if alive or (alive is None and time.time() - st.st_mtime < min_age_seconds):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(str(folder))
    return removed


def _listening(path: Path) -> bool | None:
    """True: a broker answers there; False: the socket is dead; None: there is no socket."""
    if not path.exists():
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        try:
            s.connect(str(path))
        except ConnectionRefusedError:
            return False
        except OSError:
            return True  # busy (a full backlog) or unreadable: not ours to judge dead
    return True
