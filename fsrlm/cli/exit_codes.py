"""Exit codes of ``fsrlm``, stable for scripts and CI jobs."""

from __future__ import annotations

from enum import IntEnum

from fsrlm.errors import (
    ConfigError,
    CredentialsError,
    FsrlmError,
    InputError,
    LimitExceeded,
    SandboxError,
    UpstreamError,
)


class ExitCode(IntEnum):
    SUCCESS = 0  # an answer was written
    NO_ANSWER = 1  # the agent finished (or failed) without an answer
    CONFIG_ERROR = 2  # bad configuration, input or credentials: nothing ran
    LIMIT_REACHED = 3  # a budget, call limit, max_turns or the timeout stopped the run
    SANDBOX_ERROR = 4  # the executor / infrastructure failed (Docker down, sandbox died)
    UPSTREAM_ERROR = 5  # the model API failed (rejected credentials, persistent errors)
    INTERRUPTED = 130


def exit_code_for_error(e: FsrlmError) -> ExitCode:
    if isinstance(e, ConfigError | CredentialsError | InputError):
        return ExitCode.CONFIG_ERROR
    if isinstance(e, LimitExceeded):
        return ExitCode.LIMIT_REACHED
    if isinstance(e, SandboxError):
        return ExitCode.SANDBOX_ERROR
    if isinstance(e, UpstreamError):
        return ExitCode.UPSTREAM_ERROR
    return ExitCode.NO_ANSWER


def exit_code_for_stop(stop_reason: str) -> ExitCode:
    return {
        "completed": ExitCode.SUCCESS,
        "no_answer": ExitCode.NO_ANSWER,
        "error": ExitCode.NO_ANSWER,
        "max_turns": ExitCode.LIMIT_REACHED,
        "limit": ExitCode.LIMIT_REACHED,
        "timeout": ExitCode.LIMIT_REACHED,
        "sandbox_error": ExitCode.SANDBOX_ERROR,
        "upstream_error": ExitCode.UPSTREAM_ERROR,
        "interrupted": ExitCode.INTERRUPTED,
    }.get(stop_reason, ExitCode.NO_ANSWER)
