"""Shared fixtures: an isolated environment, the scripted model, configs per executor."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import FAKE_UPSTREAM_KEY, ISOLATION_OF, SCRIPTED_PRICES, SANDBOX_RUNTIMES, default_isolation, engine_has_gvisor, gvisor_runtimes

from fsrlm.config import RLMConfig
from fsrlm.testing.scripted_model import ScriptedModelServer

EXECUTORS = ["local", "docker", "remote-docker"]

# A suite started in the background by a shell without job control (`make test-fast &` in a script, some
# CI runners) inherits SIGINT as ignored, and so does every process it starts: Python keeps an inherited
# SIG_IGN, asyncio then installs no Ctrl-C handler, and `fsrlm view`/`fsrlm run` never see the SIGINT a
# test sends them (test_view_command_serves_a_run_and_stops_on_ctrl_c timed out after 15 s that way).
# Tests play a terminal's foreground process group: Python's own handler here, so children start with
# the default disposition (exec resets a handled signal to SIG_DFL).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


# -- the sandbox's kernel: docker tests run under runc; the kernel-sensitive ones under gVisor too ------
#
# Which suites get a gVisor (runsc) twin: those whose outcome depends on the kernel under the sandbox —
# the security suite (every attack under both kernels), the executor conformance suite and the sandbox
# checks — marked ``both_kernels``. Everything else is about fsRLM itself and runs once, under runc.
# ``FSRLM_TEST_RUNTIMES`` names the kernels (``runc``, ``runsc``, or both, the default) and
# ``FSRLM_TEST_EVERY_KERNEL=1`` gives every docker test its twin (about twice the suite's time).


def wanted_runtimes() -> list[str]:
    """The kernels ``both_kernels`` tests run under: ``FSRLM_TEST_RUNTIMES`` (e.g. ``runc``), default both."""
    value = os.environ.get("FSRLM_TEST_RUNTIMES", "")
    names = [n.strip() for n in value.split(",") if n.strip()] or list(SANDBOX_RUNTIMES)
    unknown = sorted(set(names) - set(SANDBOX_RUNTIMES))
    if unknown:
        raise pytest.UsageError(f"FSRLM_TEST_RUNTIMES: unknown {', '.join(unknown)}; use {', '.join(SANDBOX_RUNTIMES)}")
    return names


def runtimes_for(definition: pytest.Item) -> list[str]:
    """Both kernels for a ``both_kernels`` test (or every test, FSRLM_TEST_EVERY_KERNEL=1); else the first."""
    wanted = wanted_runtimes()
    if definition.get_closest_marker("both_kernels") or os.environ.get("FSRLM_TEST_EVERY_KERNEL") == "1":
        return wanted
    return wanted[:1]


# Fixtures parametrised over executor backends ("local", "docker", "remote-docker"): a test using one runs
# under the kernels above, except its local runs (tests/executors/test_conformance.py: backend).
BACKEND_FIXTURES = ("executor_type", "backend")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise ``sandbox_runtime`` for docker tests: those marked ``docker`` and the backend-parametrised ones."""
    if "sandbox_runtime" not in metafunc.fixturenames:
        return
    if metafunc.definition.get_closest_marker("one_kernel"):
        return
    if metafunc.definition.get_closest_marker("docker") or any(f in metafunc.fixturenames for f in BACKEND_FIXTURES):
        metafunc.parametrize("sandbox_runtime", runtimes_for(metafunc.definition), indirect=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """No gVisor twin of a local-executor test; the gVisor twins are docker tests."""
    kept, dropped = [], []
    for item in items:
        params = getattr(item, "callspec", None) and item.callspec.params
        if params and params.get("sandbox_runtime") == "runsc":
            if any(params.get(f) == "local" for f in BACKEND_FIXTURES) and len(wanted_runtimes()) > 1:
                dropped.append(item)
                continue
            item.add_marker(pytest.mark.docker)
        kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(scope="session")
def gvisor_available() -> bool:
    return engine_has_gvisor()


@pytest.fixture(autouse=True)
def sandbox_runtime(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str | None]:
    """The kernel this docker test's sandboxes get: ``runc`` or ``runsc`` (gVisor); None for other tests.

    Applied to every container executor config the test builds (``executor.isolation``'s default and
    ``FSRLM_ISOLATION`` for ``fsrlm`` commands), so a suite gets both kernels by depending on this
    fixture (it is autouse: marking a test ``docker`` or using ``executor_type`` is enough). Under
    runsc the machine's engine must have gVisor (``make gvisor``): without it the test skips, and
    fails under ``CI=true``.
    """
    name = getattr(request, "param", None)
    if name is None:
        yield None
        return
    if name == "runsc" and not request.getfixturevalue("gvisor_available"):
        (pytest.fail if os.environ.get("CI") else pytest.skip)(
            "the Docker engine has no usable gVisor runtime: `make gvisor` installs and registers runsc")
    request.node.user_properties.append(("sandbox_runtime", name))
    monkeypatch.setenv("FSRLM_ISOLATION", ISOLATION_OF[name])
    with default_isolation(ISOLATION_OF[name]):
        yield name


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point cache and config at a temp dir and drop the user's credentials and FSRLM_* settings."""
    home = tmp_path_factory.mktemp("home")
    for name in list(os.environ):
        if name.startswith(("FSRLM_", "ANTHROPIC_", "AWS_", "CLAUDE_")):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    monkeypatch.setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
    monkeypatch.chdir(home)  # no ./fsrlm.toml is picked up by accident
    yield home


@pytest.fixture
def node_tmp(tmp_path: Path) -> Path:
    """The temp dir of a test cluster's nodes (broker sockets, job folders, locks): checked for leftovers."""
    folder = tmp_path / "nodetmp"
    folder.mkdir()
    return folder


@pytest.fixture
def scripted() -> Iterator[ScriptedModelServer]:
    """A fresh scripted Anthropic-compatible model on a loopback port."""
    with ScriptedModelServer() as server:
        yield server


@pytest.fixture(params=[pytest.param(name, marks=[] if name == "local" else [pytest.mark.docker])
                        for name in EXECUTORS])
def executor_type(request: pytest.FixtureRequest) -> str:
    """Runs a test once per executor backend (the conformance suite).

    ``remote-docker`` runs against a second Docker daemon on loopback
    (``remote_docker_host``), reached through ``DOCKER_HOST``.
    """
    if request.param != "local":  # marked at collection, so `-m "not docker"` leaves these out
        request.getfixturevalue("docker_image")
    if request.param == "remote-docker":
        request.getfixturevalue("remote_docker")
    return request.param


@pytest.fixture
def remote_docker(remote_docker_host, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Point the remote-docker executor (through ``DOCKER_HOST``) at the second daemon, a "remote host" on loopback."""
    for name in ("DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONTEXT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in remote_docker_host.env.items():
        monkeypatch.setenv(name, value)
    return remote_docker_host


@pytest.fixture(scope="session")
def docker_image() -> str:
    """The sandbox image, built once per session (CI builds it before the tests)."""
    import docker
    from fsrlm.executors.docker.image import ensure_image

    client = docker.from_env()
    try:
        return ensure_image(client)
    finally:
        client.close()


@pytest.fixture(scope="session")
def docker_client() -> Iterator[Any]:
    """A docker SDK client of this machine's engine."""
    import docker

    client = docker.from_env()
    yield client
    client.close()


@pytest.fixture(scope="session")
def remote_docker_host() -> Iterator[Any]:
    """A second Docker daemon on 127.0.0.1 (plain TCP) playing a remote host; stopped and removed at the end."""
    from dockerd import SecondDockerd

    if os.geteuid() != 0:
        (pytest.fail if os.environ.get("CI") else pytest.skip)("starting a second Docker daemon needs root")
    with SecondDockerd(runtimes=gvisor_runtimes()) as daemon:  # it offers gVisor when this machine has runsc
        yield daemon


@pytest.fixture(scope="session")
def plain_dockerd(docker_image) -> Iterator[Any]:
    """A second Docker daemon on loopback with no gVisor runtime, holding the sandbox image.

    On this machine, so the ``docker`` executor can use it too (``DOCKER_HOST``: its bind
    mounts are this machine's folders): an engine for ``isolation = "auto"`` without runsc.
    """
    import docker
    from dockerd import SecondDockerd

    from fsrlm.executors.docker.ship import ship

    if os.geteuid() != 0:
        (pytest.fail if os.environ.get("CI") else pytest.skip)("starting a second Docker daemon needs root")
    with SecondDockerd() as daemon:
        local, remote = docker.from_env(), daemon.client()
        try:
            ship(local, remote, docker_image)
        finally:
            local.close()
            remote.close()
        yield daemon


@pytest.fixture
def make_config(scripted: ScriptedModelServer, tmp_path: Path) -> Callable[..., RLMConfig]:
    """Build an RLMConfig that talks to the scripted model through the broker."""

    def build(executor: str | dict[str, Any] = "local", **overrides: Any) -> RLMConfig:
        """``executor``: a type, or a whole executor table."""
        data: dict[str, Any] = {
            "upstream": {"type": "compatible", "base_url": scripted.url, "api_key": FAKE_UPSTREAM_KEY,
                         "max_retries": 3},
            "executor": executor if isinstance(executor, dict) else {"type": executor},
            "cache_dir": str(tmp_path / "cache"),
            "workspace_dir": str(tmp_path / "runs"),
            "preserve_workspace": True,
            "root_model": "scripted-root",
            "submodel": "scripted-sub",
            "timeout_seconds": 120,
            # Names no price table knows, priced as a gateway's would be (else the dear unknown-model price):
            # the root cheap enough that its reservations (32k max_tokens a call) fit small test budgets.
            "prices": SCRIPTED_PRICES,
        }
        data.update(overrides)
        return RLMConfig.model_validate(data)

    return build
