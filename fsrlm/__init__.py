"""fsRLM: a filesystem-based Recursive Language Model runner.

A root Claude Code agent works in a workspace folder inside a sandbox with no
network and no credentials; every model call goes through a host-side broker
that owns the keys, enforces the limits, caches answers and keeps an audit log.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fsrlm.config import RLMConfig, UpstreamConfig, load_config
    from fsrlm.errors import FsrlmError
    from fsrlm.results import RLMResult, RunMetrics
    from fsrlm.rlm import RLM, invoke

# Public names and the module each lives in. They load when first used, not on `import fsrlm`:
# RLM pulls in the Claude Agent SDK, the config its pydantic models; `fsrlm --help` needs neither.
_PUBLIC = {
    "RLM": "fsrlm.rlm", "invoke": "fsrlm.rlm",
    "RLMConfig": "fsrlm.config", "UpstreamConfig": "fsrlm.config", "load_config": "fsrlm.config",
    "FsrlmError": "fsrlm.errors", "RLMResult": "fsrlm.results", "RunMetrics": "fsrlm.results",
}


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'fsrlm' has no attribute {name!r}")


__all__ = ["RLM", "FsrlmError", "RLMConfig", "RLMResult", "RunMetrics", "UpstreamConfig", "invoke", "load_config"]
__version__ = "0.1.0"
