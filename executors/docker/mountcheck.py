"""Is what the container mounts at ``/workspace`` the run folder the host created?

The host knows its run folder by identity (device and inode, ``fsrlm.safe_fs.DirIdentity``),
recorded when it made the folder. A bind mount is made by path, and Docker follows a
link in it, so the identity is checked twice: on the host right before the container
is created (``verify_workspace``), and inside the container by the image's entrypoint
before anything else runs (it compares ``stat -c %d:%i /workspace`` with
``FSRLM_WORKSPACE_ID`` and exits 70 when they differ, so the agent never starts on
another folder). A bind mount keeps the device and inode of its source under runc;
runtimes that number inodes themselves (gVisor's ``runsc``) get only the host-side check.

The other executors: ``local`` checks the folder before it starts the agent in it;
``remote-docker`` copies the folder it packed (the packer checks the identity of the
folder it opened) into a fresh volume of the run, so there is no host path to swap.
"""

from __future__ import annotations

from fsrlm.errors import SandboxError, WorkspaceError
from fsrlm.executors.base import SandboxSpec
from fsrlm.safe_fs import DirIdentity, check_identity, identity_of

WORKSPACE_ID_ENV = "FSRLM_WORKSPACE_ID"


def verify_workspace(spec: SandboxSpec) -> DirIdentity:
    """The identity of ``spec.workspace``; SandboxError when it is not the folder the host created."""
    try:
        if spec.workspace_id is not None:
            check_identity(spec.workspace, spec.workspace_id)
            return spec.workspace_id
        return identity_of(spec.workspace)
    except (WorkspaceError, OSError) as e:
        raise SandboxError(f"Refusing to start the sandbox: {e}") from None


def mount_check_env(spec: SandboxSpec, *, in_container: bool) -> dict[str, str]:
    """Variables that make the entrypoint check the mounted workspace (after checking it here).

    ``in_container`` False: the sandbox's kernel numbers devices and inodes itself (gVisor shows
    ``/workspace`` as 13:1, and its ``statx`` fails), so only the host-side check is made.
    """
    identity = verify_workspace(spec)
    return {WORKSPACE_ID_ENV: str(identity)} if in_container else {}
