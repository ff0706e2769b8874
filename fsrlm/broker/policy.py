"""The request policy: what the sandbox may ask the upstream model API to do.

The upstream is a model API with a network of its own: given an ``mcp_servers``
entry, an image or document ``source.url``, a server tool (``web_fetch``,
``web_search``, ``code_execution``), a ``container`` or a file id, it fetches URLs,
calls servers and runs code on the caller's behalf; a gateway in front of it routes
by headers (``Helicone-Target-Url``, ``X-Forwarded-Host``, ``x-portkey-*``) and other
API paths (``/v1/files``, ``/model/<id>/converse``) do other things with the
broker's real key. Everything the sandbox sends is therefore *parsed* here and
*re-serialised*: the upstream receives only a path, a query, headers and JSON fields
built by this module from what it understood and allowed, never the sandbox's bytes.

Refused (``PolicyRefused``: HTTP 400, ``error.type = "policy_refused"``, the message
names what was refused and the setting that would allow it):

* any path but ``POST /v1/messages`` (and ``/v1/messages/count_tokens``) on Anthropic and
  compatible upstreams, or ``POST /model/{id}/invoke`` and ``…/invoke-with-response-stream``
  on Bedrock; any query parameter but ``beta=true``;
* a model other than the run's root model, its submodel and ``policy.allowed_models``;
* a body field outside the Messages API fields the CLI uses (``KNOWN_FIELDS``);
* outbound channels, unless ``policy.allow_outbound`` lists them: ``mcp_servers``,
  ``container``, server tools (any ``tools[]`` entry with a ``type`` other than
  ``custom``), URL and file-id sources anywhere in ``messages`` / ``system`` / tool
  results, the content blocks only those produce;
* JSON that is not an object, invalid, nested too deeply to parse, or content blocks nested
  deeper than ``MAX_CONTENT_DEPTH``.

Clamped: ``max_tokens`` to ``policy.max_root_output_tokens`` (and a thinking budget below
it). Dropped silently: every header but ``anthropic-version`` and ``anthropic-beta``,
and ``anthropic-beta`` values the CLI does not send (``CLI_BETAS``, plus the betas of an
allowed channel and ``policy.extra_betas``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

from fsrlm.config import OUTBOUND_CHANNELS, PolicyConfig
from fsrlm.errors import PolicyRefused

MAX_CONTENT_DEPTH = 16  # content blocks within content blocks (tool results, documents); the CLI uses 2

ApiShape = Literal["anthropic", "bedrock"]

# Messages API body fields (the CLI's, Bedrock's, the rest of the public API's harmless ones).
KNOWN_FIELDS = frozenset({
    "model", "messages", "system", "max_tokens", "metadata", "stop_sequences", "stream", "temperature",
    "top_p", "top_k", "tools", "tool_choice", "thinking", "context_management", "output_config",
    "output_format", "service_tier",
    "anthropic_version", "anthropic_beta",  # Bedrock's body-borne version and betas
})
# Fields that are an outbound channel of their own, and the setting that allows each.
CHANNEL_FIELDS = {"mcp_servers": "mcp_servers", "container": "container"}

# anthropic-beta values the bundled CLI sends (recorded against the scripted model, Anthropic and
# Bedrock modes), plus common ones that change only how an answer is produced, not what is fetched.
CLI_BETAS = frozenset({
    "claude-code-20250219", "interleaved-thinking-2025-05-14", "context-management-2025-06-27",
    "mid-conversation-tool-changes-2026-07-01", "thinking-token-count-2026-05-13",
    "advanced-tool-use-2025-11-20", "effort-2025-11-24", "thinking-display-updates-2026-08-18",
    "tool-search-tool-2025-10-19", "fine-grained-tool-streaming-2025-05-14", "prompt-caching-2024-07-31",
    "token-efficient-tools-2025-02-19", "output-128k-2025-02-19", "context-1m-2025-08-07",
    "structured-outputs-2025-11-13", "extended-cache-ttl-2025-04-11",
})
# Betas that only make sense with an outbound channel: allowed together with that channel.
CHANNEL_BETA_PREFIXES = {
    "mcp_servers": ("mcp-client-",),
    "file_sources": ("files-api-",),
    "server_tools": ("web-fetch-", "web-search-", "code-execution-", "computer-use-"),
    "container": ("code-execution-", "skills-"),
}

# Content block types, and the outbound channel a block needs (None: none).
BLOCK_TYPES: dict[str, str | None] = {
    "text": None, "image": None, "document": None, "tool_use": None, "tool_result": None,
    "thinking": None, "redacted_thinking": None, "search_result": None, "tool_reference": None,
    "server_tool_use": "server_tools", "web_search_tool_result": "server_tools",
    "web_fetch_tool_result": "server_tools", "code_execution_tool_result": "server_tools",
    "bash_code_execution_tool_result": "server_tools", "text_editor_code_execution_tool_result": "server_tools",
    "tool_search_tool_result": "server_tools",
    "mcp_tool_use": "mcp_servers", "mcp_tool_result": "mcp_servers",
    "container_upload": "container",
}
# source.type values of image / document blocks, and the channel each needs.
SOURCE_TYPES: dict[str, str | None] = {
    "base64": None, "text": None, "content": None, "url": "url_sources", "file": "file_sources",
}
TOOL_FIELDS = frozenset({"name", "description", "input_schema", "cache_control", "type", "strict",
                         "defer_loading", "input_examples", "eager_input_streaming"})
_ROLES = frozenset({"user", "assistant", "system"})  # the CLI sends mid-conversation system messages


@dataclass(frozen=True)
class ParsedRequest:
    """A request the policy allowed, rebuilt: send ``body`` to ``path`` with ``headers``, nothing else.

    ``model`` and ``max_tokens`` are read from the parsed body (Bedrock: the model from the path);
    ``max_tokens`` is after the clamp. ``data`` is the parsed body, for whoever needs a field.
    """

    path: str
    model: str
    max_tokens: int | None
    body: bytes
    headers: dict[str, str]
    stream: bool
    data: dict[str, Any] = field(repr=False, compare=False)


RootRequest = ParsedRequest  # the name the accounting code uses for a root call


def load_json(raw: bytes, what: str) -> dict[str, Any]:
    """Parse a request body; refuse (never crash on) invalid, non-object or absurdly nested JSON."""
    try:
        value = json.loads(raw)
    except RecursionError:  # the C parser gives up on absurd nesting: refuse, do not crash
        raise PolicyRefused(f"{what}: JSON nested too deeply") from None
    except ValueError as e:
        raise PolicyRefused(f"{what}: not valid JSON ({str(e)[:80]})") from None
    if not isinstance(value, dict):
        raise PolicyRefused(f"{what}: the body must be a JSON object")
    return value


class RequestPolicy:
    """The policy of one run: which models, which channels, how many output tokens."""

    def __init__(self, config: PolicyConfig, *, api: ApiShape, models: Iterable[str]) -> None:
        self.config = config
        self.api = api
        self.models = frozenset(m for m in (*models, *config.allowed_models) if m)
        self.outbound = frozenset(config.allow_outbound)
        prefixes = tuple(p for ch in self.outbound for p in CHANNEL_BETA_PREFIXES.get(ch, ()))
        self._beta_prefixes = prefixes
        self._betas = CLI_BETAS | frozenset(config.extra_betas)

    # -- root calls ---------------------------------------------------------

    def root(self, method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str],
             raw: bytes) -> ParsedRequest:
        """Check a root-agent call and rebuild it; ``PolicyRefused`` says what was refused."""
        shape = self._route(method, path)
        extra = sorted(set(query) - {"beta"})
        if extra or query.get("beta", "true") != "true":
            raise PolicyRefused(f"query parameters {extra or ['beta']} are not forwarded; the broker sends "
                                "only `?beta=true`, as the CLI does")
        body = load_json(raw, "root call")
        if shape == "bedrock":
            model = _bedrock_model(path)
            if "model" in body:
                raise PolicyRefused("a `model` field in a Bedrock body: the model is the one in the path")
        else:
            model = body.get("model")
            if not isinstance(model, str):
                raise PolicyRefused("root call: `model` must be a string")
        self.check_model(model)
        self.check_body(body)
        max_tokens = self._clamp(body, self.config.max_root_output_tokens)
        if "anthropic_beta" in body:
            betas = body["anthropic_beta"]
            if not isinstance(betas, list) or not all(isinstance(b, str) for b in betas):
                raise PolicyRefused("`anthropic_beta` must be a list of strings")
            body["anthropic_beta"] = [b for b in betas if self._beta_allowed(b)]
        out_headers: dict[str, str] = {"content-type": "application/json"}
        lower = {k.lower(): v for k, v in headers.items()}
        if shape == "anthropic":
            version = lower.get("anthropic-version")
            if version is not None:
                out_headers["anthropic-version"] = _token(version, "anthropic-version")
            betas = [b.strip() for b in lower.get("anthropic-beta", "").split(",") if b.strip()]
            kept = [b for b in betas if self._beta_allowed(b)]
            if kept:
                out_headers["anthropic-beta"] = ",".join(kept)
            if path.endswith("/count_tokens"):
                new_path = "/v1/messages/count_tokens"
            else:
                new_path = "/v1/messages"
            if "beta" in query:
                new_path += "?beta=true"
        else:
            action = path.rsplit("/", 1)[1]
            new_path = f"/model/{quote(model, safe='')}/{action}"
        stream = body.get("stream") is True or path.endswith("/invoke-with-response-stream")
        try:
            data = json.dumps(body, separators=(",", ":")).encode()  # ASCII: a lone surrogate cannot break it
        except RecursionError:  # e.g. a tool_use input nested as deep as the parser allowed
            raise PolicyRefused("root call: JSON nested too deeply") from None
        return ParsedRequest(new_path, model, max_tokens, data, out_headers, stream, body)

    def _route(self, method: str, path: str) -> ApiShape:
        if self.api == "anthropic":
            if method == "POST" and path in ("/v1/messages", "/v1/messages/count_tokens"):
                return "anthropic"
            allowed = "POST /v1/messages and /v1/messages/count_tokens"
        else:
            parts = path.split("/")
            if (method == "POST" and len(parts) == 4 and parts[1] == "model" and parts[2]
                    and parts[3] in ("invoke", "invoke-with-response-stream")):
                return "bedrock"
            allowed = "POST /model/{id}/invoke and /model/{id}/invoke-with-response-stream"
        raise PolicyRefused(f"{method} {path[:120]} is not forwarded to the {self.api} upstream; the broker "
                            f"forwards only {allowed}", status=404)

    # -- shared by root calls and subcalls ---------------------------------

    def check_model(self, model: str) -> None:
        if model not in self.models:
            raise PolicyRefused(f"model {model[:120]!r} is not allowed in this run (allowed: "
                                f"{', '.join(sorted(self.models))})", setting="policy.allowed_models")

    def check_body(self, body: Mapping[str, Any]) -> None:
        """The content policy of every call: fields, tools, content blocks, sources."""
        for name in body:
            if name in CHANNEL_FIELDS:
                self._need(CHANNEL_FIELDS[name], f"the `{name}` field")
            elif name not in KNOWN_FIELDS:
                raise PolicyRefused(f"the body field `{name[:80]}` is not forwarded (fields: "
                                    f"{', '.join(sorted(KNOWN_FIELDS))})")
        tools = body.get("tools")
        if tools is not None:
            if not isinstance(tools, list):
                raise PolicyRefused("`tools` must be a list")
            for tool in tools:
                self._check_tool(tool)
        messages = body.get("messages")
        if messages is not None:
            if not isinstance(messages, list):
                raise PolicyRefused("`messages` must be a list")
            for i, message in enumerate(messages):
                if not isinstance(message, dict) or message.get("role") not in _ROLES:
                    raise PolicyRefused(f"messages[{i}] must be an object with role {', '.join(sorted(_ROLES))}")
                self._check_content(message.get("content"), f"messages[{i}].content", 0)
        self._check_content(body.get("system"), "system", 0)

    def _check_tool(self, tool: Any) -> None:
        if not isinstance(tool, dict):
            raise PolicyRefused("every `tools` entry must be an object")
        kind = tool.get("type")
        if kind not in (None, "custom"):
            self._need("server_tools", f"the server tool {str(kind)[:80]!r}")
            return  # an allowed server tool has its own fields
        if "input_schema" not in tool or not isinstance(tool.get("name"), str):
            raise PolicyRefused("a custom tool needs a `name` and an `input_schema`")
        unknown = sorted(set(tool) - TOOL_FIELDS)
        if unknown:
            raise PolicyRefused(f"tool fields {unknown} are not forwarded")

    def _check_content(self, content: Any, where: str, depth: int) -> None:
        if content is None or isinstance(content, str):
            return
        if depth > MAX_CONTENT_DEPTH:
            raise PolicyRefused(f"{where}: content blocks nested deeper than {MAX_CONTENT_DEPTH} levels")
        if not isinstance(content, list):
            raise PolicyRefused(f"{where} must be a string or a list of content blocks")
        for i, block in enumerate(content):
            self._check_block(block, f"{where}[{i}]", depth + 1)

    def _check_block(self, block: Any, where: str, depth: int) -> None:
        if not isinstance(block, dict):
            raise PolicyRefused(f"{where} must be a content block (an object)")
        kind = block.get("type")
        if not isinstance(kind, str) or kind not in BLOCK_TYPES:
            raise PolicyRefused(f"{where}: content block type {str(kind)[:80]!r} is not forwarded")
        channel = BLOCK_TYPES[kind]
        if channel is not None:
            self._need(channel, f"{where}: a {kind!r} block")
        source = block.get("source")
        if isinstance(source, dict):
            stype = source.get("type")
            if stype not in SOURCE_TYPES:
                raise PolicyRefused(f"{where}: source type {str(stype)[:80]!r} is not forwarded")
            needs = SOURCE_TYPES[stype]
            if needs is not None:
                self._need(needs, f"{where}: a {stype!r} source")
            if stype == "content":
                self._check_content(source.get("content"), f"{where}.source.content", depth)
        elif source is not None and kind != "search_result":  # search_result's source is a plain string
            raise PolicyRefused(f"{where}: `source` must be an object")
        if kind in ("tool_result", "search_result"):
            self._check_content(block.get("content"), f"{where}.content", depth)

    def _need(self, channel: str, what: str) -> None:
        if channel not in self.outbound:
            raise PolicyRefused(
                f"{what} asks the model API to reach out on the agent's behalf ({OUTBOUND_CHANNELS[channel]}); "
                f"refused. Allow it with policy.allow_outbound = [\"{channel}\"]",
                setting=f"policy.allow_outbound:{channel}")

    def _beta_allowed(self, beta: str) -> bool:
        return beta in self._betas or (bool(self._beta_prefixes) and beta.startswith(self._beta_prefixes))

    @staticmethod
    def _clamp(body: dict[str, Any], cap: int) -> int | None:
        value = body.get("max_tokens")
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise PolicyRefused("`max_tokens` must be a positive integer")
        if value > cap:
            body["max_tokens"] = value = cap
        thinking = body.get("thinking")
        if isinstance(thinking, dict) and isinstance(thinking.get("budget_tokens"), int):
            # The upstream refuses a thinking budget not below max_tokens: keep the pair valid.
            thinking["budget_tokens"] = max(1, min(thinking["budget_tokens"], value - 1))
        return value


def _bedrock_model(path: str) -> str:
    from urllib.parse import unquote

    return unquote(path.split("/")[2])


def _token(value: str, name: str) -> str:
    """A header value fit to forward: short, printable, no separators a gateway might split on."""
    if len(value) > 64 or not all(c.isalnum() or c in "-._" for c in value):
        raise PolicyRefused(f"header {name}: unexpected value")
    return value
