"""Prices: the configuration's table, then genai-prices, then the unknown-model price; never zero by accident."""

from __future__ import annotations

import socket

import pytest

from fsrlm.broker.accounting import (
    DOCUMENT_TOKENS,
    IMAGE_TOKENS,
    OVERHEAD_TOKENS,
    Usage,
    UsageSniffer,
    input_ceiling,
    read_usage,
    request_terms,
)
from fsrlm.broker.pricing import Pricer, list_price
from fsrlm.config import DEFAULT_UNKNOWN_MODEL_PRICE, ModelPrice, RLMConfig

M = 1_000_000


def test_anthropic_and_bedrock_ids_come_from_the_maintained_table() -> None:
    pricer = Pricer(upstream_type="anthropic")
    assert pricer.source("claude-sonnet-4-5") == "genai-prices"
    assert pricer.cost("claude-sonnet-4-5", Usage(input_tokens=100_000)) == pytest.approx(0.3)  # below the 200k tier
    assert pricer.cost("claude-sonnet-4-5", Usage(output_tokens=100_000)) == pytest.approx(1.5)
    assert pricer.cost("claude-opus-4-1", Usage(output_tokens=M)) == pytest.approx(75.0)
    bedrock = Pricer(upstream_type="bedrock")
    assert bedrock.source("us.anthropic.claude-haiku-4-5-20251001-v1:0") == "genai-prices"
    assert bedrock.cost("us.anthropic.claude-haiku-4-5-20251001-v1:0", Usage(input_tokens=M)) > 0


@pytest.mark.parametrize("model", ["claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1", "claude-3-haiku"])
@pytest.mark.parametrize("usage", [Usage(input_tokens=5_000, output_tokens=100),
                                   Usage(input_tokens=150_000, cache_read_input_tokens=100_000, output_tokens=5_000,
                                         cache_creation_input_tokens=3_000, cache_write_1h_tokens=1_000)])
def test_the_broker_charges_what_genai_prices_charges(model: str, usage: Usage) -> None:
    from genai_prices import Usage as TableUsage
    from genai_prices import calc_price

    write, write_1h = usage.cache_creation_input_tokens, usage.cache_write_1h_tokens
    expected = calc_price(TableUsage(
        input_tokens=usage.input_tokens + write + usage.cache_read_input_tokens, cache_write_tokens=write,
        cache_write_1h_tokens=write_1h, cache_write_5m_tokens=write - write_1h,
        cache_read_tokens=usage.cache_read_input_tokens, output_tokens=usage.output_tokens,
    ), model, provider_id="anthropic").total_price
    assert Pricer(upstream_type="anthropic").cost(model, usage) == pytest.approx(float(expected))


def test_cache_reads_writes_and_the_long_context_tier() -> None:
    pricer = Pricer(upstream_type="anthropic")
    model = "claude-sonnet-4-5"
    read = pricer.cost(model, Usage(cache_read_input_tokens=100_000))
    write = pricer.cost(model, Usage(cache_creation_input_tokens=100_000))
    write_1h = pricer.cost(model, Usage(cache_creation_input_tokens=100_000, cache_write_1h_tokens=100_000))
    plain = pricer.cost(model, Usage(input_tokens=100_000))
    assert read == pytest.approx(plain * 0.1) and write == pytest.approx(plain * 1.25)
    assert write_1h == pytest.approx(plain * 2)
    # Past 200k input tokens (cache reads and writes count) the whole call is at the long-context price.
    assert pricer.cost(model, Usage(input_tokens=300_000)) == pytest.approx(300_000 * 6 / M)
    assert pricer.cost(model, Usage(input_tokens=150_000, cache_read_input_tokens=100_000)) > \
        pricer.cost(model, Usage(input_tokens=150_000)) + pricer.cost(model, Usage(cache_read_input_tokens=100_000))


def test_an_unknown_model_is_charged_the_unknown_model_price_never_zero() -> None:
    pricer = Pricer(upstream_type="compatible")
    assert pricer.source("my-gateway-model") == "unknown"
    assert pricer.cost("my-gateway-model", Usage(input_tokens=M, output_tokens=M)) == pytest.approx(
        DEFAULT_UNKNOWN_MODEL_PRICE.input_per_mtok + DEFAULT_UNKNOWN_MODEL_PRICE.output_per_mtok)
    assert DEFAULT_UNKNOWN_MODEL_PRICE.output_per_mtok >= Pricer().cost("claude-opus-4-1", Usage(output_tokens=M))
    dearer = Pricer(unknown=ModelPrice(input_per_mtok=100, output_per_mtok=500))
    assert dearer.cost("my-gateway-model", Usage(output_tokens=M)) == pytest.approx(500)


def test_configured_prices_win_over_the_table() -> None:
    pricer = Pricer({"claude-sonnet-4-5": ModelPrice(input_per_mtok=1, output_per_mtok=2),
                     "local-llama": ModelPrice(input_per_mtok=0, output_per_mtok=0)})
    assert pricer.source("claude-sonnet-4-5") == "prices"
    assert pricer.cost("claude-sonnet-4-5", Usage(input_tokens=M, output_tokens=M)) == pytest.approx(3)
    assert pricer.cost("claude-sonnet-4-5", Usage(cache_creation_input_tokens=M)) == pytest.approx(1.25)
    assert pricer.cost("local-llama", Usage(input_tokens=M, output_tokens=M)) == 0.0  # free only when said so


def test_prices_in_the_configuration() -> None:
    config = RLMConfig.model_validate({"prices": {"my-model": {"input_per_mtok": 0.5, "output_per_mtok": 2}},
                                       "unknown_model_price": {"input_per_mtok": 20, "output_per_mtok": 100}})
    assert config.prices["my-model"].output_per_mtok == 2
    assert list_price("my-model", Pricer(config.prices, config.unknown_model_price)).input_per_mtok == 0.5
    assert list_price("other", Pricer(config.prices, config.unknown_model_price)).output_per_mtok == 100
    with pytest.raises(ValueError):
        RLMConfig.model_validate({"prices": {"m": {"input_per_mtok": -1, "output_per_mtok": 1}}})


def test_pricing_needs_no_network(monkeypatch) -> None:
    def no_network(*args, **kwargs):
        raise AssertionError("pricing tried the network")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    assert Pricer().cost("claude-3-5-haiku-latest", Usage(input_tokens=M)) > 0


# -- the worst case of a request ---------------------------------------------------------------


def test_the_worst_case_holds_every_token_at_its_dearest() -> None:
    pricer = Pricer(upstream_type="anthropic")
    model = "claude-sonnet-4-5"
    worst_1h = pricer.worst_case(model, 10_000, 1_000, "1h")
    assert worst_1h == pytest.approx((10_000 * 6 + 1_000 * 15) / M)
    assert pricer.worst_case(model, 10_000, 1_000, "5m") == pytest.approx((10_000 * 3.75 + 1_000 * 15) / M)
    assert pricer.worst_case(model, 10_000, 1_000, "none") == pytest.approx((10_000 * 3 + 1_000 * 15) / M)
    # Any usage within the reservation costs no more than it.
    for usage in (Usage(input_tokens=10_000, output_tokens=1_000),
                  Usage(cache_read_input_tokens=9_000, input_tokens=1_000, output_tokens=1_000),
                  Usage(cache_creation_input_tokens=10_000, cache_write_1h_tokens=10_000, output_tokens=1_000)):
        assert pricer.cost(model, usage) <= worst_1h


def test_request_terms_and_the_input_ceiling() -> None:
    body = (b'{"model": "claude-opus-4-1", "max_tokens": 900, "messages": [{"role": "user", "content": ['
            b'{"type": "im\\u0061ge", "source": {"type": "base64", "data": "AA=="}},'
            b'{"type": "document", "source": {}, "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}]}')
    terms = request_terms(body)
    assert (terms.model, terms.max_tokens, terms.images, terms.documents, terms.cache) == (
        "claude-opus-4-1", 900, 1, 1, "1h")  # an escaped "image" is still an image
    assert input_ceiling(len(body), terms) == len(body) + OVERHEAD_TOKENS + IMAGE_TOKENS + DOCUMENT_TOKENS
    assert input_ceiling(10 ** 7, terms, 200_000) == 200_000
    converse = request_terms(b'{"messages": [], "inferenceConfig": {"maxTokens": 77}}')
    assert converse.max_tokens == 77 and converse.cache == "none"
    deep = b'{"model": "x", "m": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert request_terms(deep).model is None  # unparsable: priced as an unknown model


def test_the_context_cap_is_the_tables_context_window() -> None:
    pricer = Pricer(upstream_type="anthropic")
    assert pricer.context_tokens("claude-sonnet-4-5", long_context=False) == 200_000
    assert pricer.context_tokens("claude-sonnet-4-5", long_context=True) is None  # the 1M beta lifts it
    assert pricer.context_tokens("claude-opus-4-6", long_context=False) == 1_000_000  # 1M natively
    assert pricer.context_tokens("my-gateway-model", long_context=False) is None


# -- reading usage ------------------------------------------------------------------------------


def test_converse_usage_is_read() -> None:
    usage = read_usage({"output": {}, "usage": {"inputTokens": 10, "outputTokens": 20, "cacheReadInputTokens": 3,
                                                "cacheWriteInputTokens": 4, "totalTokens": 37}})
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.cache_read_input_tokens,
            usage.cache_creation_input_tokens) == (10, 20, 3, 4)


@pytest.mark.parametrize("answer", [{}, {"usage": None}, {"usage": {"input_tokens": "1"}}, [], "x"])
def test_an_answer_without_a_readable_usage_gives_none(answer) -> None:
    assert read_usage(answer) is None


def test_the_sniffer_reads_json_and_gives_none_past_its_cap() -> None:
    sniffer = UsageSniffer("application/json")
    sniffer.feed(b'{"usage": {"input_tokens": 5, ')
    sniffer.feed(b'"output_tokens": 6}, "model": "m"}')
    assert sniffer.finish().output_tokens == 6
    big = UsageSniffer("application/json")
    big.feed(b'{"content": "' + b"x" * (9 << 20) + b'", "usage": {"input_tokens": 5, "output_tokens": 6}}')
    assert big.finish() is None


def test_the_sniffer_needs_the_whole_stream() -> None:
    start = b'data: {"type": "message_start", "message": {"usage": {"input_tokens": 50, "output_tokens": 1}}}\n'
    end = b'data: {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 70}}\n'
    cut = UsageSniffer("text/event-stream")
    cut.feed(start)
    assert cut.finish() is None
    whole = UsageSniffer("text/event-stream")
    whole.feed(start + end)
    usage = whole.finish()
    assert usage is not None and (usage.input_tokens, usage.output_tokens) == (50, 70)
