"""The CLI binary shared into the container, from a path that says nothing about this machine.

``share_cli`` bind-mounts this machine's copy of the Claude Code CLI over the image's
identical one (faster than reading 400 MB through the storage driver). A bind mount's
source path is visible inside the container (``/proc/self/mountinfo``), and the wheel's
own path names the user's home, virtualenv or checkout. So the binary is mounted from
a neutral place: a hard link (same inode, no copy; a copy when the link cannot be made)
named by its fingerprint, in ``/var/lib/fsrlm/cli/`` when the orchestrator is root, else
in ``/tmp/fsrlm-cli-<uid>/`` (made private, refused when someone else made it).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import secrets
import shutil
import stat
import time
from pathlib import Path

from fsrlm.errors import WorkspaceError
from fsrlm.safe_fs import make_private_dir, open_private_dir

logger = logging.getLogger(__name__)

ROOT_DIR = Path("/var/lib/fsrlm/cli")
ORPHAN_AGE_S = 3600.0  # a link or copy no installation holds, this old, is removed


def neutral_dir() -> Path:
    return ROOT_DIR if os.geteuid() == 0 else Path("/tmp") / f"fsrlm-cli-{os.geteuid()}"


def _fingerprint(st: os.stat_result) -> str:
    return hashlib.sha256(f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]


def _ensure_dir(folder: Path) -> None:
    if os.geteuid() == 0:
        folder.mkdir(mode=0o755, parents=True, exist_ok=True)  # a root-owned system path
        st = folder.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
            raise WorkspaceError(f"{folder} must be a folder owned by root and writable only by it")
        return
    try:
        make_private_dir(folder.parent, folder.name)
    except FileExistsError:
        open_private_dir(folder.parent, folder.name)


def neutral_cli(source: Path) -> Path | None:
    """A path of ``source``'s content under ``neutral_dir()``; None (no sharing) when none can be made."""
    folder = neutral_dir()
    try:
        st = source.stat()
        _ensure_dir(folder)
        target = folder / f"claude-{_fingerprint(st)}"
        try:
            have = target.lstat()
            if stat.S_ISREG(have.st_mode) and have.st_size == st.st_size and have.st_uid == os.geteuid():
                return target
        except FileNotFoundError:
            pass
        tmp = folder / f".claude-{secrets.token_hex(6)}.tmp"
        try:
            try:
                os.link(source, tmp)
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise
                shutil.copy2(source, tmp)
            os.chmod(tmp, 0o755)
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        _prune(folder, keep=target.name)
        return target
    except (OSError, WorkspaceError) as e:
        logger.warning("not sharing the CLI with the sandbox (the image's copy is used): %s", e)
        return None


def _prune(folder: Path, keep: str) -> None:
    """Remove links to CLI versions no installation holds any more (a link keeps their blocks allocated).

    Another installation on this machine (a second virtualenv, another checkout) shares the folder
    with a binary of its own: a link whose source still exists (two names on the inode) is in use, and
    so is a fresh copy (made where a hard link cannot be); only orphans an hour old are removed.
    """
    now = time.time()
    for entry in folder.iterdir():
        if entry.name == keep or not entry.name.startswith("claude-"):
            continue
        with contextlib.suppress(OSError):
            st = entry.lstat()
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and now - st.st_ctime > ORPHAN_AGE_S:
                entry.unlink()
