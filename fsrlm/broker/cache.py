"""Content-addressed response cache, kept on the host outside every workspace.

Entries are keyed on everything that shapes an answer (upstream, model, system,
messages, max_tokens, temperature and every other sampling field) and written
atomically (temp file + rename), so a crash never leaves a half-written entry.
The broker only ever reads its own cache directory: the workspace gets a
read-only mirror for inspection, which is never read back.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

logger = logging.getLogger(__name__)

# Fields that do not change the answer, so they stay out of the key.
_UNKEYED = frozenset({"stream", "metadata"})


class CachedResponse(BaseModel):
    text: str
    model: str
    input_tokens: int
    output_tokens: int
    stop_reason: str | None = None
    cost_usd: float = 0.0  # what the original call cost, for "saved" figures


def cache_key(upstream: str, body: dict[str, Any]) -> str:
    keyed = {k: v for k, v in body.items() if k not in _UNKEYED}
    canonical = json.dumps({"upstream": upstream, "request": keyed}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class ResponseCache:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> CachedResponse | None:
        try:
            data = self._path(key).read_bytes()
            return CachedResponse.model_validate_json(data)
        except FileNotFoundError:
            return None
        except (OSError, ValidationError) as e:
            # A damaged entry is a miss, never an error: it will be rewritten.
            logger.warning("ignoring unreadable cache entry %s: %s", key, e)
            return None

    def put(self, key: str, value: CachedResponse) -> bytes:
        """Store an entry atomically; return its serialised bytes (for the workspace mirror)."""
        data = value.model_dump_json(indent=1).encode()
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as e:
            # Disk full or read-only cache: the answer is still good, just not cached.
            logger.warning("could not write cache entry %s: %s", key, e)
        return data
