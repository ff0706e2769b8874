"""``ssh://`` Docker hosts, the way the docker command line reaches them: ``ssh HOST docker system dial-stdio``.

``SSHDialer`` listens on a private unix socket (a 0700 temp folder) and runs,
for every connection made to it, ``ssh … -- HOST docker system dial-stdio``,
piping bytes both ways and passing half-closes on. The docker SDK is pointed
at that socket, so API calls and the hijacked attach/exec streams are all
plain local sockets. ssh runs with ``BatchMode`` (never a password prompt)
and a control master, so only the first connection pays for a handshake.

One dialer per host and process (``SSHDialer.shared``), closed at exit.
Credentials for the model never take this path: it carries the Docker API only.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import urllib.parse

from fsrlm.errors import ExecutorUnavailable

logger = logging.getLogger(__name__)

_dialers: dict[str, SSHDialer] = {}
_lock = threading.Lock()


def ssh_command(url: str, control_path: str) -> list[str]:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme != "ssh" or not parsed.hostname:
        raise ExecutorUnavailable(f"{url!r} is not an ssh://[user@]host[:port] address.")
    args = ["ssh", "-o", "BatchMode=yes", "-o", "ControlMaster=auto", "-o", f"ControlPath={control_path}",
            "-o", "ControlPersist=60", "-o", "ServerAliveInterval=15"]
    if parsed.username:
        args += ["-l", parsed.username]
    if parsed.port:
        args += ["-p", str(parsed.port)]
    return [*args, "--", parsed.hostname, "docker", "system", "dial-stdio"]


class SSHDialer:
    """A local unix socket whose every connection is ``docker system dial-stdio`` on the ssh host."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._dir = tempfile.mkdtemp(prefix="fsrlm-ssh-")
        os.chmod(self._dir, 0o700)
        self.socket_path = os.path.join(self._dir, "docker.sock")
        self._command = ssh_command(url, os.path.join(self._dir, "cm-%C"))
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(self.socket_path)
        self._server.listen(64)
        self._procs: set[subprocess.Popen] = set()
        self.last_error = ""
        self._closed = False
        threading.Thread(target=self._accept, name=f"fsrlm-ssh-{url}", daemon=True).start()

    @classmethod
    def shared(cls, url: str) -> SSHDialer:
        with _lock:
            dialer = _dialers.get(url)
            if dialer is None or dialer._closed:
                dialer = _dialers[url] = cls(url)
            return dialer

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            proc = subprocess.Popen(self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True)
        except OSError as e:
            self.last_error = f"cannot run ssh: {e}"
            conn.close()
            return
        self._procs.add(proc)
        to_ssh = threading.Thread(target=self._upstream, args=(conn, proc), daemon=True)
        to_ssh.start()
        try:
            while block := os.read(proc.stdout.fileno(), 256 * 1024):
                conn.sendall(block)
        except (OSError, ValueError):
            pass
        finally:
            self._note_failure(proc)  # before the client sees the connection end, so it can tell why
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_WR)
            to_ssh.join(5)
            self._stop(proc)
            conn.close()

    def _note_failure(self, proc: subprocess.Popen) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(0.5)
        if proc.returncode in (None, 0):
            return
        with contextlib.suppress(OSError, ValueError):  # ValueError: close() got there first
            err = proc.stderr.read().decode(errors="replace").strip()
            self.last_error = err.splitlines()[-1] if err else f"ssh exited with status {proc.returncode}"
            logger.debug("ssh %s: %s", self.url, err)

    def _upstream(self, conn: socket.socket, proc: subprocess.Popen) -> None:
        try:
            while block := conn.recv(256 * 1024):
                proc.stdin.write(block)
                proc.stdin.flush()
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                proc.stdin.close()  # the half-close reaches the engine through dial-stdio

    def _stop(self, proc: subprocess.Popen) -> None:
        self._procs.discard(proc)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            with contextlib.suppress(OSError, ValueError):
                f.close()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._server.close()
        for proc in list(self._procs):
            self._stop(proc)
        with contextlib.suppress(OSError, subprocess.SubprocessError):  # the control master, if any
            options, host = self._command[:-5], self._command[-4]
            subprocess.run([*options, "-O", "exit", "--", host], capture_output=True, timeout=5)
        shutil.rmtree(self._dir, ignore_errors=True)


@atexit.register
def _close_all() -> None:
    with _lock:
        for dialer in _dialers.values():
            dialer.close()
        _dialers.clear()
