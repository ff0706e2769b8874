"""The run folder: the agent's working memory on disk.

A user-given ``workspace_dir`` is a *parent*: each run gets its own subfolder
and nothing that was there before is touched. Input is streamed to disk, so a
1 GB input is never held in memory twice.

Where run folders go: ``<parent>/<run id>/`` is the workspace (the sandbox can
write all of it); the runs nested under it (``rlm_query``) go to
``<parent>/<run id>.nested/<child id>/``, a private folder beside it that no
sandbox can reach, so a sandbox can never choose where the host creates one.
Without ``workspace_dir``, ``<parent>`` is a private temp folder of its own.
The host creates and fills a run folder only through directory descriptors
(``fsrlm.safe_fs``) and remembers its identity (device and inode), which the
executors check before the agent starts.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import IO, Any

from fsrlm.errors import InputError, WorkspaceError
from fsrlm.safe_fs import (
    DirIdentity,
    copy_tree_beneath,
    create_beneath,
    identity_of,
    make_dirs_beneath,
    make_private_dir,
    open_beneath,
    open_private_dir,
    read_text_beneath,
    remove_tree,
    write_beneath,
)

logger = logging.getLogger(__name__)

INLINE_LIMIT = 8 * 1024  # inputs up to this size are shown to the agent in full
PREVIEW_HEAD = 3000
PREVIEW_TAIL = 1500
LAYOUT = ("input/attachments", "state", "cache/llm", "scratch/scripts", "output", "tools", ".agent")
NESTED_SUFFIX = ".nested"  # <run>.nested/ beside a run folder holds the runs nested under it
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")  # what new_run_id makes: no dots, no slashes

InputLike = str | bytes | os.PathLike | IO[bytes] | IO[str]


def sanitize_attachment_name(name: str) -> str:
    """A safe single file name: no directories, no ``..``, no leading dot."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = _SAFE_NAME.sub("_", base).strip("._")
    if not base:
        raise InputError(f"attachment name {name!r} has no usable characters; give it a plain file name")
    return base[:200]


def _stream_into(out: IO[bytes], content: InputLike, what: str, file_what: str) -> None:
    """Copy text, bytes, a path or a file object into ``out`` in blocks (never whole in memory)."""
    if isinstance(content, str):
        out.write(content.encode("utf-8"))
    elif isinstance(content, bytes):
        out.write(content)
    elif isinstance(content, os.PathLike):
        try:
            with open(content, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
        except OSError as e:
            raise InputError(f"cannot read {file_what} {os.fspath(content)}: {e.strerror}") from None
    elif hasattr(content, "read"):
        while block := content.read(1 << 20):
            out.write(block.encode("utf-8") if isinstance(block, str) else block)
    else:
        raise InputError(f"{what} must be text, bytes, a path or a file, not {type(content).__name__}")


def _package_dir(package: str) -> Path:
    return Path(str(resources.files(package)))


def nested_folder(root: Path) -> Path:
    """Where the runs nested under the run folder ``root`` live (beside it, out of every sandbox's reach)."""
    return root.parent / f"{root.name}{NESTED_SUFFIX}"


class Workspace:
    def __init__(self, root: Path, run_id: str, *, owned: bool, identity: DirIdentity | None = None) -> None:
        self.root = root
        self.run_id = run_id
        self.owned = owned  # True when we created the parent folder too (temp dir)
        self.identity = identity if identity is not None else identity_of(root)
        self.input_bytes = 0  # the size of input/prompt.md, once written

    # -- creation -----------------------------------------------------------

    @classmethod
    def create(cls, run_id: str, parent: Path | None = None) -> Workspace:
        """A new run folder in ``parent`` (the user's ``workspace_dir``; made if missing), or in a temp folder."""
        try:
            if parent is None:
                parent = Path(tempfile.mkdtemp(prefix=f"fsrlm-{run_id}-"))  # private (0700), ours alone
                owned = True
            else:
                # The user's own folder (configuration), never one a sandbox can write.
                parent = parent.expanduser().resolve()
                parent.mkdir(parents=True, exist_ok=True)
                owned = False
        except OSError as e:
            raise WorkspaceError(f"cannot create the run folder under {parent or tempfile.gettempdir()}: {e}") from None
        return cls._make(parent, run_id, owned=owned)

    def create_nested(self, run_id: str) -> Workspace:
        """A run folder for a run nested under this one, in ``<root>.nested/`` (made private on first use)."""
        folder = nested_folder(self.root)
        try:
            try:
                make_private_dir(folder.parent, folder.name)
            except FileExistsError:
                open_private_dir(folder.parent, folder.name)  # ours and private, or WorkspaceError
        except OSError as e:
            raise WorkspaceError(f"cannot create the folder of nested runs {folder}: {e}") from None
        return self._make(folder, run_id, owned=False)

    @classmethod
    def _make(cls, parent: Path, run_id: str, *, owned: bool) -> Workspace:
        if not _RUN_ID.fullmatch(run_id):
            raise WorkspaceError(f"invalid run id {run_id!r}")
        try:
            # Never reuses (and so never wipes) an existing folder. Private, like a temp dir:
            # other users must not reach what the sandbox wrote (e.g. an executable with setuid bits).
            identity = make_private_dir(parent, run_id)
        except FileExistsError:
            raise WorkspaceError(f"run folder {parent}/{run_id} already exists; pick another run id") from None
        except OSError as e:
            raise WorkspaceError(f"cannot create the run folder under {parent}: {e}") from None
        ws = cls(parent / run_id, run_id, owned=owned, identity=identity)
        try:
            for sub in LAYOUT:
                make_dirs_beneath(ws.root, sub)
            ws._install_template()
        except OSError as e:
            ws.remove()
            raise WorkspaceError(f"cannot fill the run folder {ws.root}: {e}") from None
        return ws

    @classmethod
    def open(cls, root: Path) -> Workspace:
        """An existing run folder. Its state/job.json was writable by the agent: nothing in it is trusted."""
        root = root.expanduser().resolve()
        text = read_text_beneath(root, "state/job.json", 1 << 20) if root.is_dir() else None
        if text is None:
            raise WorkspaceError(f"{root} is not an fsRLM run folder (no state/job.json)")
        try:
            run_id = json.loads(text).get("run_id") or root.name
        except (ValueError, AttributeError):
            raise WorkspaceError(f"{root}/state/job.json is not a JSON object") from None
        if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
            raise WorkspaceError(f"{root}/state/job.json names no valid run id (got {str(run_id)[:80]!r})")
        return cls(root, run_id, owned=False)

    def _install_template(self) -> None:
        template = _package_dir("fsrlm.workspace_template")
        copy_tree_beneath(template / ".claude", self.root, ".claude")
        for item in sorted(_package_dir("fsrlm.tools.workspace").iterdir()):  # the agent's tools, all of them
            if item.suffix in (".py", ".md") and item.name != "__init__.py":
                with item.open("rb") as src, create_beneath(self.root, f"tools/{item.name}") as out:
                    shutil.copyfileobj(src, out)

    # -- input --------------------------------------------------------------

    def write_prompt(self, prompt: InputLike) -> int:
        """Stream ``prompt`` to ``input/prompt.md``; return its size in bytes."""
        with create_beneath(self.root, "input/prompt.md", exclusive=False) as out:
            _stream_into(out, prompt, "prompt", "input file")
            out.flush()
            self.input_bytes = os.fstat(out.fileno()).st_size
            return self.input_bytes

    def write_messages(self, messages: list[Mapping[str, Any]]) -> str:
        """Save messages and a readable transcript (``input/prompt.md``); return the last user message's text."""
        if not isinstance(messages, list) or not messages:
            raise InputError("messages must be a non-empty list of {'role': ..., 'content': ...} objects")
        transcript: list[str] = []
        image_count = 0
        last_user = ""
        for i, message in enumerate(messages):
            if not isinstance(message, Mapping) or message.get("role") not in ("user", "assistant"):
                raise InputError(f"messages[{i}] must be an object with role 'user' or 'assistant'")
            content = message.get("content")
            parts: list[str] = []
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                for j, block in enumerate(content):
                    kind = block.get("type") if isinstance(block, Mapping) else None
                    if kind == "text":
                        parts.append(str(block.get("text", "")))
                    elif kind == "image":
                        image_count += 1
                        parts.append(f"[image: {self._save_image(block, image_count, i, j)}]")
                    elif kind == "document" and isinstance(block.get("source"), Mapping):
                        parts.append(str(block["source"].get("data", "")))
                    else:
                        raise InputError(f"messages[{i}].content[{j}] has unsupported type {kind!r}; "
                                         "use text, image or document blocks")
            else:
                raise InputError(f"messages[{i}].content must be a string or a list of content blocks")
            text = "\n\n".join(parts)
            transcript.append(f"## {message['role']}\n\n{text}\n")
            if message["role"] == "user":
                last_user = text
        write_beneath(self.root, "input/messages.json", json.dumps(messages, indent=1, default=str).encode())
        self.input_bytes = self.write_prompt("\n".join(transcript))
        return last_user

    def _save_image(self, block: Mapping[str, Any], n: int, i: int, j: int) -> str:
        source = block.get("source") or {}
        if source.get("type") != "base64":
            return f"image {n} (not embedded: {source.get('type', 'unknown')} source)"
        ext = {"image/png": "png", "image/jpeg": "jpg", "image/gif": "gif", "image/webp": "webp"}.get(
            source.get("media_type", ""), "bin")
        try:
            data = base64.b64decode(source.get("data", ""), validate=True)
        except ValueError:
            raise InputError(f"messages[{i}].content[{j}] holds invalid base64 image data") from None
        name = f"image-{n}.{ext}"
        with create_beneath(self.root, f"input/attachments/{name}", exclusive=False) as out:
            out.write(data)
        return f"input/attachments/{name}"

    def write_attachments(self, attachments: Mapping[str, InputLike]) -> list[str]:
        names: list[str] = []
        for raw_name, content in attachments.items():
            name = sanitize_attachment_name(raw_name)
            if name in names:
                raise InputError(f"two attachments map to the same file name {name!r}; rename one")
            try:
                out = create_beneath(self.root, f"input/attachments/{name}")  # never overwrite, e.g. an image
            except FileExistsError:
                raise InputError(f"attachment {raw_name!r} maps to {name!r}, which already exists in "
                                 "input/attachments/; rename it") from None
            with out:
                _stream_into(out, content, f"attachment {raw_name!r}", f"attachment file for {raw_name!r}")
            names.append(name)
        return names

    def write_text(self, rel: str, text: str) -> None:
        write_beneath(self.root, rel, text.encode("utf-8"))

    def write_job(self, job: Mapping[str, Any]) -> None:
        self.write_text("state/job.json", json.dumps({**job, "written_at": time.time()}, indent=1, default=str))

    # -- reading what the agent produced (never through a link) --------------

    def read(self, rel: str, max_bytes: int = 16 * 1024 * 1024) -> str | None:
        return read_text_beneath(self.root, rel, max_bytes)

    def input_preview(self, size: int) -> tuple[str, str]:
        """First and last bytes of the input, decoded leniently; all of it (as head) when inline."""
        with os.fdopen(open_beneath(self.root, "input/prompt.md", os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
            if size <= INLINE_LIMIT:  # shown "in full": the middle must not be dropped
                return f.read(INLINE_LIMIT).decode("utf-8", "replace"), ""
            head = f.read(PREVIEW_HEAD)
            tail = b""
            if size > PREVIEW_HEAD:
                f.seek(max(PREVIEW_HEAD, size - PREVIEW_TAIL))
                tail = f.read(PREVIEW_TAIL)
        return head.decode("utf-8", "replace"), tail.decode("utf-8", "replace")

    def artifacts(self, max_items: int = 10_000, max_bytes: int = 32 * 1024 * 1024) -> list[dict[str, Any]]:
        text = self.read("state/artifacts.jsonl", max_bytes) or ""
        items: list[dict[str, Any]] = []
        for line in text.splitlines():
            if len(items) >= max_items:
                break
            try:
                value = json.loads(line)
            except ValueError:
                continue
            items.append(value if isinstance(value, dict) else {"value": value})
        return items

    def remove(self) -> None:
        """Remove the run folder and the runs nested under it (and the temp parent, when it is ours)."""
        parent = self.root.parent
        try:
            if self.owned:
                remove_tree(parent.parent, parent.name)
                return
            remove_tree(parent, self.root.name)
            remove_tree(parent, nested_folder(self.root).name)
        except OSError as e:
            logger.warning("could not remove the run folder %s completely: %s", self.root, e)
