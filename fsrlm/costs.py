"""What reading an input costs at list prices: the README's cost table and the command line's warning.

A run's cost is mostly one thing: the submodel reading the input once, chunk by
chunk. The estimate follows what the agent is told to do (the ``rlm`` skill in
workspace_template/): chunks of 20,000 bytes, made larger so that one script
stays within ``max_subcalls_per_script``, and never larger than the submodel's
context allows (more scripts then). Each subcall pays its chunk, a short
instruction, and an answer of 100 tokens up to ``max_tokens_per_subcall``. The
root agent adds a per-run amount: the real CLI's first request is about 16k
tokens (its system prompt and tool definitions plus fsRLM's first message,
measured against the scripted model), then 10 to 20 turns with prompt caching.

Tokens per byte depend on the text: about 4 bytes per token for English prose,
about 3 for logs, code and JSON. ``low`` takes the cheap end of every range,
``high`` the dear end. Prices are the broker's (``broker.pricing``: the configuration's
``prices``, then genai-prices' table, then ``unknown_model_price``), below any long-context tier.
"""

from __future__ import annotations

import math

from pydantic import BaseModel

from fsrlm.broker.pricing import Pricer, list_price
from fsrlm.config import RLMConfig

MB = 1_000_000  # the table's unit: decimal megabytes
SKILL_CHUNK_BYTES = 20_000  # workspace_template/.claude/skills/rlm/SKILL.md
BYTES_PER_TOKEN = (4.0, 3.0)  # (cheap: prose, dear: logs/code/JSON)
ANSWER_TOKENS = 100  # a short, structured answer per chunk (the dear end is max_tokens_per_subcall)
INSTRUCTION_TOKENS = 40  # the per-chunk question and the message framing
SUBMODEL_CONTEXT_TOKENS = 200_000  # the default submodel's context window
CHUNK_SHARE_OF_CONTEXT = 0.75  # a chunk leaves room for the instruction and the answer

# The root agent (see the module docstring): first request, turns, context added and output per turn.
ROOT_FIRST_REQUEST_TOKENS = 16_000
ROOT_TURNS = (10, 20)
ROOT_GROWTH_PER_TURN = (1_000, 2_500)
ROOT_OUTPUT_PER_TURN = (300, 800)
CACHE_WRITE, CACHE_READ = 1.25, 0.1  # prompt-caching multipliers of the input price


class Estimate(BaseModel):
    size_bytes: int
    subcalls: tuple[int, int]  # (low, high): one pass over the input
    subcall_usd: tuple[float, float]
    root_usd: tuple[float, float]
    fits_call_limits: bool  # the pass fits max_total_subcalls

    @property
    def low(self) -> float:
        return self.subcall_usd[0] + self.root_usd[0]

    @property
    def high(self) -> float:
        return self.subcall_usd[1] + self.root_usd[1]


def _pricer(config: RLMConfig) -> Pricer:
    return Pricer(config.prices, config.unknown_model_price, upstream_type=config.upstream.type)


def _one_pass(size: int, config: RLMConfig, bytes_per_token: float, answer_tokens: int) -> tuple[int, float]:
    chunk = max(SKILL_CHUNK_BYTES, math.ceil(size / config.max_subcalls_per_script))
    chunk = min(chunk, int(SUBMODEL_CONTEXT_TOKENS * CHUNK_SHARE_OF_CONTEXT * bytes_per_token))
    calls = max(1, math.ceil(size / chunk))
    price = list_price(config.effective_submodel, _pricer(config))
    input_tokens = size / bytes_per_token + calls * INSTRUCTION_TOKENS
    usd = (input_tokens * price.input_per_mtok + calls * answer_tokens * price.output_per_mtok) / 1_000_000
    return calls, usd


def root_cost(config: RLMConfig, turns: int, growth: int, output: int) -> float:
    """One run of the root agent with prompt caching: the first request written, each turn's context read."""
    price = list_price(config.effective_root_model, _pricer(config))
    tokens = ROOT_FIRST_REQUEST_TOKENS * CACHE_WRITE
    for turn in range(1, turns):
        tokens += (ROOT_FIRST_REQUEST_TOKENS + turn * growth) * CACHE_READ + growth * CACHE_WRITE
    return (tokens * price.input_per_mtok + turns * output * price.output_per_mtok) / 1_000_000


def estimate(size_bytes: int, config: RLMConfig) -> Estimate:
    """What one pass of the submodel over ``size_bytes`` of input, plus the root agent, costs."""
    low_calls, low_usd = _one_pass(size_bytes, config, BYTES_PER_TOKEN[0], ANSWER_TOKENS)
    high_calls, high_usd = _one_pass(size_bytes, config, BYTES_PER_TOKEN[1], config.max_tokens_per_subcall)
    roots = (root_cost(config, ROOT_TURNS[0], ROOT_GROWTH_PER_TURN[0], ROOT_OUTPUT_PER_TURN[0]),
             root_cost(config, ROOT_TURNS[1], ROOT_GROWTH_PER_TURN[1], ROOT_OUTPUT_PER_TURN[1]))
    return Estimate(size_bytes=size_bytes, subcalls=(low_calls, high_calls), subcall_usd=(low_usd, high_usd),
                    root_usd=roots, fits_call_limits=high_calls <= config.max_total_subcalls)


def _usd(value: float) -> str:
    return f"${value:,.2f}" if value < 10 else f"${value:,.0f}"


def _span(low: float, high: float, fmt=_usd) -> str:
    a, b = fmt(low), fmt(high)
    return a if a == b else f"{a}–{b}"


def cost_table(config: RLMConfig, sizes_mb: tuple[float, ...] = (1, 10, 50, 100, 500)) -> str:
    """The README's table: one pass over inputs of ``sizes_mb`` at ``config``'s models and limits."""
    budget = config.max_budget_usd
    within = f"within ${budget:g}" if budget is not None else "within the budget"
    rows = [
        f"| input | subcalls | submodel ({config.effective_submodel}) | root agent ({config.effective_root_model}) "
        f"| whole run | {within} |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for mb in sizes_mb:
        e = estimate(int(mb * MB), config)
        fits = "no: over max_total_subcalls" if not e.fits_call_limits else (
            "yes" if budget is None or e.high <= budget else "no" if e.low > budget else "maybe")
        rows.append(f"| {mb:g} MB | {_span(*e.subcalls, fmt=lambda n: f'{n:,}')} | {_span(*e.subcall_usd)} | "
                    f"{_span(*e.root_usd)} | **{_span(e.low, e.high)}** | {fits} |")
    return "\n".join(rows)


def per_mb(config: RLMConfig) -> tuple[float, float]:
    """Submodel dollars per MB of input (one pass), at large sizes where the per-run part fades."""
    e = estimate(100 * MB, config)
    return e.subcall_usd[0] / 100, e.subcall_usd[1] / 100
