"""The sandbox image: built once, reused while current, rebuilt when stale, and what is inside."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import time
import uuid
from pathlib import Path

import docker.errors
import pytest
from fsrlm.executors.docker import image as image_mod
from fsrlm.executors.docker.image import (
    DEFAULT_BASE_IMAGE,
    LABEL_IMAGE_HASH,
    LOCAL_BASE_IMAGE,
    build_inputs,
    ensure_image,
    input_hash,
    resolve_base_image,
)

from fsrlm.errors import ExecutorUnavailable, ImageError

ROOT = Path(__file__).resolve().parents[2]


def _run(client, image: str, command: list[str], **kwargs) -> tuple[int, str]:
    """Run a throwaway container, attached before it starts (so no output is lost); return (code, output)."""
    kwargs.setdefault("network_mode", "none")
    container = client.containers.create(image, command, labels={"fsrlm": "1"}, **kwargs)
    try:
        stream = container.attach(stdout=True, stderr=True, stream=True, logs=True)
        container.start()
        output = b"".join(stream).decode()
        return container.wait(timeout=60)["StatusCode"], output
    finally:
        container.remove(force=True)


def test_input_hash_tracks_every_input(tmp_path: Path) -> None:
    inputs = build_inputs()
    assert set(inputs) == {"Dockerfile", "entrypoint.sh", "managed-settings.json", "agent-shell.sh", "relay.py", "mux.py",
                           "claude", "workspace-tools/chunking.py", "workspace-tools/llm_client.py"}
    base = input_hash(inputs, DEFAULT_BASE_IMAGE)
    assert base == input_hash(inputs, DEFAULT_BASE_IMAGE)
    assert base != input_hash(inputs, "debian:bookworm")
    changed = dict(inputs)
    changed["relay.py"] = tmp_path / "relay.py"
    changed["relay.py"].write_text(inputs["relay.py"].read_text() + "\n# changed\n")
    assert input_hash(changed, DEFAULT_BASE_IMAGE) != base
    edited_tool = dict(inputs)  # the agent's tools are compiled into the image: an edit is a new image
    edited_tool["workspace-tools/chunking.py"] = tmp_path / "chunking.py"
    edited_tool["workspace-tools/chunking.py"].write_text(inputs["workspace-tools/chunking.py"].read_text() + "\n# changed\n")
    assert input_hash(edited_tool, DEFAULT_BASE_IMAGE) != base


def test_default_tag_names_the_content(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Two checkouts with different image inputs get different tags, so neither rebuilds over the other's."""
    tag = image_mod.default_tag()
    assert tag == f"fsrlm-sandbox:{image_mod.fsrlm_version()}-{image_mod.expected_hash()[:12]}"
    real = build_inputs()
    edited = tmp_path / "entrypoint.sh"
    edited.write_text(real["entrypoint.sh"].read_text() + "\n# another checkout\n")
    monkeypatch.setattr(image_mod, "build_inputs", lambda: {**real, "entrypoint.sh": edited})
    assert image_mod.default_tag() != tag


def test_build_without_daemon_says_how_to_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    with pytest.raises(ExecutorUnavailable, match="from DOCKER_HOST.*unset DOCKER_HOST"):
        image_mod.build_image_cli()


@pytest.mark.docker
def test_ensure_image_is_idempotent_and_fast(docker_image: str, docker_client) -> None:
    first = docker_client.images.get(docker_image)
    started = time.monotonic()
    assert ensure_image(docker_client) == docker_image
    elapsed = time.monotonic() - started
    assert elapsed < 2.0, f"no-op ensure_image took {elapsed:.2f} s"
    again = docker_client.images.get(docker_image)
    assert again.id == first.id
    assert again.labels[LABEL_IMAGE_HASH] == input_hash(build_inputs(), DEFAULT_BASE_IMAGE)
    assert again.labels["fsrlm"] == "1"


@pytest.mark.docker
@pytest.mark.slow
def test_stale_image_is_rebuilt(docker_image: str, docker_client, monkeypatch, tmp_path: Path) -> None:
    tag = f"fsrlm-sandbox-test:{uuid.uuid4().hex[:8]}"
    try:
        assert ensure_image(docker_client, tag) == tag
        old = docker_client.images.get(tag)
        real_inputs = build_inputs()
        settings = tmp_path / "managed-settings.json"
        data = json.loads(real_inputs["managed-settings.json"].read_text())
        data["permissions"]["deny"].append("NotebookEdit")
        settings.write_text(json.dumps(data))
        monkeypatch.setattr(image_mod, "build_inputs", lambda: {**real_inputs, "managed-settings.json": settings})

        assert ensure_image(docker_client, tag) == tag
        new = docker_client.images.get(tag)
        assert new.id != old.id
        assert new.labels[LABEL_IMAGE_HASH] != old.labels[LABEL_IMAGE_HASH]
        code, out = _run(docker_client, tag, ["cat", "/etc/claude-code/managed-settings.json"], entrypoint=[])
        assert code == 0 and "NotebookEdit" in out
        try:  # the stale image is removed, unless another tag (the default image) still names it
            assert docker_client.images.get(old.id).tags
        except docker.errors.ImageNotFound:
            pass
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(tag)


@pytest.mark.docker
def test_image_contents(docker_image: str, docker_client) -> None:
    script = (
        "id -u; id -g; cat /etc/claude-code/managed-settings.json; echo ---; sha256sum /opt/fsrlm/relay.py /opt/fsrlm/mux.py; "
        "stat -c %s /usr/local/bin/claude; echo $CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC $HOME"
    )
    code, out = _run(docker_client, docker_image, ["sh", "-c", script], entrypoint=[])
    assert code == 0, out
    head, _, tail = out.partition("---\n")
    uid, gid, settings = head.split("\n", 2)
    assert (uid, gid) == ("1000", "1000")
    assert json.loads(settings) == json.loads((ROOT / "images/sandbox/managed-settings.json").read_text())
    assert {"WebFetch", "WebSearch"} <= set(json.loads(settings)["permissions"]["deny"])
    relay_sum, mux_sum, cli_size, env_line = tail.strip().splitlines()
    import hashlib

    assert relay_sum.split()[0] == hashlib.sha256((ROOT / "tools/relay.py").read_bytes()).hexdigest()
    assert mux_sum.split()[0] == hashlib.sha256((ROOT / "tools/mux.py").read_bytes()).hexdigest()
    assert int(cli_size) == build_inputs()["claude"].stat().st_size
    assert env_line == "1 /home/sandbox"


@pytest.mark.docker
@pytest.mark.parametrize("listen", ["127.0.0.1:notaport", "no-such-host.invalid:8080"], ids=["bad-address", "cannot-listen"])
def test_entrypoint_stops_the_agent_when_the_relay_cannot_start(docker_image: str, docker_client, listen) -> None:
    """The relay starts beside the agent; if it cannot listen, it says why and stops the agent at once."""
    started = time.monotonic()
    code, out = _run(docker_client, docker_image, ["sleep", "60"], environment={"FSRLM_RELAY_LISTEN": listen},
                     read_only=True, tmpfs={"/tmp": "size=16m"}, init=True)  # as the sandbox runs (pid 1 is init)
    assert code == 137 and time.monotonic() - started < 30  # killed, not left to wait for a broker
    assert "relay" in out and ("cannot listen" in out or "--listen needs HOST:PORT" in out)


@pytest.mark.docker
def test_base_image_resolution(docker_image: str, docker_client) -> None:
    assert resolve_base_image(docker_client) in (DEFAULT_BASE_IMAGE, LOCAL_BASE_IMAGE)
    with pytest.raises(ImageError, match="docker load"):
        resolve_base_image(docker_client, "fsrlm-no-such-base:1", pull_timeout=20)


@pytest.mark.docker
def test_python_imports_come_compiled_from_the_image(docker_image: str, docker_client, tmp_path: Path) -> None:
    """The standard library and the agent's tools are compiled once per image (PYTHONPYCACHEPREFIX): a
    script's imports read bytecode, and a tool the agent edits is compiled afresh, never served stale."""
    tools = tmp_path / "tools"
    tools.mkdir()
    for name in ("chunking.py", "llm_client.py"):
        shutil.copy(ROOT / "tools/workspace" / name, tools / name)
    tools.chmod(0o755)
    run = dict(entrypoint=[], read_only=True, environment={"PYTHONPATH": "/workspace/tools"},
               volumes={str(tools): {"bind": "/workspace/tools", "mode": "ro"}})
    verbose = ["python3", "-v", "-c", "import chunking, llm_client; print('edited', hasattr(llm_client, 'EDITED'))"]

    code, out = _run(docker_client, docker_image, verbose, **run)
    assert code == 0, out
    cached = set(re.findall(r"code object from '/opt/fsrlm/pycache/(\S+?)\.cpython-\d+\.pyc'", out))
    assert {"workspace/tools/chunking", "workspace/tools/llm_client"} <= cached
    assert any(c.endswith("/http/client") for c in cached), sorted(cached)  # the standard library, whatever the base
    assert "edited False" in out

    with (tools / "llm_client.py").open("a") as f:
        f.write("\nEDITED = 1\n")
    code, out = _run(docker_client, docker_image, verbose, **run)
    assert code == 0, out
    assert "edited True" in out
    assert "workspace/tools/llm_client" not in set(re.findall(r"code object from '/opt/fsrlm/pycache/(\S+?)\.cpython", out))

    code, out = _run(docker_client, docker_image, ["ls", "-A", "/workspace"], entrypoint=[])
    assert (code, out) == (0, "")  # the image's /workspace stays empty: a remote run's volume is filled from it
