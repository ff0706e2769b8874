"""Host filesystem: the workspace is the only writable host path, and the host never follows a link out of it."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

pytestmark = [pytest.mark.docker, pytest.mark.both_kernels]  # the sandbox kernel decides the outcome

SECRET = "HOST-SECRET-7d1c0f-never-in-a-result"


def _no_secret_in(result, workspace: Path | None = None) -> None:
    dumped = result.model_dump_json()
    assert SECRET not in dumped
    if workspace is not None and (workspace / "state" / "events.jsonl").is_file() \
            and not (workspace / "state" / "events.jsonl").is_symlink():
        assert SECRET not in (workspace / "state" / "events.jsonl").read_text(errors="replace")


WRITES = """
import errno, stat, subprocess, socket

def attempt(fn):
    try:
        fn()
        return "DONE"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))

def create_in(d):
    path = os.path.join(d, ".fsrlm-escape-probe")
    def go():
        with open(path, "w") as fh:
            fh.write("x")
        os.unlink(path)
    return go

outside = ["/", "/etc", "/usr/local/bin", "/opt/fsrlm", "/run/fsrlm", "/var", "/root", "/proc/sys/kernel",
           "/sys/fs/cgroup", "/dev"]
F["create"] = {d: attempt(create_in(d)) for d in outside}
F["modify"] = {
    "/opt/fsrlm/relay.py": attempt(lambda: open("/opt/fsrlm/relay.py", "a").close()),
    "/usr/local/bin/claude": attempt(lambda: open("/usr/local/bin/claude", "ab").close()),
    "/etc/passwd": attempt(lambda: open("/etc/passwd", "a").close()),
    "/etc/claude-code/managed-settings.json":
        attempt(lambda: open("/etc/claude-code/managed-settings.json", "a").close()),
    "/proc/sysrq-trigger": attempt(lambda: open("/proc/sysrq-trigger", "w").close()),
    "unlink /run/fsrlm/broker.sock": attempt(lambda: os.unlink("/run/fsrlm/broker.sock")),
}
F["privileged_ops"] = {
    "mknod block device": attempt(lambda: os.mknod("/tmp/sda", stat.S_IFBLK | 0o600, os.makedev(8, 0))),
    "mount tmpfs": "refused" if subprocess.run(["mount", "-t", "tmpfs", "none", "/tmp"],
                                               capture_output=True).returncode else "DONE",
    "chroot": attempt(lambda: os.chroot("/tmp")),
    "sethostname": attempt(lambda: socket.sethostname("owned")),
}
# Under gVisor the mknod succeeds in gVisor's own tmpfs: the node must still lead to no device.
F["open_device"] = attempt(lambda: os.close(os.open("/tmp/sda", os.O_RDONLY))) if os.path.exists("/tmp/sda") else None
mounts = []
for line in open("/proc/mounts"):
    dev, point, fstype, opts = line.split()[:4]
    if "rw" in opts.split(","):
        mounts.append((point, fstype, opts))
F["writable_mounts"] = {p: [t, o] for p, t, o in mounts if attempt(create_in(p)) == "DONE"}
save()
from llm_client import write_answer
write_answer("probed")
"""


def test_writes_outside_the_workspace_fail(attack_run, finding, sandbox_runtime):
    f = finding(
        "host filesystem", "write outside the workspace",
        tried="create files in /, /etc, /usr/local/bin, /opt/fsrlm, /run/fsrlm, /var, /root, /proc/sys, "
              "/sys/fs/cgroup, "
              "/dev; modify the relay, the CLI, /etc/passwd, the managed settings; remove the broker socket; "
              "mknod, mount, chroot, sethostname; then try every read-write mount",
        expected="all refused; the only writable places are the workspace bind mount and size-capped tmpfs "
                 "(nosuid, nodev); under gVisor /tmp is gVisor's own tmpfs: mknod makes a node there that opens "
                 "no device (ENXIO), and its mount options are not shown",
    )
    found = attack_run(WRITES).findings
    assert found, "the probe did not run"
    assert all(v != "DONE" for v in found["create"].values()), found["create"]
    assert all(v != "DONE" for v in found["modify"].values()), found["modify"]
    gvisor = sandbox_runtime == "runsc"
    privileged = dict(found["privileged_ops"])
    if gvisor and privileged["mknod block device"] == "DONE":  # in gVisor's memory, not on the host
        assert found["open_device"] == "ENXIO", found["open_device"]
        privileged.pop("mknod block device")
    assert all(v != "DONE" for v in privileged.values()), found["privileged_ops"]
    writable = found["writable_mounts"]
    assert "/workspace" in writable
    for point, (fstype, opts) in writable.items():
        if point != "/workspace":
            assert fstype in ("tmpfs", "mqueue"), (point, fstype)
            if not gvisor:  # gVisor's /proc/mounts does not list nosuid,nodev (its tmpfs lives in its memory)
                assert "nosuid" in opts.split(",") and "nodev" in opts.split(","), (point, opts)
    refusals = sorted(set(found["create"].values()) | set(found["modify"].values()))
    f.observed = (f"{len(found['create'])} creates and {len(found['modify'])} modifications refused "
                  f"({', '.join(refusals)}); {_privileged_summary(found)}; writable: "
                  + ", ".join(f"{p} ({t})" for p, (t, _) in sorted(writable.items())))


def _privileged_summary(found) -> str:
    ops = found["privileged_ops"]
    if ops.get("mknod block device") == "DONE":
        return (f"mknod made a node in gVisor's tmpfs that opens no device ({found['open_device']}); "
                "mount/chroot/sethostname refused")
    return "mknod/mount/chroot/sethostname refused"


LINK_READS = {
    # variant: (what the agent plants, the script)
    "file symlinks": (
        "output/answer.md and state/artifacts.jsonl as symlinks to host files",
        """
os.symlink(HOST_FILE, "output/answer.md")
os.symlink(HOST_JSONL, "state/artifacts.jsonl")
F["planted"] = [os.readlink("output/answer.md"), os.readlink("state/artifacts.jsonl")]
""",
    ),
    "directory symlinks": (
        "output/ and state/ replaced by symlinks to a host folder holding answer.md and artifacts.jsonl",
        """
import shutil
shutil.rmtree("output"); shutil.rmtree("state")
os.symlink(HOST_DIR, "output")
os.symlink(HOST_DIR, "state")
F["planted"] = [os.readlink("output"), os.readlink("state")]
""",
    ),
    "hard links and FIFOs": (
        "hard links to image files (/etc/passwd) and to the broker socket; output/answer.md a hard link to "
        "input/prompt.md; state/artifacts.jsonl a FIFO",
        """
import errno
def link(src, dst):
    try:
        os.link(src, dst)
        return "LINKED"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
F["outside_links"] = {"/etc/passwd": link("/etc/passwd", "output/passwd"),
                      "/run/fsrlm/broker.sock": link("/run/fsrlm/broker.sock", "output/sock")}
F["inside_link"] = link("input/prompt.md", "output/answer.md")
os.mkfifo("state/artifacts.jsonl")
F["planted"] = ["hard link", "fifo"]
""",
    ),
}


@pytest.mark.parametrize("variant", list(LINK_READS))
def test_links_planted_for_the_orchestrator_to_read(attack_run, finding, tmp_path, variant):
    planted, body = LINK_READS[variant]
    f = finding(
        "host filesystem", f"read host files through the workspace: {variant}",
        tried=f"the agent plants {planted}; the orchestrator then reads the answer and artifacts",
        expected="nothing is read through a link; the result (answer, artifacts, errors, events) holds no host "
                 "content; the run ends with a defined stop reason",
    )
    host = tmp_path / "host"
    host.mkdir()
    (host / "secret.txt").write_text(SECRET)
    (host / "secret.jsonl").write_text(json.dumps({"secret": SECRET}) + "\n")
    (host / "answer.md").write_text(SECRET)
    (host / "artifacts.jsonl").write_text(json.dumps({"secret": SECRET}) + "\n")
    prompt = "the input"
    script = (f"HOST_FILE = {str(host / 'secret.txt')!r}\nHOST_JSONL = {str(host / 'secret.jsonl')!r}\n"
              f"HOST_DIR = {str(host)!r}\n" + body + "\nsave()\n")
    run = attack_run(script, prompt=prompt)
    result = run.result
    _no_secret_in(result, run.workspace)
    assert result.answer is None
    assert result.artifacts == []
    assert result.stop_reason == "no_answer", (result.stop_reason, result.errors)
    if variant == "hard links and FIFOs":
        assert set(run.findings["outside_links"].values()) == {"EXDEV"}, run.findings
        assert run.findings["inside_link"] == "LINKED"  # made, but never read
    f.observed = (f"answer None, artifacts [], stop_reason {result.stop_reason}; no host content in the result"
                  + (f"; links out of the workspace: {run.findings['outside_links']}"
                     if "outside_links" in run.findings else ""))


LINK_WRITES = """
from llm_client import llm_query, write_answer
import shutil
os.remove("state/subcalls.jsonl") if os.path.exists("state/subcalls.jsonl") else None
os.symlink(HOST_AUDIT, "state/subcalls.jsonl")
os.remove("state/events.jsonl") if os.path.exists("state/events.jsonl") else None
os.symlink(HOST_EVENTS, "state/events.jsonl")
shutil.rmtree("cache/llm")
os.symlink(HOST_DIR, "cache/llm")
os.symlink(HOST_DIR, "scratch/host-dir")
os.symlink(HOST_OWNED, "scratch/host-file")
answers = [llm_query(f"ECHO: call {i}") for i in range(3)]
F["answers"] = answers
save()
write_answer(" ".join(answers))
"""


def test_links_planted_where_the_host_writes(attack_run, finding, tmp_path):
    f = finding(
        "host filesystem", "make the host write through planted links",
        tried="state/subcalls.jsonl and state/events.jsonl as symlinks to host files, cache/llm/ as a symlink to a "
              "host folder, more links in scratch/; then subcalls (audit log and cache mirror writes), the end of "
              "the run (events, handing the workspace back with chown)",
        expected="host files and folder unchanged (content and owner); limits and metrics still counted from "
                 "the broker's memory",
    )
    host = tmp_path / "host"
    host.mkdir()
    owner = 4242
    targets = {name: host / name for name in ("audit.jsonl", "events.jsonl", "owned.txt")}
    for path in targets.values():
        path.write_text("original\n")
        os.chown(path, owner, owner)
    empty = host / "empty-dir"
    empty.mkdir()
    os.chown(empty, owner, owner)
    script = (f"HOST_AUDIT = {str(targets['audit.jsonl'])!r}\nHOST_EVENTS = {str(targets['events.jsonl'])!r}\n"
              f"HOST_DIR = {str(empty)!r}\nHOST_OWNED = {str(targets['owned.txt'])!r}\n" + LINK_WRITES)
    run = attack_run(script)
    assert run.result.success, run.result.errors
    assert run.result.answer == "call 0 call 1 call 2"
    for path in targets.values():
        assert path.read_text() == "original\n", path
        assert path.stat().st_uid == owner, path
    assert list(empty.iterdir()) == []
    assert empty.stat().st_uid == owner
    assert run.result.metrics.subcalls == 3  # counted in memory, not from the (redirected) audit file
    assert (run.workspace / "state" / "subcalls.jsonl").is_symlink()  # left as planted, never followed
    f.observed = ("host files unchanged (content, owner uid 4242), host folder still empty; the run succeeded "
                  f"with {run.result.metrics.subcalls} subcalls counted")


SETUID = """
import shutil, stat
shutil.copy("/usr/bin/python3", "scratch/suid-python")
os.chmod("scratch/suid-python", 0o6755)
shutil.copy("/usr/bin/python3", "scratch/suid-linked")
os.chmod("scratch/suid-linked", 0o4755)
os.link("scratch/suid-linked", "scratch/suid-linked-2")
os.mkdir("scratch/sgid-dir")
os.chmod("scratch/sgid-dir", 0o2777)
F["modes"] = {p: oct(os.stat(p).st_mode) for p in ("scratch/suid-python", "scratch/suid-linked")}
save()
from llm_client import write_answer
write_answer("planted")
"""


def test_setuid_files_left_in_the_workspace(attack_run, finding):
    f = finding(
        "host filesystem", "leave setuid executables on the host",
        tried="copy python3 into scratch/ with the setuid and setgid bits (one copy also hard-linked), a setgid "
              "world-writable folder; the workspace is a host folder",
        expected="after the run no file in the run folder keeps a setuid/setgid bit, and the run folder is "
                 "private to its owner (0700)",
    )
    run = attack_run(SETUID)
    assert run.result.success, run.result.errors
    ws = run.workspace
    assert all(int(m, 8) & stat.S_ISUID for m in run.findings["modes"].values())  # planted inside
    special = []
    for path in ws.rglob("*"):
        st = path.lstat()
        if stat.S_ISREG(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
            special.append(f"{path.relative_to(ws)} uid={st.st_uid} mode={oct(st.st_mode)}")
    mode = stat.S_IMODE(ws.stat().st_mode)
    f.observed = (f"setuid/setgid files left: {special or 'none'}; run folder mode {oct(mode)}, "
                  f"owner uid {ws.stat().st_uid}")
    assert special == []
    assert mode & 0o077 == 0, oct(mode)
