"""Build the sandbox image, once, and never use a stale one.

``ensure_image`` assembles the build context (``images/sandbox/``, the
in-sandbox relay ``tools/relay.py`` with its framing module ``tools/mux.py``,
and the Claude Code CLI binary from the installed ``claude-agent-sdk`` wheel),
fingerprints it, and builds ``fsrlm-sandbox:<fsrlm version>-<fingerprint>``
labelled ``fsrlm.image-hash=<fingerprint>``. When an image with that tag and
fingerprint exists it returns at once; an image whose fingerprint differs is
rebuilt, never used. The tag names the content, so two checkouts of different
code never build over each other's image.

The base image (``BASE_IMAGE``, default ``python:3.11-slim-bookworm``) is used
when present, pulled when possible, and otherwise replaced by
``fsrlm-base:bookworm`` built from Debian packages by
``images/base/build-base.sh`` (for hosts that cannot reach a registry).

``fsrlm image build`` builds it and prints the tag.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import logging
import os
import subprocess
import tarfile
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from fsrlm.executors.bundled_cli import bundled_cli
from fsrlm.executors.docker.errors import EngineRef, docker_errors

from fsrlm.errors import ImageError, SandboxError
from fsrlm.locks import locked_file

logger = logging.getLogger(__name__)

IMAGE_REPO = "fsrlm-sandbox"
DEFAULT_BASE_IMAGE = "python:3.11-slim-bookworm"
LOCAL_BASE_IMAGE = "fsrlm-base:bookworm"
LABEL_IMAGE_HASH = "fsrlm.image-hash"
LABEL_BASE_IMAGE = "fsrlm.base-image"
PULL_TIMEOUT_SECONDS = 60.0
BASE_BUILD_TIMEOUT_SECONDS = 900.0

_process_lock = threading.Lock()


def fsrlm_version() -> str:
    try:
        return importlib.metadata.version("fsrlm")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


def default_tag(base_image: str | None = None) -> str:
    """``fsrlm-sandbox:<version>-<fingerprint>``: tagged by content, so two checkouts of different code
    (or two installs) never rebuild one tag over each other."""
    return f"{IMAGE_REPO}:{fsrlm_version()}-{expected_hash(base_image)[:12]}"


def _package_file(package: str, *parts: str) -> Path:
    return Path(str(resources.files(package).joinpath(*parts)))


def cli_binary() -> Path:
    """The Claude Code CLI bundled in the installed claude-agent-sdk wheel."""
    path = bundled_cli()
    if path is None:
        raise ImageError("claude-agent-sdk is not installed; `pip install claude-agent-sdk` (it bundles the CLI).")
    if not path.is_file():
        raise ImageError(
            f"The claude-agent-sdk wheel has no bundled CLI at {path}; reinstall it "
            "(`pip install --force-reinstall claude-agent-sdk`) from a platform wheel."
        )
    return path


TOOLS_INPUT = "workspace-tools/"  # build-context folder of the agent's tools (the Dockerfile compiles them)


def build_inputs() -> dict[str, Path]:
    """Build-context name -> source file."""
    sandbox = _package_file("fsrlm.images", "sandbox")
    inputs = {
        "Dockerfile": sandbox / "Dockerfile",
        "entrypoint.sh": sandbox / "entrypoint.sh",
        "managed-settings.json": sandbox / "managed-settings.json",
        "agent-shell.sh": sandbox / "agent-shell.sh",
        "relay.py": _package_file("fsrlm.tools", "relay.py"),
        "mux.py": _package_file("fsrlm.tools", "mux.py"),
        "claude": cli_binary(),
    }
    # The agent's tools, as every workspace gets them: compiled into the image's bytecode cache
    # for /workspace/tools (see the Dockerfile), so a script's imports need not compile them.
    for tool in sorted(_package_file("fsrlm.tools", "workspace").glob("*.py")):
        if tool.name != "__init__.py":
            inputs[f"{TOOLS_INPUT}{tool.name}"] = tool
    missing = [str(p) for p in inputs.values() if not p.is_file()]
    if missing:
        raise ImageError(f"Sandbox image inputs are missing: {', '.join(missing)}; reinstall fsrlm.")
    return inputs


def input_hash(inputs: dict[str, Path], base_image: str) -> str:
    """Fingerprint of the build inputs and the requested base image.

    Small files are hashed by content. The ~400 MB CLI binary is fingerprinted
    by its version file, size, mtime and inode (any reinstall of the wheel
    changes these), which keeps the no-op check fast.
    """
    h = hashlib.sha256()
    h.update(f"base={base_image}\n".encode())
    for name in sorted(inputs):
        path = inputs[name]
        st = path.stat()
        h.update(f"{name}:{st.st_mode & 0o111:o}:".encode())
        if name == "claude":
            version_file = path.with_name("claude.version")
            version = version_file.read_text().strip() if version_file.is_file() else ""
            h.update(f"{version}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}".encode())
        else:
            h.update(hashlib.sha256(path.read_bytes()).digest())
        h.update(b"\n")
    return h.hexdigest()[:32]


def expected_hash(base_image: str | None = None) -> str:
    """The fingerprint ``ensure_image`` would label the image with; needs no engine."""
    return input_hash(build_inputs(), base_image or DEFAULT_BASE_IMAGE)


@contextlib.contextmanager
def build_lock(tag: str) -> Iterator[None]:
    """One build of a tag at a time, in this process and across processes."""
    safe = "".join(c if c.isalnum() else "_" for c in tag)
    path = Path(tempfile.gettempdir()) / f"fsrlm-image-{os.getuid()}-{safe}.lock"
    with _process_lock, locked_file(path):  # the file goes when the lock does: nothing left in /tmp
        yield


def image_or_none(client, name: str, engine: EngineRef | None = None):
    """The image called ``name`` on ``client``'s engine, or None."""
    import docker.errors

    try:
        with docker_errors(f"look up image {name}", engine or EngineRef.local()):
            return client.images.get(name)
    except SandboxError as e:
        if isinstance(e.__cause__, docker.errors.ImageNotFound):
            return None
        raise


def _pull(client, image: str, timeout: float) -> bool:
    """Try to pull ``image``; False (quietly) when the registry is unreachable."""
    repo, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "latest")
    outcome: list[bool] = []

    def run() -> None:
        try:
            client.images.pull(repo, tag=tag)
            outcome.append(True)
        except Exception as e:  # noqa: BLE001 - any failure means "not available"
            logger.info("cannot pull %s: %s", image, str(e).splitlines()[0] if str(e) else e)
            outcome.append(False)

    thread = threading.Thread(target=run, name=f"fsrlm-pull-{image}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        logger.info("pulling %s took longer than %.0f s; giving up", image, timeout)
        return False
    return bool(outcome and outcome[0])


def build_local_base(tag: str = LOCAL_BASE_IMAGE) -> str:
    """Build a Debian bookworm + python3 base from Debian packages (no registry)."""
    script = _package_file("fsrlm.images", "base", "build-base.sh")
    logger.info("building the base image %s from Debian packages (about 20 s)", tag)
    try:
        proc = subprocess.run(
            ["bash", str(script), tag],
            capture_output=True,
            text=True,
            timeout=BASE_BUILD_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ImageError(f"Building the base image with {script} failed: {e}") from e
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-5:])
        raise ImageError(
            f"Building the base image with {script} failed ({tail}). Either make a base image with python3 "
            f"available (`docker pull {DEFAULT_BASE_IMAGE}` or `docker load`) and pass it as base_image, "
            "or install mmdebstrap (`apt-get install mmdebstrap`) and retry."
        )
    return tag


def resolve_base_image(client, base_image: str | None = None, *, pull_timeout: float = PULL_TIMEOUT_SECONDS) -> str:
    """The base to build on: the requested one if present or pullable, else the local Debian build.

    An explicitly requested ``base_image`` never falls back silently.
    """
    requested = base_image or DEFAULT_BASE_IMAGE
    if image_or_none(client, requested) is not None:
        return requested
    if _pull(client, requested, pull_timeout):
        return requested
    if base_image is not None:
        raise ImageError(
            f"Base image {base_image} is not on this Docker host and cannot be pulled; "
            f"`docker load` it, or leave base_image unset to build {LOCAL_BASE_IMAGE} from Debian packages."
        )
    if image_or_none(client, LOCAL_BASE_IMAGE) is not None:
        return LOCAL_BASE_IMAGE
    return build_local_base(LOCAL_BASE_IMAGE)


# Where each input goes in the build context (see the Dockerfile), and its mode.
_CONTEXT = {
    "Dockerfile": ("Dockerfile", 0o644),
    "claude": ("claude", 0o755),
    "entrypoint.sh": ("rootfs/usr/local/bin/fsrlm-entrypoint", 0o755),
    "relay.py": ("rootfs/opt/fsrlm/relay.py", 0o644),
    "mux.py": ("rootfs/opt/fsrlm/mux.py", 0o644),
    "managed-settings.json": ("rootfs/etc/claude-code/managed-settings.json", 0o644),
    "agent-shell.sh": ("rootfs/opt/fsrlm/bin/bash", 0o755),  # the agent's shell (CLAUDE_CODE_SHELL)
}


def _context_entry(name: str) -> tuple[str, int]:
    return (name, 0o644) if name.startswith(TOOLS_INPUT) else _CONTEXT[name]


def _write_context(inputs: dict[str, Path], fileobj) -> None:
    """Write the build context as a tar: root-owned, fixed modes, no timestamps."""

    def entry(name: str, *, directory: bool = False, size: int = 0, mode: int = 0o755) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
        info.mode, info.size, info.mtime = mode, size, 0
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    with tarfile.open(fileobj=fileobj, mode="w") as tar:
        directories = sorted({str(p) for name in inputs for p in Path(_context_entry(name)[0]).parents
                              if str(p) != "."})
        for directory in directories:
            tar.addfile(entry(directory, directory=True))
        for name, path in sorted(inputs.items()):
            arcname, mode = _context_entry(name)
            with open(path, "rb") as f:
                tar.addfile(entry(arcname, size=os.fstat(f.fileno()).st_size, mode=mode), f)
    fileobj.seek(0)


def _build(client, tag: str, inputs: dict[str, Path], *, base: str, digest: str, nocache: bool):
    log_tail: deque[str] = deque(maxlen=20)
    logger.info("building %s on %s", tag, base)
    start = time.monotonic()
    with tempfile.TemporaryFile(prefix="fsrlm-image-context-") as context:
        _write_context(inputs, context)
        with docker_errors(f"build {tag}", EngineRef.local()):
            stream = client.api.build(
                fileobj=context,
                custom_context=True,
                tag=tag,
                buildargs={"BASE_IMAGE": base, "FSRLM_IMAGE_HASH": digest},
                rm=True,
                forcerm=True,
                pull=False,
                nocache=nocache,
                # No step fetches anything (the CLI and the tools come in the context): the build's
                # containers get no network, so a build works on an engine whose bridge is gone too.
                network_mode="none",
                decode=True,
            )
            for chunk in stream:
                if "error" in chunk:
                    detail = chunk.get("errorDetail", {}).get("message") or chunk["error"]
                    tail = " | ".join(log_tail)
                    raise ImageError(f"Building {tag} failed: {detail.strip()} (last output: {tail})")
                text = chunk.get("stream", "").strip()
                if text:
                    log_tail.append(text)
                    logger.debug("build: %s", text)
    image = image_or_none(client, tag)
    if image is None or image.labels.get(LABEL_IMAGE_HASH) != digest:
        raise ImageError(f"Building {tag} finished but the image is missing or unlabelled; retry with force=True.")
    logger.info("built %s (%s) in %.1f s", tag, image.short_id, time.monotonic() - start)
    return image


def ensure_image(
    client,
    tag: str | None = None,
    *,
    base_image: str | None = None,
    force: bool = False,
    pull_timeout: float = PULL_TIMEOUT_SECONDS,
) -> str:
    """Make sure the sandbox image for the current inputs exists; return its tag.

    Fast no-op when ``tag`` already carries the current fingerprint. ``force``
    rebuilds without the layer cache. Raises ``ImageError`` with what to do.
    """
    tag = tag or default_tag(base_image)
    inputs = build_inputs()
    requested_base = base_image or DEFAULT_BASE_IMAGE
    digest = input_hash(inputs, requested_base)
    existing = image_or_none(client, tag)
    if existing is not None and not force and existing.labels.get(LABEL_IMAGE_HASH) == digest:
        return tag
    with build_lock(tag):
        existing = image_or_none(client, tag)  # another process may have built it meanwhile
        if existing is not None and not force and existing.labels.get(LABEL_IMAGE_HASH) == digest:
            return tag
        if existing is not None and not force:
            logger.info("image %s is stale (inputs changed); rebuilding", tag)
        base = resolve_base_image(client, base_image, pull_timeout=pull_timeout)
        image = _build(client, tag, inputs, base=base, digest=digest, nocache=force)
        if existing is not None and existing.id != image.id:
            remove_image_quietly(client, existing.id)
    return tag


def remove_image_quietly(client, image_id: str) -> None:
    """Remove the image a rebuild replaced, if nothing else names or uses it."""
    try:
        with docker_errors(f"remove the replaced image {image_id[:19]}", EngineRef.local()):
            image = client.images.get(image_id)
            if image.tags:  # still tagged elsewhere (e.g. the same build under another tag): keep it
                return
            client.images.remove(image_id, noprune=False)
    except SandboxError as e:  # used by a container, or already gone
        logger.debug("left the previous image %s in place: %s", image_id, e)


def build_image_cli(*, tag: str | None = None, base_image: str | None = None, force: bool = False) -> str:
    """Connect to the local engine and ``ensure_image``; for ``fsrlm image build``.

    Raises ``ExecutorUnavailable`` when the engine cannot be reached, ``ImageError`` when the build fails.
    """
    from fsrlm.executors.docker.engine import connect_local

    client = connect_local(timeout=600).client
    try:
        return ensure_image(client, tag, base_image=base_image, force=force)
    finally:
        client.close()
