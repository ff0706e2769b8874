"""fsRLM: a filesystem-based Recursive Language Model runner.

A root Claude Code agent works in a workspace folder inside a sandbox with no
network and no credentials; every model call goes through a host-side broker
that owns the keys, enforces the limits, caches answers and keeps an audit log.
"""

from fsrlm.config import RLMConfig, UpstreamConfig, load_config
from fsrlm.errors import FsrlmError
from fsrlm.results import RLMResult, RunMetrics
from fsrlm.rlm import RLM, invoke

__all__ = ["RLM", "FsrlmError", "RLMConfig", "RLMResult", "RunMetrics", "UpstreamConfig", "invoke", "load_config"]
__version__ = "0.1.0"
