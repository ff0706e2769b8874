"""Every error a user of fsRLM can hit.

Lower-level errors (docker SDK, aiohttp, pydantic) are mapped into this tree
once, at the boundary where they happen, with a message that says what to do.

    FsrlmError
    ├── ConfigError(FsrlmError, ValueError)        bad configuration, before any work starts
    ├── CredentialsError(FsrlmError)               the upstream has no key / AWS credentials
    ├── InputError(FsrlmError, ValueError)         unusable prompt, messages or attachments
    │   └── PolicyRefused(InputError)              the broker's request policy refused a call from the sandbox
    ├── WorkspaceError(FsrlmError, OSError)        the run folder cannot be made or read
    ├── UpstreamError(FsrlmError)                  the model API answered with an error
    │   ├── UpstreamAuthError(UpstreamError)       401/403 from the model API: not retried
    │   └── UpstreamUnreachable(UpstreamError)     the configured model API cannot be reached at all
    ├── LimitExceeded(FsrlmError)                  a run limit refused a call
    └── SandboxError(FsrlmError)                   the executor could not run the agent
        ├── ExecutorUnavailable(SandboxError)      e.g. Docker not installed or daemon down
        ├── ImageError(SandboxError)               the sandbox image is missing or cannot be built
        └── ArchiveError(SandboxError)             a workspace archive from a remote sandbox is hostile or too big

A run that runs out of time is not an error: its result says ``stop_reason="timeout"``.
"""

from __future__ import annotations


class FsrlmError(Exception):
    """Root of every fsRLM error."""


class ConfigError(FsrlmError, ValueError):
    """The configuration is invalid; the message names the field."""


class CredentialsError(FsrlmError):
    """The configured upstream has no credentials the broker could use."""


class InputError(FsrlmError, ValueError):
    """The prompt, messages or attachments cannot be used."""


class PolicyRefused(InputError):
    """The broker's request policy refused what the sandbox asked the model API to do.

    ``setting`` names the configuration that would allow it (``policy.allowed_models``,
    ``policy.allow_outbound:<channel>``), or is None when nothing does; ``status`` is the
    HTTP status the broker answers with (400, or 404 for a path it never forwards).
    """

    def __init__(self, message: str, *, setting: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.setting = setting
        self.status = status


class WorkspaceError(FsrlmError, OSError):
    """The run folder could not be created, written or read."""


class UpstreamError(FsrlmError):
    """The model API returned an error the broker could not recover from."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class UpstreamAuthError(UpstreamError):
    """The model API rejected the credentials (401/403)."""


class UpstreamUnreachable(UpstreamError):
    """Nothing answers at the configured model API's address (refused, no such host, no route)."""


class LimitExceeded(FsrlmError):
    """A run limit (subcalls, scripts, depth, budget, tokens) refused a call."""

    def __init__(self, message: str, *, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


class SandboxError(FsrlmError):
    """The executor could not prepare, run or clean up the sandbox."""


class ExecutorUnavailable(SandboxError):
    """The executor's backend (e.g. the Docker engine) is not usable."""


class ImageError(SandboxError):
    """The sandbox image is missing, stale or failed to build."""


class ArchiveError(SandboxError):
    """An archive from the sandbox is malformed, hostile or over a cap; extraction stopped."""


def root_cause(e: BaseException) -> str:
    """The innermost, readable reason of a (requests/urllib3/socket) error, in a few words."""
    seen: set[int] = set()
    stack: list[BaseException] = [e]
    best: str | None = None
    while stack:
        err = stack.pop()
        if id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, OSError) and err.strerror:
            best = err.strerror[0].lower() + err.strerror[1:]
        elif isinstance(err, TimeoutError) or type(err).__name__ in ("ReadTimeout", "ConnectTimeout",
                                                                    "ReadTimeoutError", "ConnectTimeoutError"):
            best = best or "timed out"
        for nxt in (err.__cause__, err.__context__, getattr(err, "reason", None), *getattr(err, "args", ())):
            if isinstance(nxt, BaseException):
                stack.append(nxt)
    if best:
        return best
    explanation = getattr(e, "explanation", None)
    text = " ".join(str(explanation or e).split())
    return text or type(e).__name__
