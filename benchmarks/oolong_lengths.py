"""oolong-real context lengths measured the way the OOLONG authors bucket them.

oolong-real rows carry no length. The authors' harness counts each window's
tokens with the evaluated model's own tokenizer (for Claude, the Messages API
``count_tokens`` endpoint over one user message holding the window) and keeps
rows with ``min_context_len < tokens <= max_context_len``. :func:`measure_lengths`
does the same through fsRLM's configured upstream (host-side, with the
broker's credentials; no model is called, no money is spent), once per distinct
window, and remembers every count in ``<cache_dir>/oolong-lengths.json``.

Without a measurement a row keeps the estimate ``characters / 4``
(``context_len_source`` ``estimate:chars/4``). How far that is from the
model's own count depends on the text and the tokenizer, and fsRLM has not
measured it for Claude on these transcripts (it needs the API), so a filter on
estimated lengths may keep other rows than the authors' near each bound; the
measured counts are what to filter on. Every results record says which length
its row was chosen by.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import aiohttp
from fsrlm.benchmarks.oolong_data import OolongDataError, OolongRow

from fsrlm.broker.upstreams import create_upstream
from fsrlm.config import RLMConfig

__all__ = ["LENGTHS_FILE", "measure_lengths", "measured_source"]

logger = logging.getLogger(__name__)

LENGTHS_FILE = "oolong-lengths.json"
#: Windows counted at once.
_CONCURRENCY = 4


def measured_source(model: str) -> str:
    """``context_len_source`` of a length counted by ``model``'s tokenizer."""
    return f"count_tokens:{model}"


def _key(model: str, text: str) -> str:
    return model + ":" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class _Counts:
    """Token counts remembered on disk, written atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
            self.counts: dict[str, int] = {k: int(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}
        except (OSError, ValueError, TypeError):
            self.counts = {}

    def save(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".lengths-")
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(self.counts, handle)
            os.replace(tmp, self.path)
        except OSError as exc:  # the counts are still good for this run
            logger.warning("could not save token counts to %s: %s", self.path, exc)


async def _count(session: aiohttp.ClientSession, config: RLMConfig, model: str, text: str) -> int:
    upstream = create_upstream(config.upstream, session)
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": text}]}).encode()
    response = await upstream.request("POST", "/v1/messages/count_tokens",
                                      {"content-type": "application/json"}, body)
    try:
        raw = await response.read()
    finally:
        response.release()
    if response.status != 200:
        raise OolongDataError(f"counting tokens with {model} failed (HTTP {response.status}: "
                              f"{raw[:300].decode('utf-8', 'replace')}); pass --real-lengths estimate to filter "
                              "on characters / 4 instead")
    try:
        return int(json.loads(raw)["input_tokens"])
    except (ValueError, KeyError, TypeError) as exc:
        raise OolongDataError(f"counting tokens with {model}: unexpected answer {raw[:200]!r}") from exc


async def _measure(rows: Sequence[OolongRow], config: RLMConfig, model: str, counts: _Counts) -> None:
    todo: dict[str, str] = {}
    for row in rows:
        key = _key(model, row.context_window_text)
        if key not in counts.counts:
            todo[key] = row.context_window_text
    if not todo:
        return
    slots = asyncio.Semaphore(_CONCURRENCY)
    async with aiohttp.ClientSession() as session:
        async def one(key: str, text: str) -> None:
            async with slots:
                counts.counts[key] = await _count(session, config, model, text)

        try:
            await asyncio.gather(*(one(k, t) for k, t in todo.items()))
        except aiohttp.ClientError as exc:
            raise OolongDataError(f"counting tokens with {model}: the model API is unreachable ({exc}); pass "
                                  "--real-lengths estimate to filter on characters / 4 instead") from exc
        finally:
            counts.save()


def measure_lengths(rows: Sequence[OolongRow], config: RLMConfig, model: str | None = None) -> list[OolongRow]:
    """``rows`` with every oolong-real row's ``context_len`` counted by ``model``'s tokenizer.

    ``model`` defaults to the root model (the one the baseline sends the window
    to). Synth and Pairs rows are returned unchanged.

    Raises:
        OolongDataError: the upstream cannot count tokens (Bedrock has no such
            endpoint here), or a count failed; the message says how to filter on
            the estimate instead.
        CredentialsError: no credentials for the upstream.
    """
    real = [row for row in rows if row.split == "real"]
    if not real:
        return list(rows)
    if config.upstream.type == "bedrock":
        raise OolongDataError("measuring oolong-real lengths needs the Messages API count_tokens endpoint, which "
                              "fsRLM does not call on Bedrock; pass --real-lengths estimate (characters / 4)")
    model = model or config.effective_root_model
    counts = _Counts(config.effective_cache_dir / LENGTHS_FILE)
    asyncio.run(_measure(real, config, model, counts))
    source = measured_source(model)
    measured = []
    for row in rows:
        if row.split != "real":
            measured.append(row)
            continue
        tokens = counts.counts[_key(model, row.context_window_text)]
        measured.append(row.model_copy(update={"context_len": tokens, "context_len_source": source}))
    return measured
