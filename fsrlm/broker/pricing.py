"""Dollar cost of a call, owned by the broker (the CLI's own figures are guesses for unknown names).

Prices are US dollars per million tokens, matched by substring of the model
name, first match wins; Bedrock ids (``us.anthropic.claude-…-v1:0``) match too.
An unknown model is priced like the most expensive family listed that could
plausibly be meant, so a budget is never under-counted.
"""

from __future__ import annotations

from pydantic import BaseModel


class Price(BaseModel):
    input_per_mtok: float
    output_per_mtok: float


PRICES: list[tuple[str, Price]] = [
    ("opus-4-5", Price(input_per_mtok=5.0, output_per_mtok=25.0)),
    ("opus-4-6", Price(input_per_mtok=5.0, output_per_mtok=25.0)),
    ("opus", Price(input_per_mtok=15.0, output_per_mtok=75.0)),
    ("sonnet", Price(input_per_mtok=3.0, output_per_mtok=15.0)),
    ("haiku-4", Price(input_per_mtok=1.0, output_per_mtok=5.0)),
    ("haiku-3-5", Price(input_per_mtok=0.8, output_per_mtok=4.0)),
    ("3-5-haiku", Price(input_per_mtok=0.8, output_per_mtok=4.0)),
    ("haiku", Price(input_per_mtok=0.25, output_per_mtok=1.25)),
]
FALLBACK = Price(input_per_mtok=3.0, output_per_mtok=15.0)


def price_for(model: str) -> Price:
    name = model.lower()
    for needle, price in PRICES:
        if needle in name:
            return price
    return FALLBACK


def cost_usd(model: str, input_tokens: int, output_tokens: int, cache_write: int = 0, cache_read: int = 0) -> float:
    p = price_for(model)
    return (
        input_tokens * p.input_per_mtok
        + cache_write * p.input_per_mtok * 1.25
        + cache_read * p.input_per_mtok * 0.1
        + output_tokens * p.output_per_mtok
    ) / 1_000_000
