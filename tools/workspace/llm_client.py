"""Call the model from your scripts, through the run's broker.

This module is all a script needs to make subcalls. It talks only to the broker
named by ``FSRLM_BROKER_URL`` (through ``FSRLM_BROKER_SOCKET`` instead, where a Docker
sandbox has the broker's socket mounted) and sends the run token (``FSRLM_BROKER_TOKEN``);
it holds no API key, and the broker enforces every limit (subcalls per script,
total subcalls, scripts, dollar budget, depth). Standard library only.

Typical use (``PYTHONPATH`` already contains the workspace's ``tools/``)::

    from llm_client import llm_query, llm_batch, append_artifact, write_answer

    summary = llm_query("Summarise:\\n" + text, max_tokens=300)
    answers = llm_batch([f"Count the errors in:\\n{c}" for c in chunks])

Errors (all raised from this module)::

    LLMError                 any failed call: .status (HTTP status or None), .error_type
     +-- BudgetExceeded      a limit refused the call (HTTP 402): .limit names it

The script name the broker counts calls against (header ``x-fsrlm-script``) is
the path of the running script relative to ``FSRLM_WORKSPACE``, its basename when
it lives elsewhere, and ``<interactive>`` for ``python -c`` or a REPL.
"""

from __future__ import annotations

# Only what every script needs, imported at once: a script pays for each module at every start.
# http.client, not urllib.request (which adds hashlib, tempfile, shutil and more), and so never a
# proxy; tempfile only when an answer is written.
import fcntl
import http.client
import json
import os
import socket
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from typing import Any

__all__ = [
    "LLMError", "BudgetExceeded", "llm_query", "llm_batch", "rlm_query", "check_budget",
    "append_artifact", "write_answer", "LLMClient", "call_claude",
]

TIMEOUT_S = 600.0
DEFAULT_CONCURRENCY = 8


class _UnixSocketConnection(http.client.HTTPConnection):
    """HTTP to the broker over the unix socket a Docker sandbox has mounted (``FSRLM_BROKER_SOCKET``)."""

    def __init__(self, path: str, timeout: float | None = None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def _broker_socket() -> str | None:
    path = os.environ.get("FSRLM_BROKER_SOCKET")
    return path if path and os.path.exists(path) else None


def _connection(base: str, socket_path: str | None) -> tuple[http.client.HTTPConnection, str]:
    """A connection to the broker, and the path its routes are under. Never a proxy. Where the
    broker's socket is mounted (a Docker sandbox), straight to it: one hop fewer than the in-sandbox
    relay (which the CLI needs, as it speaks TCP only); the same broker, token and limits."""
    parts = urllib.parse.urlsplit(base)
    if socket_path:
        return _UnixSocketConnection(socket_path, TIMEOUT_S), parts.path
    if parts.scheme != "http" or not parts.hostname:
        raise LLMError(f"FSRLM_BROKER_URL must be an http:// URL (got {base!r})", error_type="connection_error")
    try:
        port = parts.port or 80
    except ValueError:
        raise LLMError(f"FSRLM_BROKER_URL has no valid port (got {base!r})", error_type="connection_error") from None
    return http.client.HTTPConnection(parts.hostname, port, timeout=TIMEOUT_S), parts.path


_SOCKET = _broker_socket()
_ARTIFACT_LOCK = threading.Lock()


class LLMError(Exception):
    """A call through the broker failed.

    ``status`` is the HTTP status (None when no answer came back, e.g. the broker is
    unreachable or timed out); ``error_type`` is the broker's error kind
    (``invalid_request_error``, ``authentication_error``, ``request_too_large``,
    ``upstream_error``, ``upstream_timeout``, …) or ``connection_error``/``timeout``.
    """

    def __init__(self, message: str, *, status: int | None = None, error_type: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type


class BudgetExceeded(LLMError):
    """The broker refused the call because a limit is used up (HTTP 402).

    ``limit`` names it: ``max_subcalls_per_script``, ``max_total_subcalls``,
    ``max_scripts``, ``max_budget_usd`` or ``max_depth``. Retrying will not help;
    work with what you have (see ``check_budget()``).
    """

    def __init__(self, message: str, *, limit: str | None = None, status: int | None = 402,
                 error_type: str | None = "limit_exceeded") -> None:
        super().__init__(message, status=status, error_type=error_type)
        self.limit = limit


def _script_name() -> str:
    """The running script's path relative to FSRLM_WORKSPACE (see module docstring)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if not path:
        arg0 = sys.argv[0] if sys.argv else ""
        path = arg0 if arg0 and arg0 != "-c" and os.path.isfile(arg0) else None
    if not path:
        return "<interactive>"
    path = os.path.realpath(path)
    workspace = os.environ.get("FSRLM_WORKSPACE")
    if workspace:
        root = os.path.realpath(workspace)
        try:
            if os.path.commonpath([root, path]) == root:
                return os.path.relpath(path, root).replace(os.sep, "/")
        except ValueError:
            pass
    return os.path.basename(path)


SCRIPT_NAME = _script_name()  # computed at import, before the script can chdir
_SCRIPT_HEADER = (SCRIPT_NAME if SCRIPT_NAME.isascii() and SCRIPT_NAME.isprintable()
                  else urllib.parse.quote(SCRIPT_NAME, safe="/<>"))  # header values must be ASCII


REFUSED_GRACE_S = 5.0  # a sandbox's relay starts beside the agent: it may refuse for its first moments


def _send(base: str, method: str, route: str, data: bytes | None, headers: dict[str, str]) -> tuple[int, str, bytes]:
    """Send one request; return (status, reason, body). A refused connection (nothing was sent) is
    tried again for a few seconds."""
    deadline = time.monotonic() + REFUSED_GRACE_S
    while True:
        conn, prefix = _connection(base, _SOCKET)
        try:
            conn.request(method, prefix + route, body=data, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.reason, resp.read()
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
        finally:
            conn.close()
        time.sleep(0.05)


def _request(method: str, route: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """Send one request to the broker and return its JSON answer, or raise LLMError."""
    base = os.environ.get("FSRLM_BROKER_URL", "").rstrip("/")
    if not base:
        raise LLMError("FSRLM_BROKER_URL is not set: run this script inside an fsRLM workspace",
                       error_type="connection_error")
    headers = {
        "x-api-key": os.environ.get("FSRLM_BROKER_TOKEN", ""),
        "x-fsrlm-script": _SCRIPT_HEADER,
        "accept": "application/json",
    }
    data = None
    if body is not None:
        data = json.dumps(body).encode("utf-8")
        headers["content-type"] = "application/json"
    try:
        status, reason, raw = _send(base, method, route, data, headers)
    except TimeoutError:
        raise LLMError(f"the broker did not answer within {TIMEOUT_S:.0f} s", error_type="timeout") from None
    except (OSError, http.client.HTTPException) as exc:  # refused, reset, gone…
        where = f"FSRLM_BROKER_SOCKET={_SOCKET!r}" if _SOCKET else f"FSRLM_BROKER_URL={base!r}"
        raise LLMError(f"the broker is not reachable at {where}: {exc}",
                       error_type="connection_error") from None
    if status >= 400:
        raise _from_http_error(status, reason, raw)
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise LLMError(f"the broker sent an unexpected answer: {raw[:200]!r}", status=200, error_type="bad_response")
    return answer


def _from_http_error(status: int, reason: str, raw: bytes) -> LLMError:
    """Map a broker error answer (JSON error body) to LLMError / BudgetExceeded."""
    kind, message, limit = None, raw.decode("utf-8", "replace").strip()[:500], None
    try:
        err = json.loads(raw)["error"]
        kind, limit = err.get("type"), err.get("limit")
        message = err.get("message") or message
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    message = message or reason or "no message"
    if status == 402 or kind == "limit_exceeded":
        text = f"limit reached ({limit}): {message}" if limit else f"limit reached: {message}"
        return BudgetExceeded(text, limit=limit, status=status, error_type=kind or "limit_exceeded")
    return LLMError(f"broker error {status} ({kind or 'unknown'}): {message}", status=status, error_type=kind)


def llm_query(prompt: str, *, system: str | None = None, model: str | None = None,
              max_tokens: int | None = None) -> str:
    """Ask the model one question and return its text answer.

    ``model`` defaults to the run's submodel; ``max_tokens`` is clamped by the broker
    to the run's ``max_tokens_per_subcall``. Identical calls may be answered from the
    broker's cache. Raises ``BudgetExceeded`` when a limit refuses the call and
    ``LLMError`` for any other failure (no retries here: the broker already retries
    transient upstream errors).
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, not {type(prompt).__name__}")
    body = {"messages": [{"role": "user", "content": prompt}], "system": system,
            "model": model, "max_tokens": max_tokens}
    answer = _request("POST", "/fsrlm/v1/subcall", body)
    text = answer.get("text")
    if not isinstance(text, str):
        raise LLMError("the broker's answer has no 'text' field", status=200, error_type="bad_response")
    return text


def _concurrency() -> int:
    try:
        return max(1, int(os.environ.get("FSRLM_SUBCALL_CONCURRENCY", DEFAULT_CONCURRENCY)))
    except ValueError:
        return DEFAULT_CONCURRENCY


def llm_batch(prompts: list[str], *, system: str | None = None, model: str | None = None,
              max_tokens: int | None = None, return_exceptions: bool = False) -> list[Any]:
    """Run ``llm_query`` on every prompt in parallel; answers come back in input order.

    At most ``FSRLM_SUBCALL_CONCURRENCY`` (default 8) calls are in flight at once.
    Failure semantics:

    * a limit refuses an item: no further items are sent, the ones in flight finish,
      then ``BudgetExceeded`` is raised (it wins over any other error);
    * any other failure (e.g. ``upstream_error``): the other items still run, then
      ``LLMError`` of the first failed item (in input order) is raised;
    * ``return_exceptions=True``: nothing is raised; the list holds the exception
      object in place of each failed item's string. Items left unsent after a limit
      refusal hold a ``BudgetExceeded`` too. Test with ``isinstance(r, str)``.
    """
    prompts = list(prompts)
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"prompts[{i}] must be a str, not {type(p).__name__}")
    if not prompts:
        return []
    stop = threading.Event()
    refusal: list[BudgetExceeded] = []

    def one(prompt: str) -> str | LLMError | None:
        if stop.is_set():
            return None  # never sent
        try:
            return llm_query(prompt, system=system, model=model, max_tokens=max_tokens)
        except BudgetExceeded as exc:
            refusal.append(exc)
            stop.set()
            return exc
        except LLMError as exc:
            return exc

    workers = min(_concurrency(), len(prompts))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llm_batch") as pool:
        results: list[Any] = list(pool.map(one, prompts))
    for i, r in enumerate(results):
        if r is None:
            first = refusal[0]
            results[i] = BudgetExceeded(f"not sent: an earlier item was refused ({first})",
                                        limit=first.limit, status=first.status, error_type=first.error_type)
    if not return_exceptions:
        if refusal:
            raise refusal[0]
        for r in results:
            if isinstance(r, LLMError):
                raise r
    return results


def rlm_query(prompt: str, context: str) -> str:
    """Run a nested RLM (depth + 1) on ``context`` with question ``prompt``; return its answer.

    Use it for a sub-problem too large for one ``llm_query``. Raises ``BudgetExceeded``
    when refused (``limit == "max_depth"`` at the deepest level, or another limit), and
    ``LLMError`` (error_type ``rlm_failed``) when the nested run finished without success.
    """
    answer = _request("POST", "/fsrlm/v1/rlm_query", {"prompt": prompt, "context": context})
    if not answer.get("success", True):
        raise LLMError(f"nested RLM run {answer.get('run_id')} failed ({answer.get('stop_reason')}); "
                       f"partial answer: {str(answer.get('answer', ''))[:300]!r}",
                       status=200, error_type="rlm_failed")
    return str(answer.get("answer", ""))


def check_budget() -> dict[str, Any]:
    """What is used and what is left: ``subcalls_used``/``max_total_subcalls``,
    ``script_subcalls_used``/``max_subcalls_per_script`` (for this script),
    ``scripts_used``/``max_scripts``, ``spent_usd``/``max_budget_usd`` (``reserved_usd``: held by
    calls in flight), ``depth``/``max_depth``, ``nested_running``/``max_concurrent_nested``,
    ``cache_hits``."""
    return _request("GET", "/fsrlm/v1/budget")


def _workspace_path(path: str) -> str:
    """``path`` itself when absolute, else relative to FSRLM_WORKSPACE (or the cwd)."""
    if os.path.isabs(path):
        return path
    return os.path.join(os.environ.get("FSRLM_WORKSPACE") or os.getcwd(), path)


def append_artifact(record: dict[str, Any], path: str = "state/artifacts.jsonl") -> None:
    """Append ``record`` as one JSON line to ``path`` (default ``state/artifacts.jsonl``).

    Safe to call from many threads and many processes at once: each line is written
    whole under an exclusive file lock. Raises TypeError if the record is not JSON-able.
    """
    if not isinstance(record, dict):
        raise TypeError(f"record must be a dict, not {type(record).__name__}")
    line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    target = _workspace_path(path)
    os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    with _ARTIFACT_LOCK:
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)  # closing releases the lock


def write_answer(text: str) -> str:
    """Write the final answer to ``output/answer.md`` atomically; return its path.

    Readers never see a half-written file: the text goes to a temporary file that
    then replaces the answer in one step. Calling it again overwrites the answer.
    """
    import tempfile

    target = _workspace_path(os.path.join("output", "answer.md"))
    folder = os.path.dirname(target)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".answer.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return target


class LLMClient:
    """Seed-compatible wrapper holding default ``model``, ``max_tokens`` and ``system``.

    ``LLMClient(model="...").query(prompt)`` equals ``llm_query(prompt, model="...")``;
    keyword arguments given to a method override the defaults.
    """

    def __init__(self, model: str | None = None, max_tokens: int | None = None,
                 system: str | None = None) -> None:
        self.model = model
        self.max_tokens = max_tokens
        self.system = system

    def _kw(self, kw: dict[str, Any]) -> dict[str, Any]:
        merged: dict[str, Any] = {"model": self.model, "max_tokens": self.max_tokens, "system": self.system}
        merged.update(kw)
        return merged

    def query(self, prompt: str, **kw: Any) -> str:
        """Same as ``llm_query`` with this client's defaults."""
        return llm_query(prompt, **self._kw(kw))

    def batch(self, prompts: list[str], **kw: Any) -> list[Any]:
        """Same as ``llm_batch`` with this client's defaults."""
        return llm_batch(prompts, **self._kw(kw))

    def call_claude(self, prompt: str, **kw: Any) -> str:
        """Seed name for ``query``."""
        return self.query(prompt, **kw)

    def check_budget(self) -> dict[str, Any]:
        """Same as the module's ``check_budget``."""
        return check_budget()


def call_claude(prompt: str, **kw: Any) -> str:
    """Seed name for ``llm_query``."""
    return llm_query(prompt, **kw)
