"""Network: the sandbox has loopback only; the broker socket is its one way out."""

from __future__ import annotations

from pathlib import Path

import pytest
from security_support import host_ip
from support import FAKE_UPSTREAM_KEY

pytestmark = [pytest.mark.docker, pytest.mark.both_kernels]  # the sandbox kernel decides the outcome

PROBE = """
import socket
from urllib.parse import urlparse

def connect(family, address, timeout=3.0):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(address)
        return "CONNECTED"
    except OSError as e:
        return type(e).__name__ + (f" ({e.strerror})" if e.strerror else "")
    finally:
        s.close()

F["interfaces"] = sorted(os.listdir("/sys/class/net"))
F["proc_net_dev"] = sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").read().splitlines()[2:])
F["tcp"] = {f"{h}:{p}": connect(socket.AF_INET, (h, p)) for h, p in TARGETS}
F["tcp6_loopback_model"] = connect(socket.AF_INET6, ("::1", MODEL_PORT))
try:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.sendto(b"x", ("8.8.8.8", 53))
    F["udp"] = "SENT"
except OSError as e:
    F["udp"] = type(e).__name__
try:
    socket.getaddrinfo("example.com", 443)
    F["dns"] = "RESOLVED"
except OSError as e:
    F["dns"] = type(e).__name__
try:
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    F["raw_socket"] = "OPENED"
except OSError as e:
    F["raw_socket"] = type(e).__name__
F["docker_sockets"] = {p: os.path.exists(p) for p in DOCKER_SOCKETS}
F["docker_socket_connect"] = {p: connect(socket.AF_UNIX, p) for p in DOCKER_SOCKETS}
F["host_abstract_sockets"] = {n: connect(socket.AF_UNIX, "\\0" + n) for n in ABSTRACT}
save()
from llm_client import write_answer
write_answer("probed")
"""


def _host_abstract_sockets(limit: int = 6) -> list[str]:
    names = []
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 8 and parts[7].startswith("@"):
            names.append(parts[7][1:])
    return sorted(set(names))[:limit]


def test_no_network_but_loopback(attack_run, scripted, finding):
    f = finding(
        "network", "reach the network or host services",
        tried="list interfaces; TCP to the docker bridge 172.17.0.1, the host's own IP, the cloud metadata "
              "address and the scripted model's loopback port (v4 and v6); UDP and DNS; a raw socket",
        expected="only `lo`; every connection fails; no request reaches the model server except through the broker",
    )
    port = int(scripted.url.rsplit(":", 1)[1])
    ip = host_ip()
    targets = [(h, p) for h in ("172.17.0.1", ip) for p in (22, 80, 2375, 2376, port)]
    targets += [("127.0.0.1", port), ("169.254.169.254", 80)]
    script = (f"TARGETS = {targets!r}\nMODEL_PORT = {port}\nDOCKER_SOCKETS = []\nABSTRACT = []\n") + PROBE
    run = attack_run(script, timeout_seconds=90)
    found = run.findings
    assert run.result.success, run.result.errors
    assert found["interfaces"] == ["lo"]
    assert found["proc_net_dev"] == ["lo"]
    assert all(outcome != "CONNECTED" for outcome in found["tcp"].values()), found["tcp"]
    assert found["tcp6_loopback_model"] != "CONNECTED"
    assert found["udp"] != "SENT" and found["dns"] != "RESOLVED" and found["raw_socket"] != "OPENED"
    # Everything the model server saw came from the broker, with the broker's key.
    assert {r.headers.get("x-api-key") for r in scripted.requests} == {FAKE_UPSTREAM_KEY}
    outcomes = sorted(set(found["tcp"].values()))
    f.observed = (f"interfaces {found['interfaces']}; {len(found['tcp']) + 1} TCP attempts: {', '.join(outcomes)}; "
                  f"UDP {found['udp']}, DNS {found['dns']}, raw socket {found['raw_socket']}")


def test_no_docker_api_or_host_unix_sockets(attack_run, finding):
    f = finding(
        "network", "talk to the Docker API or other host unix sockets",
        tried="look for and connect to /var/run/docker.sock, /run/docker.sock, containerd's socket; connect "
              "to abstract unix sockets that exist on the host (taken from the host's /proc/net/unix)",
        expected="no Docker socket in the sandbox; host abstract sockets unreachable (own network namespace)",
    )
    sockets = ["/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock"]
    abstract = _host_abstract_sockets()
    script = (f"TARGETS = []\nMODEL_PORT = 9\nDOCKER_SOCKETS = {sockets!r}\nABSTRACT = {abstract!r}\n") + PROBE
    found = attack_run(script).findings
    assert not any(found["docker_sockets"].values()), found["docker_sockets"]
    assert all(v != "CONNECTED" for v in found["docker_socket_connect"].values())
    assert all(v != "CONNECTED" for v in found["host_abstract_sockets"].values()), found["host_abstract_sockets"]
    f.observed = (f"docker sockets absent ({', '.join(sorted(set(found['docker_socket_connect'].values())))}); "
                  f"{len(abstract)} host abstract sockets: "
                  f"{', '.join(sorted(set(found['host_abstract_sockets'].values()))) or 'none on this host'}")
