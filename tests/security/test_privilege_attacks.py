"""Privileges: a non-root user with no capabilities, no new privileges, Docker's default seccomp."""

from __future__ import annotations

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.both_kernels]  # the sandbox kernel decides the outcome

PROBE = """
import ctypes, errno, subprocess, time

status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
F["ids"] = [os.getuid(), os.geteuid(), os.getgid(), os.getegid(), os.getgroups()]
KEYS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp")
F["status"] = {k: status.get(k, "").strip() for k in KEYS}  # gVisor shows no CapAmb and NoNewPrivs lines
F["no_new_privs"] = ctypes.CDLL(None).prctl(39, 0, 0, 0, 0)  # PR_GET_NO_NEW_PRIVS, on either kernel

found = subprocess.run(["find", "/", "-xdev", "-perm", "/6000", "-type", "f"], capture_output=True, text=True)
F["setuid_binaries"] = sorted(found.stdout.split())

# Run a setuid-root binary and look at its effective uid while it waits for a password.
su = subprocess.Popen(["su", "root", "-c", "id -u > /tmp/su-ran"], stdin=subprocess.PIPE,
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
time.sleep(0.5)
try:
    uids = [l for l in open(f"/proc/{su.pid}/status").read().splitlines() if l.startswith("Uid:")]
except OSError as e:
    uids = [f"unreadable: {e}"]
out, _ = su.communicate(b"wrong-password\\n", timeout=30)
F["su_uids"] = uids
F["su_became_root"] = os.path.exists("/tmp/su-ran")
F["su_exit"] = su.returncode

def unshare(flag):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(flag) == 0:
        return "UNSHARED"
    return errno.errorcode.get(ctypes.get_errno(), "?")

F["unshare"] = {"user": unshare(0x10000000), "mount": unshare(0x00020000), "net": unshare(0x40000000)}
F["unshare_cmd"] = subprocess.run(["unshare", "-Ur", "id", "-u"], capture_output=True, text=True).returncode
libc = ctypes.CDLL(None, use_errno=True)
F["setuid0"] = "OK" if libc.setuid(0) == 0 else errno.errorcode.get(ctypes.get_errno(), "?")
save()
from llm_client import write_answer
write_answer("probed")
"""


def test_no_root_no_capabilities_no_new_privileges(attack_run, finding, sandbox_runtime):
    f = finding(
        "privileges", "become root or gain capabilities",
        tried="read uid, capabilities, NoNewPrivs and seccomp mode; list setuid/setgid binaries "
              "(find / -perm /6000) and run a setuid-root one (su); setuid(0); unshare user, mount and network "
              "namespaces (syscall and unshare -Ur)",
        expected="uid 1000, every capability set empty, no_new_privs 1; runc: seccomp filter mode 2 (Docker's "
                 "default profile) refuses every unshare; gVisor: no seccomp filter inside (mode 0), its own kernel "
                 "serves the calls, so namespaces (and uid 0 in a new user namespace) exist only inside gVisor's "
                 "kernel, never on the host; setuid bits have "
                 "no effect; every attempt refused",
    )
    found = attack_run(PROBE).findings
    assert found, "the probe did not run"
    uid, euid, gid, egid, groups = found["ids"]
    assert uid != 0 and euid != 0 and gid != 0 and egid != 0 and 0 not in groups
    status = found["status"]
    assert status["CapEff"] and status["CapBnd"], status
    assert all(int(status[k] or "0", 16) == 0 for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")), status
    gvisor = sandbox_runtime == "runsc"
    assert found["no_new_privs"] == 1 and status["Seccomp"] == ("0" if gvisor else "2"), (found["no_new_privs"], status)
    assert not found["su_became_root"] and found["su_exit"] != 0
    assert all(" 0" not in line.split(":", 1)[1] for line in found["su_uids"]), found["su_uids"]
    if gvisor:  # namespaces of gVisor's kernel: the host never sees them (no OCI seccomp: isolation.py says why)
        assert set(found["unshare"].values()) == {"UNSHARED"}, found["unshare"]
        assert found["setuid0"] in ("EPERM", "EINVAL")  # after the unshare: uid 1000 is unmapped in the new namespace
    else:
        assert set(found["unshare"].values()) == {"EPERM"}, found["unshare"]
        assert found["unshare_cmd"] != 0
        assert found["setuid0"] == "EPERM"
    f.observed = (f"uid/gid {uid}/{gid}; capabilities all 0; no_new_privs {found['no_new_privs']}, Seccomp "
                  f"{status['Seccomp']}; {len(found['setuid_binaries'])} setuid binaries in the image "
                  f"({', '.join(p.rsplit('/', 1)[-1] for p in found['setuid_binaries'])}) but su ran with "
                  f"{found['su_uids'][0].split(':', 1)[1].split()} and failed; setuid(0) {found['setuid0']}; "
                  f"unshare {found['unshare']}")
