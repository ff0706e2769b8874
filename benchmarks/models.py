"""What the benchmarks need to know of a model: its context window and its own output limit.

The baseline gives the model alone its whole output budget, as the OOLONG
authors' harness does (it sets no ``max_tokens``), so it needs each model's own
limit. Figures are Anthropic's published ones for the Messages API without
beta headers (no 1M-token context, no 128K-output beta); a model id matches
the first entry its name contains, so Bedrock ids
(``us.anthropic.claude-sonnet-4-5-20250929-v1:0``) and dated ids match too.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ModelLimits", "model_limits"]


@dataclass(frozen=True)
class ModelLimits:
    """Tokens a model takes in (prompt plus answer) and the most it writes in one answer."""

    context_window: int
    max_output_tokens: int


# Most specific names first: "claude-opus-4-5" before "claude-opus-4".
_LIMITS: tuple[tuple[str, ModelLimits], ...] = (
    ("claude-opus-4-5", ModelLimits(200_000, 64_000)),
    ("claude-opus-4-1", ModelLimits(200_000, 32_000)),
    ("claude-opus-4", ModelLimits(200_000, 32_000)),
    ("claude-sonnet-4-5", ModelLimits(200_000, 64_000)),
    ("claude-sonnet-4", ModelLimits(200_000, 64_000)),
    ("claude-haiku-4-5", ModelLimits(200_000, 64_000)),
    ("claude-3-7-sonnet", ModelLimits(200_000, 64_000)),
    ("claude-3-5-sonnet", ModelLimits(200_000, 8_192)),
    ("claude-3-5-haiku", ModelLimits(200_000, 8_192)),
    ("claude-3-opus", ModelLimits(200_000, 4_096)),
    ("claude-3-haiku", ModelLimits(200_000, 4_096)),
)


def model_limits(model: str) -> ModelLimits | None:
    """The limits of ``model``, or ``None`` for a model this table does not know."""
    name = model.lower()
    for fragment, limits in _LIMITS:
        if fragment in name:
            return limits
    return None
