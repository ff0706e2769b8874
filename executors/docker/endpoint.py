"""Which Docker engine the ``remote-docker`` executor talks to, and connecting to it.

``resolve_endpoint`` follows the docker command line's order: ``executor.host``,
then ``executor.context``, then ``DOCKER_HOST``, then ``DOCKER_CONTEXT``, then the
current context of ``$DOCKER_CONFIG/config.json``; with none of them, the local
engine. TLS comes with the host: ``executor.tls_verify`` / ``executor.cert_path``
or ``DOCKER_TLS_VERIFY`` / ``DOCKER_CERT_PATH`` (``ca.pem``, ``cert.pem``,
``key.pem``; default folder ``~/.docker``), or a context's own TLS material. A
certificate folder alone turns TLS on *with* verification (stricter than the
docker SDK); only ``tls_verify = false`` (or an empty ``DOCKER_TLS_VERIFY``) turns it off.

``connect`` asks the engine for its API version with a short timeout and turns every way that can
fail (refused, TLS, timeout, ssh) into one ``ExecutorUnavailable`` line that
names the host and what to check. ``ssh://`` hosts go through ``SSHDialer``: the
docker SDK then talks to a private local unix socket, so attach and exec
streams are plain sockets.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fsrlm.executors.configs import RemoteDockerExecutorConfig

from fsrlm.errors import ExecutorUnavailable

DEFAULT_LOCAL = "unix:///var/run/docker.sock"
_TLS_FILES = ("ca.pem", "cert.pem", "key.pem")


@dataclass(frozen=True)
class Endpoint:
    host: str  # tcp://…, ssh://…, unix://…
    source: str  # where it came from, for messages
    tls_dir: Path | None = None  # TLS on: the folder with ca.pem, cert.pem, key.pem
    tls_verify: bool = True

    @property
    def label(self) -> str:
        return f"{self.host} (from {self.source})"


def _env_verify(value: str | None) -> bool | None:
    """DOCKER_TLS_VERIFY as the docker tools read it: unset None, empty False, any other value True."""
    return None if value is None else value != ""


def _docker_config_dir(environ: Mapping[str, str]) -> Path:
    return Path(environ.get("DOCKER_CONFIG") or Path.home() / ".docker")


def _context(name: str, environ: Mapping[str, str]) -> Endpoint:
    """Read a docker context the way the docker command line stores it."""
    digest = hashlib.sha256(name.encode()).hexdigest()
    root = _docker_config_dir(environ) / "contexts"
    meta = root / "meta" / digest / "meta.json"
    try:
        endpoint = json.loads(meta.read_text())["Endpoints"]["docker"]
        host = endpoint["Host"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ExecutorUnavailable(
            f"Docker context {name!r} is not readable ({meta}); check `docker context ls`, or set executor.host."
        ) from None
    tls_dir = root / "tls" / digest / "docker"
    has_tls = host.startswith("tcp://") and (tls_dir / "ca.pem").is_file()
    return Endpoint(host=host, source=f"docker context {name!r}", tls_dir=tls_dir if has_tls else None,
                    tls_verify=not endpoint.get("SkipTLSVerify", False))


def _with_tls(host: str, source: str, tls_verify: bool | None, cert_path: str | None) -> Endpoint:
    """TLS when verification is asked for or a certificate folder is given; then verified unless turned off."""
    if not host.startswith("tcp://") or not (tls_verify or cert_path is not None):
        return Endpoint(host=host, source=source)
    folder = Path(cert_path).expanduser() if cert_path else Path.home() / ".docker"
    return Endpoint(host=host, source=source, tls_dir=folder, tls_verify=tls_verify is not False)


def resolve_endpoint(config: RemoteDockerExecutorConfig, environ: Mapping[str, str] | None = None) -> Endpoint:
    env = os.environ if environ is None else environ
    tls_verify = config.tls_verify if config.tls_verify is not None else _env_verify(env.get("DOCKER_TLS_VERIFY"))
    cert_path = config.cert_path or env.get("DOCKER_CERT_PATH") or None
    if config.host:
        return _with_tls(config.host, "executor.host", tls_verify, cert_path)
    if config.context:
        return _context(config.context, env)
    if env.get("DOCKER_HOST"):
        return _with_tls(env["DOCKER_HOST"], "DOCKER_HOST", tls_verify, cert_path)
    name = env.get("DOCKER_CONTEXT")
    if not name:
        try:
            name = json.loads((_docker_config_dir(env) / "config.json").read_text()).get("currentContext")
        except (OSError, ValueError, AttributeError):
            name = None
    if name and name != "default":
        return _context(name, env)
    return Endpoint(host=DEFAULT_LOCAL, source="the default local socket")


def docker_client(endpoint: Endpoint, *, timeout: float):
    """A docker SDK client for ``endpoint``, its API version agreed with the engine."""
    import docker
    from docker.constants import DEFAULT_DOCKER_API_VERSION, MINIMUM_DOCKER_API_VERSION
    from docker.tls import TLSConfig
    from docker.utils import version_lt

    host = endpoint.host
    tls = None
    if host.startswith("ssh://"):
        from fsrlm.executors.docker.sshdial import SSHDialer

        host = f"unix://{SSHDialer.shared(host).socket_path}"
    elif endpoint.tls_dir is not None:
        missing = [name for name in _TLS_FILES if not (endpoint.tls_dir / name).is_file()]
        if missing:
            raise ExecutorUnavailable(
                f"TLS is on for the Docker host {endpoint.label} but {endpoint.tls_dir} lacks {', '.join(missing)}; "
                "set executor.cert_path or DOCKER_CERT_PATH to the folder with ca.pem, cert.pem and key.pem."
            )
        d = endpoint.tls_dir
        tls = TLSConfig(client_cert=(str(d / "cert.pem"), str(d / "key.pem")),
                        ca_cert=str(d / "ca.pem") if endpoint.tls_verify else None, verify=endpoint.tls_verify)
    def make(version: str):
        client = docker.DockerClient(base_url=host, tls=tls, timeout=timeout, version=version)
        if tls is not None:
            # requests would let REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE replace the host's CA (requests#3829).
            client.api.trust_env = False
        return client

    # A fixed version makes no request; ask the engine for its own, then talk the lower of the two.
    probe = make(MINIMUM_DOCKER_API_VERSION)
    try:
        server = probe.api.version(api_version=False)["ApiVersion"]
    finally:
        probe.close()
    return make(server if version_lt(server, DEFAULT_DOCKER_API_VERSION) else DEFAULT_DOCKER_API_VERSION)


def explain(endpoint: Endpoint, e: BaseException, timeout: float) -> str:
    """One line saying why ``endpoint`` could not be used, and what to check."""
    import requests.exceptions

    text = " ".join(str(e).split()) or type(e).__name__
    where = f"the Docker host {endpoint.label}"
    if endpoint.host.startswith("ssh://"):
        from fsrlm.executors.docker.sshdial import SSHDialer

        ssh = SSHDialer.shared(endpoint.host).last_error
        if ssh:
            return (f"Cannot reach {where} over ssh ({ssh[:200]}): check that `ssh {endpoint.host[6:]} docker "
                    "version` works without a password prompt (keys, known_hosts, docker on the remote PATH).")
    if isinstance(e, requests.exceptions.SSLError) or "SSL" in text or "certificate" in text:
        what = "certificate verify failed" if "CERTIFICATE_VERIFY_FAILED" in text else text[:160]
        return (f"TLS with {where} failed ({what}): check that executor.cert_path / DOCKER_CERT_PATH "
                f"({endpoint.tls_dir}) holds the CA that signed the host's certificate (ca.pem) and a client "
                "certificate it accepts (cert.pem, key.pem), and DOCKER_TLS_VERIFY.")
    if "HTTP request to an HTTPS server" in text:
        return (f"{where} speaks TLS: set DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH "
                "(or executor.tls_verify and executor.cert_path).")
    if isinstance(e, requests.exceptions.Timeout) or "timed out" in text:
        return f"{where} did not answer within {timeout:g} s: check the address, that the host is up, and firewalls."
    if "Connection refused" in text or "No such file" in text:
        return (f"Cannot reach {where} (connection refused): check that dockerd runs there and listens on that "
                "address (e.g. `dockerd -H tcp://0.0.0.0:2376 --tlsverify ...`), or set executor.host / DOCKER_HOST.")
    return f"Cannot use {where}: {text[:240]}; check executor.host / DOCKER_HOST and that the engine is up."


def connect(endpoint: Endpoint, *, ping_timeout: float, api_timeout: float = 300.0):
    """A client whose engine answered within ``ping_timeout``; or ExecutorUnavailable."""
    try:
        client = docker_client(endpoint, timeout=ping_timeout)  # asks the engine for its version
    except ExecutorUnavailable:
        raise
    except Exception as e:  # noqa: BLE001 - bad URLs, TLS files, requests, docker and ssl errors alike
        raise ExecutorUnavailable(explain(endpoint, e, ping_timeout)) from None
    client.api.timeout = api_timeout  # later calls (image load, archives) may take long
    return client
