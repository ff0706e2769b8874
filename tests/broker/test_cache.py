"""The response cache: what goes into the key, atomic writes, damage tolerance."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from fsrlm.broker.cache import CachedResponse, ResponseCache, cache_key

BASE: dict[str, Any] = {
    "model": "claude-haiku-4-5",
    "system": "Be brief.",
    "messages": [{"role": "user", "content": "count the ERROR lines"}],
    "max_tokens": 100,
    "temperature": 0.0,
    "top_p": 0.9,
    "top_k": 40,
    "stop_sequences": ["\n\n"],
}
ENTRY = CachedResponse(text="42", model="claude-haiku-4-5", input_tokens=10, output_tokens=2,
                       stop_reason="end_turn", cost_usd=0.00002)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model", "claude-sonnet-4-5"),
        ("system", "Be thorough."),
        ("messages", [{"role": "user", "content": "count the WARN lines"}]),
        ("max_tokens", 101),
        ("temperature", 0.5),
        ("top_p", 0.8),
        ("top_k", 41),
        ("stop_sequences", ["END"]),
    ],
)
def test_key_changes_with_every_field_that_shapes_the_answer(field: str, value: Any) -> None:
    assert cache_key("anthropic", {**BASE, field: value}) != cache_key("anthropic", BASE)


@pytest.mark.parametrize("field", ["temperature", "top_p", "top_k", "stop_sequences", "system"])
def test_key_changes_when_a_field_is_added(field: str) -> None:
    without = {k: v for k, v in BASE.items() if k != field}
    assert cache_key("anthropic", without) != cache_key("anthropic", BASE)


@pytest.mark.parametrize(("field", "value"), [("stream", True), ("stream", False), ("metadata", {"user_id": "u1"})])
def test_key_ignores_fields_that_do_not_change_the_answer(field: str, value: Any) -> None:
    assert cache_key("anthropic", {**BASE, field: value}) == cache_key("anthropic", BASE)


def test_key_depends_on_upstream_but_not_on_dict_order() -> None:
    assert cache_key("bedrock", BASE) != cache_key("anthropic", BASE)
    reordered = dict(reversed(list(BASE.items())))
    assert cache_key("anthropic", reordered) == cache_key("anthropic", BASE)
    assert len(cache_key("anthropic", BASE)) == 64  # sha256 hex: a safe file name


def test_put_then_get_round_trips_and_leaves_no_temp_files(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "cache")
    key = cache_key("anthropic", BASE)
    assert cache.get(key) is None
    data = cache.put(key, ENTRY)
    assert cache.get(key) == ENTRY
    files = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert files == [tmp_path / "cache" / key[:2] / f"{key}.json"]
    assert files[0].read_bytes() == data
    cache.put(key, ENTRY.model_copy(update={"text": "43"}))  # overwrite is atomic too
    assert cache.get(key).text == "43"  # type: ignore[union-attr]
    assert not list((tmp_path / "cache").rglob(".tmp-*"))


@pytest.mark.parametrize("damage", [b"", b"{not json", b'{"text": "42"}', b'{"text": 1, "model": []}', b"\xff\xfe"])
def test_a_damaged_entry_is_a_miss_and_gets_rewritten(tmp_path: Path, damage: bytes,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    cache = ResponseCache(tmp_path)
    key = cache_key("anthropic", BASE)
    cache.put(key, ENTRY)
    path = tmp_path / key[:2] / f"{key}.json"
    path.write_bytes(damage)
    with caplog.at_level(logging.WARNING):
        assert cache.get(key) is None
    cache.put(key, ENTRY)
    assert cache.get(key) == ENTRY


def test_an_entry_that_is_a_directory_is_a_miss(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path)
    key = cache_key("anthropic", BASE)
    (tmp_path / key[:2] / f"{key}.json").mkdir(parents=True)
    assert cache.get(key) is None


def test_put_into_an_unwritable_place_does_not_raise(tmp_path: Path) -> None:
    # A regular file where the cache directory should be: mkdir fails even for root.
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    cache = ResponseCache(blocker / "cache")
    key = cache_key("anthropic", BASE)
    data = cache.put(key, ENTRY)
    assert CachedResponse.model_validate_json(data) == ENTRY  # still usable for the mirror
    assert cache.get(key) is None
    assert blocker.read_text() == "x"


def test_put_when_the_rename_fails_cleans_up_its_temp_file(tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path)
    key = cache_key("anthropic", BASE)
    (tmp_path / key[:2] / f"{key}.json").mkdir(parents=True)  # os.replace onto a directory fails
    (tmp_path / key[:2] / f"{key}.json" / "occupied").write_text("x")
    cache.put(key, ENTRY)
    assert not list(tmp_path.rglob(".tmp-*"))
