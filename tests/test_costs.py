"""fsrlm.costs: the README's cost table stays what the defaults and list prices give."""

from __future__ import annotations

import re
from pathlib import Path

from fsrlm.config import DEFAULT_BUDGET_USD, RLMConfig
from fsrlm.costs import MB, cost_table, estimate, per_mb

README = Path(__file__).resolve().parents[1] / "README.md"


def defaults() -> RLMConfig:
    return RLMConfig.model_validate({})


def test_the_readme_table_is_the_computed_one() -> None:
    text = README.read_text()
    match = re.search(r"<!-- cost-table:[^\n]*-->\n(.*?)\n<!-- /cost-table -->", text, re.S)
    assert match, "README.md lost its cost table markers"
    assert match.group(1) == cost_table(defaults()), "regenerate the README table from fsrlm.costs.cost_table()"
    low, high = per_mb(defaults())
    assert f"**${low:.2f}–${high:.2f} per MB**" in text


def test_the_default_budget_lets_the_headline_case_finish() -> None:
    fifty = estimate(50 * MB, defaults())
    assert fifty.fits_call_limits
    assert fifty.high <= DEFAULT_BUDGET_USD  # one pass over a 50 MB log, at the dear end, fits
    assert estimate(100 * MB, defaults()).low > DEFAULT_BUDGET_USD * 0.9  # and the cap still means something


def test_the_estimate_matches_the_figure_seen_in_the_field() -> None:
    # Issue 12: a 50 MB log stopped at $5 after 39 subcalls: about $0.128 per 1/100 of the input.
    per_call = estimate(50 * MB, defaults()).subcall_usd
    low, high = per_call[0] / 100, per_call[1] / 100
    assert low <= 5 / 39 <= high * 1.2


def test_estimates_grow_with_the_input_and_follow_the_models() -> None:
    config = defaults()
    sizes = [MB // 10, MB, 10 * MB, 100 * MB]
    costs = [estimate(size, config).low for size in sizes]
    assert costs == sorted(costs)
    opus = RLMConfig.model_validate({"submodel": "claude-opus-4-1"})
    assert estimate(10 * MB, opus).subcall_usd[0] > 10 * estimate(10 * MB, config).subcall_usd[0]
    big = estimate(800 * MB, config)
    assert not big.fits_call_limits  # more chunks than max_total_subcalls
