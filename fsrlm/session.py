"""The CLI's saved session, made to take its system prompt from the host when a run is resumed.

``fsrlm resume`` continues the CLI's conversation from its transcript
(``.agent/projects/<project>/<session id>.jsonl``), which lives in the workspace and
so is the agent's to rewrite. The CLI saves the system prompt in that transcript
(a ``prompt_snapshot`` attachment) and, on ``--resume``, uses the saved one instead
of the one on its command line. So before a resumed agent starts, the host removes
those snapshots (re-linking the lines after them to the line before): the CLI then
builds its system prompt afresh, with fsRLM's instructions and the user's system
prompt from the host-side run record (``fsrlm.runstate``). The rest of the
transcript — the conversation — stays as the agent left it: a resumed run is no
more trustworthy than the run it continues.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from pathlib import Path

from fsrlm.errors import WorkspaceError
from fsrlm.safe_fs import open_beneath, write_beneath

logger = logging.getLogger(__name__)

PROJECTS = ".agent/projects"
MAX_TRANSCRIPT_BYTES = 512 * 1024 * 1024
_SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")


def _names(root: Path, rel: str) -> list[str]:
    try:
        fd = open_beneath(root, rel, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return []
    try:
        return sorted(os.listdir(fd))
    finally:
        os.close(fd)


def _read(root: Path, rel: str) -> bytes | None:
    try:
        fd = open_beneath(root, rel, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None  # absent, behind a link, a FIFO
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
            return None
        if st.st_size > MAX_TRANSCRIPT_BYTES:
            raise WorkspaceError(f"the session transcript {rel} is larger than {MAX_TRANSCRIPT_BYTES} bytes; "
                                 "it cannot be checked for resume")
        return f.read(MAX_TRANSCRIPT_BYTES + 1)


def _is_snapshot(entry: object) -> bool:
    if not isinstance(entry, dict) or entry.get("type") != "attachment":
        return False
    attachment = entry.get("attachment")
    return isinstance(attachment, dict) and (attachment.get("type") == "prompt_snapshot"
                                             or "systemPrompt" in attachment)


def drop_saved_system_prompts(workspace: Path, session_id: str) -> int:
    """Remove every saved system prompt from the session's transcript(s); return how many were removed."""
    if not _SESSION_ID.fullmatch(session_id):
        raise WorkspaceError(f"invalid session id {session_id[:80]!r} in the run record")
    removed = 0
    for project in _names(workspace, PROJECTS):
        rel = f"{PROJECTS}/{project}/{session_id}.jsonl"
        data = _read(workspace, rel)
        if data is None:
            continue
        lines = data.split(b"\n")
        parent_of: dict[str, object] = {}  # uuid of a removed snapshot -> its parent
        kept: list[bytes] = []
        for line in lines:
            try:
                entry = json.loads(line) if line.strip() else None
            except ValueError:
                kept.append(line)
                continue
            if _is_snapshot(entry):
                assert isinstance(entry, dict)
                parent_of[str(entry.get("uuid"))] = entry.get("parentUuid")
                removed += 1
                continue
            if isinstance(entry, dict) and isinstance(entry.get("parentUuid"), str) and entry["parentUuid"] in parent_of:
                parent = entry["parentUuid"]
                while isinstance(parent, str) and parent in parent_of:  # snapshots one after another
                    parent = parent_of[parent]
                entry["parentUuid"] = parent
                line = json.dumps(entry, ensure_ascii=False, separators=(",", ":")).encode()
            kept.append(line)
        if parent_of:
            write_beneath(workspace, rel, b"\n".join(kept))
    logger.debug("removed %d saved system prompt(s) from session %s", removed, session_id)
    return removed
