"""Dollar cost of a call, owned by the broker (the CLI's own figures are guesses for names it does not know).

Where a model's price comes from, first found wins:

1. the configuration's ``prices`` table (exact model name), for a gateway's or a local
   server's names, or to correct a list price;
2. ``genai-prices`` (kept by the pydantic team): Anthropic and Bedrock ids, prompt-cache
   reads and writes (5-minute and 1-hour), long-context tiers;
3. ``unknown_model_price`` (default: the dearest Claude list price), so a name nobody
   knows is never charged zero by accident.

The price table ships inside ``genai-prices``; its optional updater (``UpdatePrices``,
which fetches a newer table over the network) is never started, so pricing works offline
and a broker never waits on the network for a price.

Usage figures are Anthropic's: ``input_tokens`` counts only uncached input, cache reads and
writes are counted apart (their sum decides a long-context tier, as in genai-prices).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Any, Literal

from fsrlm.broker.accounting import Usage
from fsrlm.config import DEFAULT_UNKNOWN_MODEL_PRICE, ModelPrice

logger = logging.getLogger(__name__)

# The dearest cache-write multiplier of the input price (Anthropic's 1-hour cache), used for a
# configured price that does not give its cache prices and for the worst case of any call.
CACHE_WRITE_5M, CACHE_WRITE_1H, CACHE_READ = 1.25, 2.0, 0.1

PriceSource = Literal["prices", "genai-prices", "unknown"]


Tiered = tuple[float, tuple[tuple[int, float], ...]]  # base $/Mtok, then (above this many input tokens, $/Mtok)


@dataclass(frozen=True)
class _Rates:
    """One model's genai-prices entry as plain floats: pricing every call through genai-prices' own
    ``calc_price`` costs about 0.25 ms, too much for the broker's per-subcall budget. Same rule as
    genai-prices: crossing a tier (by total input tokens) prices *all* tokens of that kind at the tier."""

    input: Tiered
    cache_write: Tiered
    cache_write_1h: Tiered
    cache_read: Tiered
    output: Tiered
    context_window: int | None = None  # the most input the model accepts, as the table says

    def cost(self, usage: Usage) -> float:
        write = usage.cache_creation_input_tokens
        write_1h = min(usage.cache_write_1h_tokens, write)
        total_input = usage.input_tokens + write + usage.cache_read_input_tokens

        def rate(price: Tiered) -> float:
            base, tiers = price
            for start, tier in reversed(tiers):
                if total_input > start:
                    return tier
            return base

        return (usage.input_tokens * rate(self.input) + (write - write_1h) * rate(self.cache_write)
                + write_1h * rate(self.cache_write_1h) + usage.cache_read_input_tokens * rate(self.cache_read)
                + usage.output_tokens * rate(self.output)) / 1_000_000


def _tiered(value: Any, fallback: Tiered) -> Tiered:
    if value is None:
        return fallback
    if isinstance(value, Decimal | int | float):
        return float(value), ()
    return float(value.base), tuple((int(t.start), float(t.price)) for t in value.tiers)


def _scaled(price: Tiered, factor: float) -> Tiered:
    return price[0] * factor, tuple((start, p * factor) for start, p in price[1])


@lru_cache(maxsize=512)
def _table_price(model: str, provider: str | None) -> _Rates | None:
    """genai-prices' price of ``model`` (resolved once per name), or ``None`` when it does not know it."""
    from genai_prices import Usage as TableUsage
    from genai_prices import calc_price

    for provider_id in dict.fromkeys((provider, None)):  # the upstream's provider first, then any
        try:
            found = calc_price(TableUsage(input_tokens=0, output_tokens=0), model, provider_id=provider_id)
        except LookupError:
            continue
        price = found.model_price
        base = _tiered(price.input_mtok, (0.0, ()))
        write = _tiered(price.cache_write_mtok, _scaled(base, CACHE_WRITE_5M))
        return _Rates(input=base, cache_write=write,
                      cache_write_1h=_tiered(price.cache_write_1h_mtok, _scaled(base, CACHE_WRITE_1H)),
                      cache_read=_tiered(price.cache_read_mtok, _scaled(base, CACHE_READ)),
                      output=_tiered(price.output_mtok, (0.0, ())),
                      context_window=found.model.context_window)
    return None


def _provider_of(upstream_type: str | None) -> str | None:
    return "aws" if upstream_type == "bedrock" else "anthropic" if upstream_type else None


class Pricer:
    """Prices calls for one run tree: ``cost`` of a real usage, ``worst_case`` of a call not yet made."""

    def __init__(self, prices: Mapping[str, ModelPrice] | None = None,
                 unknown: ModelPrice = DEFAULT_UNKNOWN_MODEL_PRICE, *, upstream_type: str | None = None) -> None:
        self.prices = dict(prices or {})
        self.unknown = unknown
        self.provider = _provider_of(upstream_type)

    def source(self, model: str) -> PriceSource:
        if model in self.prices:
            return "prices"
        return "genai-prices" if _table_price(model, self.provider) is not None else "unknown"

    def cost(self, model: str, usage: Usage) -> float:
        """Dollars for ``usage`` of ``model``."""
        own = self.prices.get(model)
        if own is None:
            table = _table_price(model, self.provider)
            if table is not None:
                return table.cost(usage)
            own = self.unknown
        return _own_cost(own, usage)

    def worst_case(self, model: str, input_tokens: int, max_tokens: int, cache: str = "1h") -> float:
        """The most a call of ``model`` with at most ``input_tokens`` in and ``max_tokens`` out can cost:
        every output token used, and all of the input written to the prompt cache the request asks for
        (``cache``: "none", "5m" or "1h"; writes happen only at a request's cache_control breakpoints)."""
        plain = self.cost(model, Usage(input_tokens=input_tokens, output_tokens=max_tokens))
        if cache == "none":
            return plain
        written = Usage(cache_creation_input_tokens=input_tokens, output_tokens=max_tokens,
                        cache_write_1h_tokens=input_tokens if cache == "1h" else 0)
        return max(plain, self.cost(model, written))

    def context_tokens(self, model: str, *, long_context: bool) -> int | None:
        """The most input a model accepts, when the broker knows it: the table's context window (a longer
        prompt is refused, unbilled), unless the request asks for the 1M-context beta. ``None``: no known cap."""
        table = None if long_context or model in self.prices else _table_price(model, self.provider)
        return table.context_window if table is not None else None


def _own_cost(p: ModelPrice, usage: Usage) -> float:
    write_5m = p.cache_write_per_mtok if p.cache_write_per_mtok is not None else p.input_per_mtok * CACHE_WRITE_5M
    write_1h = (p.cache_write_1h_per_mtok if p.cache_write_1h_per_mtok is not None
                else max(write_5m, p.input_per_mtok * CACHE_WRITE_1H))
    read = p.cache_read_per_mtok if p.cache_read_per_mtok is not None else p.input_per_mtok * CACHE_READ
    one_hour = min(usage.cache_write_1h_tokens, usage.cache_creation_input_tokens)
    return (
        usage.input_tokens * p.input_per_mtok
        + (usage.cache_creation_input_tokens - one_hour) * write_5m
        + one_hour * write_1h
        + usage.cache_read_input_tokens * read
        + usage.output_tokens * p.output_per_mtok
    ) / 1_000_000


def list_price(model: str, pricer: Pricer | None = None) -> ModelPrice:
    """``model``'s base price per million tokens (below any long-context tier), for estimates (``fsrlm.costs``)."""
    pricer = pricer or Pricer(upstream_type="anthropic")
    one_million = 1_000_000
    return ModelPrice(
        input_per_mtok=round(pricer.cost(model, Usage(input_tokens=one_million // 10)) * 10, 6),
        output_per_mtok=round(pricer.cost(model, Usage(output_tokens=one_million // 10)) * 10, 6),
    )
