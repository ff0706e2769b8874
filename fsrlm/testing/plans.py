"""What the scripted model says: plans for the root agent, responders for subcalls.

A root request (one that carries ``tools``) is answered with step N of a
:class:`Plan`, where N is the number of assistant messages already in the
request's ``messages``. A step is a :class:`ToolStep` (one ``tool_use`` block),
a :class:`FinalStep` (text, ``end_turn``) or a callable taking the request body
and returning one of those. Past the plan's end the answer is ``FinalStep("done")``.

Any other request is a subcall, answered by a responder ``(body) -> str | dict``;
:func:`default_responder` counts labelled lines, echoes, or says ``ok``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Union

__all__ = [
    "FinalStep",
    "Plan",
    "Responder",
    "Step",
    "ToolStep",
    "bash_plan",
    "count_label_plan",
    "count_script",
    "default_responder",
    "estimate_tokens",
    "first_user_text",
    "last_tool_result",
    "last_user_text",
    "script_plan",
    "working_directory",
]


@dataclass(frozen=True)
class ToolStep:
    """Answer with one ``tool_use`` block (stop reason ``tool_use``)."""

    name: str
    input: dict[str, Any]


@dataclass(frozen=True)
class FinalStep:
    """Answer with text and stop reason ``end_turn``."""

    text: str


Step = Union[ToolStep, FinalStep, Callable[[dict], Union[ToolStep, FinalStep]]]
Responder = Callable[[dict], Union[str, dict]]


@dataclass
class Plan:
    """The root agent's script: one step per assistant turn."""

    steps: list[Step] = field(default_factory=list)
    name: str = "plan"

    def step_for(self, body: dict) -> ToolStep | FinalStep:
        """The step that answers ``body`` (chosen by its count of assistant messages)."""
        index = sum(1 for m in body.get("messages") or [] if m.get("role") == "assistant")
        if index >= len(self.steps):
            return FinalStep("done")
        step = self.steps[index]
        if isinstance(step, (ToolStep, FinalStep)):
            return step
        result = step(body)
        if not isinstance(result, (ToolStep, FinalStep)):
            raise TypeError(f"plan step {index} returned {type(result).__name__}, not ToolStep/FinalStep")
        return result


# -- reading a request body ------------------------------------------------------------

_REMINDER = re.compile(r"<system-reminder>.*?</system-reminder>", re.S)
_WORKDIR = re.compile(r"^[ \t\-*]*(?:Primary )?[Ww]orking directory:[ \t]*(/[^\n]*?)[ \t]*$", re.M)


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text"]
    return []


def _user_text(message: dict) -> str:
    parts = (_REMINDER.sub("", t).strip() for t in _texts(message.get("content")))
    return "\n".join(p for p in parts if p)


def first_user_text(body: dict) -> str:
    """Text of the first user message, without ``<system-reminder>`` blocks."""
    for m in body.get("messages") or []:
        if m.get("role") == "user":
            return _user_text(m)
    return ""


def last_user_text(body: dict) -> str:
    """Text of the last user message (string content or text blocks, joined by newlines)."""
    for m in reversed(body.get("messages") or []):
        if m.get("role") == "user":
            return "\n".join(_texts(m.get("content")))
    return ""


def last_tool_result(body: dict) -> str:
    """Text of the last ``tool_result`` block in the request, or ``""``."""
    for m in reversed(body.get("messages") or []):
        content = m.get("content")
        if not isinstance(content, list):
            continue
        for block in reversed(content):
            if isinstance(block, dict) and block.get("type") == "tool_result":
                inner = block.get("content")
                return "\n".join(_texts(inner)) if not isinstance(inner, str) else inner
    return ""


def working_directory(body: dict) -> str | None:
    """The CLI's working directory, read from its system prompt ("Primary working directory: /x").

    The CLI puts its environment section in the top-level ``system`` blocks or, in
    recent versions, in a ``role: "system"`` message; both are searched.
    """
    texts = _texts(body.get("system"))
    for m in body.get("messages") or []:
        if m.get("role") != "assistant":
            texts.extend(_texts(m.get("content")))
    for text in texts:
        match = _WORKDIR.search(text)
        if match:
            return match.group(1)
    return None


def _workspace_path(body: dict, relative: str) -> str:
    cwd = working_directory(body)
    return f"{cwd.rstrip('/')}/{relative}" if cwd else relative


def _label_from_question(body: dict) -> str | None:
    text = first_user_text(body)
    # fsRLM's first message wraps the question in <question> tags after an input preview.
    question = re.search(r"<question>(.*?)</question>", text, re.S)
    for word in re.findall(r"\b[A-Z][A-Z0-9_]*\b", question.group(1) if question else text):
        if sum(c.isalpha() for c in word) >= 3:
            return word
    return None


# -- built-in plans --------------------------------------------------------------------

COUNT_SCRIPT = '''\
"""Count the lines that contain a label, one subcall per chunk (written by the scripted model)."""
from chunking import chunk_file
from llm_client import llm_batch, append_artifact

LABEL = {label!r}
CHUNK = {chunk_size!r}
chunks = list(chunk_file("input/prompt.md", chunk_size=CHUNK))
prompts = [f"Count the lines that contain the label {{LABEL}}. Reply with only the number.\\n\\n{{c.text}}" for c in chunks]
answers = llm_batch(prompts)
total = 0
for c, a in zip(chunks, answers):
    n = int(a.strip()); total += n
    append_artifact({{"chunk": c.index, "start": c.start, "end": c.end, "count": n}})
open("output/answer.md", "w").write(f"{{total}}\\n")
print(f"{{len(chunks)}} chunks, total {{total}}")
'''


def count_script(label: str, chunk_size: int = 2000) -> str:
    """The Python script :func:`count_label_plan` writes."""
    return COUNT_SCRIPT.format(label=label, chunk_size=chunk_size)


def _write_step(script_path: str, content: Callable[[dict], str] | str) -> Step:
    def step(body: dict) -> ToolStep | FinalStep:
        text = content(body) if callable(content) else content
        return ToolStep("Write", {"file_path": _workspace_path(body, script_path), "content": text})

    return step


def _run_step(script_path: str) -> ToolStep:
    return ToolStep("Bash", {"command": f"python3 {script_path}", "description": f"Run {script_path}"})


def _final_with_output(prefix: str) -> Step:
    def step(body: dict) -> FinalStep:
        output = last_tool_result(body).strip()
        return FinalStep(f"{prefix}\n\n{output}" if output else prefix)

    return step


def count_label_plan(
    label: str | None = None,
    chunk_size: int = 2000,
    script_path: str = "scratch/scripts/count.py",
) -> Plan:
    """Write a counting script, run it with Bash, then finish with a short summary.

    ``label=None`` takes the first ALL-CAPS word (3+ letters) of the question, i.e.
    of the first user message; with none there, step 0 is a final answer saying so.
    """

    def write(body: dict) -> ToolStep | FinalStep:
        chosen = label or _label_from_question(body)
        if not chosen:
            return FinalStep("scripted model: no ALL-CAPS label found in the question")
        return _write_step(script_path, count_script(chosen, chunk_size))(body)  # type: ignore[operator]

    summary = f"Counted the labelled lines with {script_path}; the total is in output/answer.md."
    return Plan([write, _run_step(script_path), _final_with_output(summary)], name="count")


def script_plan(script: str, script_path: str = "scratch/scripts/job.py", final_text: str = "done") -> Plan:
    """Write ``script`` to ``script_path``, run it with Bash, then answer ``final_text``."""
    return Plan([_write_step(script_path, script), _run_step(script_path), FinalStep(final_text)], name="script")


def bash_plan(*commands: str, final_text: str = "done") -> Plan:
    """One Bash tool call per command, then answer ``final_text``."""
    steps: list[Step] = [ToolStep("Bash", {"command": c, "description": "scripted command"}) for c in commands]
    return Plan([*steps, FinalStep(final_text)], name="bash")


# -- subcall responder -----------------------------------------------------------------

_COUNT = re.compile(r"Count the lines that contain the label (\S+?)\.")


def default_responder(body: dict) -> str:
    """Deterministic subcall answers.

    - "Count the lines that contain the label X. ..." → how many lines after the
      first blank line contain X;
    - "ECHO: text" → "text";
    - anything else → "ok".
    """
    text = last_user_text(body)
    match = _COUNT.search(text)
    if match:
        _, sep, rest = text.partition("\n\n")
        lines = rest.splitlines() if sep else []
        return str(sum(1 for line in lines if match.group(1) in line))
    if text.startswith("ECHO:"):
        return text[len("ECHO:"):].strip()
    return "ok"


def estimate_tokens(value: Any) -> int:
    """Rough token count: characters of its JSON (or text) divided by four, at least 1."""
    text = value if isinstance(value, str) else json.dumps(value)
    return max(1, len(text) // 4)
