"""What the root agent is told: the system prompt addition and its first message."""

from __future__ import annotations

from pydantic import BaseModel

from fsrlm.workspace import INLINE_LIMIT

SYSTEM_APPEND = """\
You are the root of a Recursive Language Model (RLM) run. Your working memory is the
current directory (the workspace); read .claude/CLAUDE.md for the full workflow.
- The input is in input/prompt.md (it can be far larger than your context: never read it whole
  when it is large). The question is in input/question.md when there is one.
- For large inputs write Python scripts in scratch/scripts/ that split the input with
  tools/chunking.py and call a cheaper model on each piece with tools/llm_client.py
  (llm_batch runs calls in parallel). Run them with Bash: `python3 scratch/scripts/NAME.py`.
- Append extracted facts to state/artifacts.jsonl, then write the final answer to
  output/answer.md. The run ends when you stop; output/answer.md is what the user gets.
- Limits are enforced outside the sandbox: {max_scripts} scripts, {max_subcalls_per_script}
  subcalls per script, {max_total_subcalls} subcalls in all, {max_tokens_per_subcall} output tokens
  per subcall, nested rlm_query depth {max_depth} (at most {max_concurrent_nested} at once){budget}. A refused call raises
  llm_client.BudgetExceeded: adapt (bigger chunks, fewer calls) rather than retrying.
- There is no network access apart from these model calls."""

USER_SYSTEM_HEADER = "\n\nThe user gave this system prompt for the task; follow it:\n"


class InputSummary(BaseModel):
    size_bytes: int
    head: str
    tail: str
    question: str | None
    attachments: list[str] = []


def system_append(limits: dict, user_system: str | None) -> str:
    budget = f", ${limits['max_budget_usd']:.2f} budget" if limits.get("max_budget_usd") else ""
    text = SYSTEM_APPEND.format(budget=budget, **limits)
    if user_system:
        text += USER_SYSTEM_HEADER + user_system
    return text


QUESTION_HEAD = 1000
QUESTION_TAIL = 3000


def _bounded(question: str) -> str:
    """The question, or its start and end when it is huge (e.g. the last of the messages holds the input)."""
    if len(question) <= QUESTION_HEAD + QUESTION_TAIL:
        return question
    omitted = len(question) - QUESTION_HEAD - QUESTION_TAIL
    return (f"{question[:QUESTION_HEAD]}\n\n[... {omitted:,} characters omitted; the full question is in "
            f"input/question.md ...]\n\n{question[-QUESTION_TAIL:]}")


def first_message(summary: InputSummary) -> str:
    parts: list[str] = []
    if summary.size_bytes <= INLINE_LIMIT:
        parts.append(f"The input (input/prompt.md, {summary.size_bytes} bytes) in full:\n\n<input>\n"
                     f"{summary.head}{summary.tail}\n</input>")
        parts.append("It is small: you may answer directly, writing the answer to output/answer.md.")
    else:
        parts.append(
            f"The input is large: input/prompt.md holds {summary.size_bytes:,} bytes, far more than you "
            "should read at once. Here is a preview.\n\n"
            f"<input-start>\n{summary.head}\n</input-start>\n\n[... middle omitted ...]\n\n"
            f"<input-end>\n{summary.tail}\n</input-end>"
        )
        parts.append(
            "Work the RLM way: look at the structure (tools/chunking.py file_stats/preview), write a "
            "script in scratch/scripts/ that chunks the input and calls llm_batch on the chunks, append "
            "what it finds to state/artifacts.jsonl, combine the results, and write output/answer.md."
        )
    if summary.attachments:
        parts.append("Attachments in input/attachments/: " + ", ".join(summary.attachments))
    if summary.question:
        question = _bounded(summary.question)
        parts.append(f"The question (also in input/question.md):\n\n<question>\n{question}\n</question>")
    elif summary.size_bytes > INLINE_LIMIT:
        parts.append("There is no separate question: the task is stated in the input, usually at its "
                     "start or end (both shown above).")
    parts.append("Write the final answer to output/answer.md, then stop.")
    return "\n\n".join(parts)
