"""The workspace the container mounts is the run folder the host created (device and inode), checked twice."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from fsrlm.errors import SandboxError
from fsrlm.executors.configs import DockerExecutorConfig
from fsrlm.executors.docker import transfer
from fsrlm.executors.docker.executor import DockerExecutor
from fsrlm.executors.docker.mountcheck import WORKSPACE_ID_ENV, mount_check_env, verify_workspace
from fsrlm.safe_fs import DirIdentity, identity_of

pytestmark = pytest.mark.both_kernels  # the executor contract holds under runc and gVisor


def test_identity_checked_on_the_host(make_spec, workspace: Path, tmp_path: Path) -> None:
    spec = make_spec().model_copy(update={"workspace_id": identity_of(workspace)})
    assert verify_workspace(spec) == identity_of(workspace)
    assert mount_check_env(spec, in_container=True) == {WORKSPACE_ID_ENV: f"{os.stat(workspace).st_dev}:{os.stat(workspace).st_ino}"}
    assert mount_check_env(spec, in_container=False) == {}  # gVisor numbers inodes itself: the host check only
    # The folder swapped for a link to another one (or for another folder) after the host made it:
    other = tmp_path / "other"
    other.mkdir()
    shutil.move(workspace, tmp_path / "moved")
    workspace.symlink_to(other)
    with pytest.raises(SandboxError, match="not the run folder the host created|replaced by a link"):
        verify_workspace(spec)
    workspace.unlink()
    workspace.mkdir()
    with pytest.raises(SandboxError, match="not the run folder the host created"):
        verify_workspace(spec)


@pytest.mark.docker
async def test_the_entrypoint_refuses_another_folder(docker_image, make_spec, run_to_end,
                                                     workspace: Path, monkeypatch) -> None:
    """Had a swap slipped past the host's check, the container's first step still refuses to start."""
    executor = DockerExecutor(DockerExecutorConfig())
    await executor.check()
    spec = make_spec().model_copy(update={"workspace_id": identity_of(workspace)})
    wrong = DirIdentity(identity_of(workspace).dev, identity_of(workspace).ino + 1)
    monkeypatch.setattr(transfer, "mount_check_env", lambda spec, in_container: {WORKSPACE_ID_ENV: str(wrong)})
    async with await executor.prepare(spec) as sandbox:
        sandbox.cli_path = "/bin/sh"
        process = await sandbox.start_agent(["-c", "echo ran > /workspace/ran"])
        lines, result = await run_to_end(process)
    assert result.exit_code == 70 and "is not the run folder the host created" in result.stderr_tail
    assert not (workspace / "ran").exists()


@pytest.mark.docker
async def test_the_entrypoint_accepts_the_folder_it_was_given(docker_image, make_spec, run_to_end,
                                                              workspace: Path, sandbox_runtime) -> None:
    executor = DockerExecutor(DockerExecutorConfig())
    await executor.check()
    spec = make_spec().model_copy(update={"workspace_id": identity_of(workspace)})
    async with await executor.prepare(spec) as sandbox:
        sandbox.cli_path = "/bin/sh"
        process = await sandbox.start_agent(["-c", f"echo ${WORKSPACE_ID_ENV} > /workspace/ran"])
        lines, result = await run_to_end(process)
    assert result.exit_code == 0, result.stderr_tail
    # Under gVisor the container cannot see the host's numbers: only the host-side check is made.
    expected = "" if sandbox_runtime == "runsc" else str(identity_of(workspace))
    assert (workspace / "ran").read_text().strip() == expected
