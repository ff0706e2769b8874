"""Handing a run folder to the sandbox's user and back, without ever leaving the folder.

When the orchestrator runs as root, the agent still runs as uid 1000 (the CLI refuses
``bypassPermissions`` as root, and root in a container is one bug from the host): the
bind-mounted workspace is handed to 1000 before the run and back afterwards. Both
walks use directory descriptors and no-follow opens, one descriptor at a time (so no
shape of tree stops them), so a link the agent planted never leads the host anywhere
else, and the way back drops setuid/setgid bits.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from fsrlm.executors.docker import hardening
from fsrlm.safe_fs import walk_tree

logger = logging.getLogger(__name__)


def sandbox_user() -> tuple[int, int]:
    """The uid:gid the agent runs as."""
    if os.geteuid() == 0:
        return hardening.SANDBOX_UID, hardening.SANDBOX_GID
    return os.getuid(), os.getgid()


def chown_tree(root: Path, uid: int, gid: int, *, drop_setid: bool = False) -> None:
    """``chown -R --no-dereference`` that cannot be tricked into leaving ``root``.

    Walks with directory descriptors (``safe_fs.walk_tree``: ``O_NOFOLLOW`` at every
    step, one descriptor at a time however deep or wide the tree), changes symlinks
    themselves, and skips files with more than one hard link (they may be shared with
    a file outside the workspace). With ``drop_setid`` (handing a workspace back),
    regular files not owned by root also lose their setuid/setgid bits, hard-linked
    ones included: the sandbox must not leave a setuid executable of its uid on the host.
    """
    top = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.chown(top, uid, gid)
        for entry in walk_tree(top):
            st = entry.st
            try:
                if entry.kind == "enter":
                    os.chown(entry.fd, uid, gid)
                elif entry.kind == "file":
                    if drop_setid and stat.S_ISREG(st.st_mode) and st.st_mode & _SETID and st.st_uid != 0:
                        _drop_setid(entry.dir_fd, entry.name)
                    if st.st_nlink > 1 and not stat.S_ISLNK(st.st_mode):
                        logger.debug("not changing the owner of %s: it has hard links", entry.rel)
                    else:
                        os.chown(entry.name, uid, gid, dir_fd=entry.dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
    finally:
        os.close(top)


_SETID = stat.S_ISUID | stat.S_ISGID


def _drop_setid(dir_fd: int, name: str) -> None:
    """Clear the setuid/setgid bits of the regular file ``name``, never through a link."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as e:
        logger.warning("could not clear the setuid bits of %s: %s", name, e)
        return
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_uid != 0:
            os.fchmod(fd, stat.S_IMODE(st.st_mode) & ~_SETID)
    finally:
        os.close(fd)


def give_back(workspace: Path, uid: int, gid: int) -> None:
    """Hand the run folder back to ``uid:gid`` after the run, clearing setuid/setgid bits."""
    if workspace.is_dir():
        chown_tree(workspace, uid, gid, drop_setid=True)
