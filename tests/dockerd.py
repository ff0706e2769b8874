"""A second Docker daemon on loopback, to play a remote Docker host in tests and benchmarks.

``SecondDockerd`` starts ``dockerd`` with its own data root, exec root and pid
file in a private temp folder, listening only on ``tcp://127.0.0.1:<free
port>`` — plain, or with ``tls=True`` behind ``--tlsverify`` with a CA, server
and client certificates made on the spot (plus a second, unrelated CA to test
a wrong one). No iptables, and a bridge of its own that no container uses: its
containers can only have ``network_mode=none``, which is all fsRLM uses. (Not
``--bridge=none``: a dockerd started so deletes the host's ``docker0``, the main
daemon's default bridge, and the network of every container on it.) The storage driver is the
main daemon's (when it answers), so images load fast. ``runtimes`` registers OCI runtimes
in its own daemon.json (e.g. gVisor's runsc, so a test "remote host" offers gVisor).

    with SecondDockerd(tls=True) as daemon:
        daemon.url, daemon.env  # {"DOCKER_HOST": ..., "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": ...}

``stop`` ends the daemon (and the containerd it started), unmounts whatever
it left mounted under its folder and removes the folder. If the process that
started it dies without stopping it (a killed test session), the daemon gets
SIGTERM (``PR_SET_PDEATHSIG``), and the next ``start`` removes the folder it left.
Needs root.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

logger = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _main_storage_driver() -> str | None:
    try:
        import docker

        client = docker.from_env(timeout=10)
        try:
            return client.info().get("Driver") or None
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - no main daemon: let dockerd choose
        return None


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the process that started the daemon dies."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _pid_alive(pid_file: Path) -> bool:
    try:
        os.kill(int(pid_file.read_text().strip()), 0)
        return True
    except (OSError, ValueError):
        return False


BRIDGE_PREFIX = "fsrlmdd"  # + the daemon's port: at most 12 characters (interface names: 15)


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=False)


def _make_bridge(port: int, record: Path) -> str | None:
    """A bridge for one second daemon, never used by a container; None where iproute2 is missing.
    Its name goes to ``record`` first, so a reaper in another session never takes it for a stale one.

    The address is from 198.18.0.0/15, the range set aside for benchmarking (RFC 2544): no
    machine's network is there, and nothing is ever sent to it (no iptables, no container on it).
    """
    if not shutil.which("ip"):
        return None
    name = f"{BRIDGE_PREFIX}{port}"
    record.write_text(name)
    _ip("link", "del", name)  # a stale one of the same port
    made = _ip("link", "add", name, "type", "bridge")
    if made.returncode != 0:
        logger.warning("could not make the bridge %s for the second dockerd: %s", name, made.stderr.strip())
        return None
    _ip("addr", "add", f"198.18.{port % 250 + 1}.1/24", "dev", name)
    _ip("link", "set", name, "up")
    return name


def _stale_bridges(kept: set[str]) -> list[str]:
    if not shutil.which("ip"):
        return []
    listed = _ip("-o", "link", "show", "type", "bridge").stdout.splitlines()
    names = [line.split(":")[1].strip().split("@")[0] for line in listed if line.count(":") >= 2]
    return [n for n in names if n.startswith(BRIDGE_PREFIX) and n[len(BRIDGE_PREFIX):].isdigit() and n not in kept]


def reap_stale(parent: Path = Path("/tmp")) -> list[Path | str]:
    """Remove folders (and bridges) of second daemons whose dockerd is gone (their session was killed)."""
    removed: list[Path | str] = []
    kept: set[str] = set()
    for folder in parent.glob("fsrlm-dd-*"):
        try:
            bridge = (folder / "bridge").read_text().strip()
        except OSError:
            bridge = ""
        kept.add(bridge)  # until the folder is found stale
        pid_file = folder / "started.pid"  # written by start(); dockerd removes its own pid file on exit
        if not (folder / "daemon.json").is_file() or _pid_alive(pid_file):
            continue
        if not pid_file.exists() and time.time() - folder.stat().st_mtime < 120:
            continue  # another session's daemon is just starting
        if any(m.startswith(f"{folder}/") for m in _mounts()):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
        kept.discard(bridge)
    for name in _stale_bridges(kept):
        _ip("link", "del", name)
        removed.append(name)
    return removed


def _mounts() -> list[str]:
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    return [line.split()[1].encode().decode("unicode_escape") for line in lines if len(line.split()) > 1]


def make_certificates(folder: Path) -> dict[str, Path]:
    """CA, server (127.0.0.1, localhost) and client certificates, plus an unrelated CA; PEM files in ``folder``.

    Returns folders: ``server`` (ca.pem, cert.pem, key.pem for dockerd), ``client``
    (the same CA and a client certificate) and ``wrong_ca`` (a client folder whose
    ca.pem is another CA).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def key():
        return ec.generate_private_key(ec.SECP256R1())

    def cert(subject: str, public_key, issuer: str, signing_key, *, ca: bool, usage=None, san=None):
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(public_key).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=2))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if usage:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        if ca:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False, encipher_only=False,
                decipher_only=False), critical=True)
        return builder.sign(signing_key, hashes.SHA256())

    def write(sub: str, name: str, data: bytes) -> None:
        (folder / sub).mkdir(parents=True, exist_ok=True)
        path = folder / sub / name
        path.write_bytes(data)
        path.chmod(0o600)

    def pem_key(k) -> bytes:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    def pem(c) -> bytes:
        return c.public_bytes(serialization.Encoding.PEM)

    ca_key, wrong_key, server_key, client_key = key(), key(), key(), key()
    ca = cert("fsrlm test CA", ca_key.public_key(), "fsrlm test CA", ca_key, ca=True)
    wrong = cert("fsrlm unrelated CA", wrong_key.public_key(), "fsrlm unrelated CA", wrong_key, ca=True)
    server = cert("127.0.0.1", server_key.public_key(), "fsrlm test CA", ca_key, ca=False,
                  usage=[ExtendedKeyUsageOID.SERVER_AUTH],
                  san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")])
    client = cert("fsrlm client", client_key.public_key(), "fsrlm test CA", ca_key, ca=False,
                  usage=[ExtendedKeyUsageOID.CLIENT_AUTH])
    for sub, c, k in (("server", server, server_key), ("client", client, client_key),
                      ("wrong_ca", client, client_key)):
        write(sub, "cert.pem", pem(c))
        write(sub, "key.pem", pem_key(k))
        write(sub, "ca.pem", pem(wrong if sub == "wrong_ca" else ca))
    return {sub: folder / sub for sub in ("server", "client", "wrong_ca")}


class SecondDockerd:
    """A throwaway dockerd on 127.0.0.1; a context manager."""

    def __init__(self, *, tls: bool = False, storage_driver: str | None = None, start_timeout: float = 60.0,
                 runtimes: dict[str, dict] | None = None) -> None:
        self.tls = tls
        self.runtimes = dict(runtimes or {})
        self.storage_driver = storage_driver
        self.start_timeout = start_timeout
        self.dir: Path | None = None
        self.port = 0
        self.bridge: str | None = None
        self.certs: dict[str, Path] = {}
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The dockerd process (the install script registers runtimes with it by this)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def config_file(self) -> Path:
        assert self.dir is not None
        return self.dir / "daemon.json"

    @property
    def env(self) -> dict[str, str]:
        """Variables that point the docker SDK (and the docker command) at this daemon."""
        env = {"DOCKER_HOST": self.url}
        if self.tls:
            env |= {"DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(self.certs["client"])}
        return env

    def client(self, timeout: float = 120.0):
        """A docker SDK client of this daemon."""
        from fsrlm.executors.docker.endpoint import Endpoint, docker_client

        tls_dir = self.certs["client"] if self.tls else None
        return docker_client(Endpoint(host=self.url, source="the test daemon", tls_dir=tls_dir), timeout=timeout)

    def start(self) -> SecondDockerd:
        if os.geteuid() != 0 or not shutil.which("dockerd"):
            raise RuntimeError("a second Docker daemon needs root and dockerd on PATH")
        for stale in reap_stale():
            logger.info("removed %s, left by a second dockerd whose session was killed", stale)
        self.dir = Path(tempfile.mkdtemp(prefix="fsrlm-dd-", dir="/tmp"))  # short: containerd socket paths
        self.port = free_port()
        # Never the machine's /etc/docker/daemon.json; extra OCI runtimes (e.g. gVisor's runsc) when asked for.
        (self.dir / "daemon.json").write_text(json.dumps({"runtimes": self.runtimes} if self.runtimes else {}))
        args = ["dockerd", "--config-file", str(self.dir / "daemon.json"), "--data-root", str(self.dir / "data"),
                "--exec-root", str(self.dir / "exec"), "--pidfile", str(self.dir / "dockerd.pid"),
                "-H", self.url, "--iptables=false", "--ip-masq=false",
                "--userland-proxy=false", "--label", "fsrlm=1", "--log-level", "warn"]
        self.bridge = _make_bridge(self.port, self.dir / "bridge")
        args.append(f"--bridge={self.bridge or 'none'}")
        driver = self.storage_driver or _main_storage_driver()
        if driver:
            args += ["--storage-driver", driver]
        if self.tls:
            self.certs = make_certificates(self.dir / "certs")
            s = self.certs["server"]
            args += ["--tlsverify", "--tlscacert", str(s / "ca.pem"), "--tlscert", str(s / "cert.pem"),
                     "--tlskey", str(s / "key.pem")]
        log = open(self.dir / "dockerd.log", "wb")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      start_new_session=True, preexec_fn=_die_with_parent)
        self._log = log
        (self.dir / "started.pid").write_text(str(self._proc.pid))
        deadline = time.monotonic() + self.start_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            try:
                client = self.client(timeout=5)
                client.ping()
                client.close()
                logger.info("second dockerd up at %s (%s)", self.url, self.dir)
                return self
            except Exception as e:  # noqa: BLE001 - not up yet
                last = e
                time.sleep(0.2)
        tail = self.log_tail()
        self.stop()
        raise RuntimeError(f"the second dockerd did not start ({last}): {tail}")

    def log_tail(self, lines: int = 15) -> str:
        try:
            return " | ".join((self.dir / "dockerd.log").read_text(errors="replace").splitlines()[-lines:])
        except (OSError, TypeError):
            return ""

    def stop(self) -> None:
        """Stop the daemon and its containerd, unmount leftovers, remove the folder. Safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)
            self._log.close()
        if self.dir is None:
            return
        self._kill_containerd()
        for mount in self._mounts_below():
            subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
        if self._mounts_below():
            logger.warning("mounts left below %s; not removing it", self.dir)
            return
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None
        bridge, self.bridge = self.bridge, None
        if bridge:
            _ip("link", "del", bridge)

    def _kill_containerd(self) -> None:
        """dockerd stops its containerd; make sure, by the pid file it wrote."""
        assert self.dir is not None
        for pid_file in (self.dir / "exec" / "containerd").glob("containerd.pid"):
            with contextlib.suppress(OSError, ValueError):
                pid = int(pid_file.read_text().strip())
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if str(self.dir).encode() in cmdline:
                    os.kill(pid, signal.SIGTERM)

    def _mounts_below(self) -> list[str]:
        prefix = str(self.dir) + "/"
        return sorted((m for m in _mounts() if m.startswith(prefix)), key=len, reverse=True)

    def __enter__(self) -> SecondDockerd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:  # pragma: no cover - manual use
    """Start a second daemon and wait (for trying things by hand): prints its variables."""
    import sys

    with SecondDockerd(tls="--tls" in sys.argv) as daemon:
        print(json.dumps(daemon.env), flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":  # pragma: no cover
    main()
