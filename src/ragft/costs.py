"""The pricing table (data/pricing.yaml, dated and cited) and the cost model."""

from __future__ import annotations

from functools import lru_cache

import yaml

from .settings import PROJECT_ROOT

PRICING_FILE = PROJECT_ROOT / "data" / "pricing.yaml"


@lru_cache(maxsize=1)
def _table() -> dict:
    with open(PRICING_FILE) as f:
        return yaml.safe_load(f)


def load_prices() -> dict[str, dict]:
    return _table()["prices"]


def prices_as_of() -> str:
    return _table()["as_of"]


def cost_per_1k_queries(prompt_tokens: float, completion_tokens: float, row: str) -> float:
    """Dollars per 1,000 queries at the mean token counts; unpriced output tokens cost nothing here."""
    price = load_prices()[row]
    dollars = prompt_tokens * price["input_per_mtok"] / 1e6
    if price.get("output_per_mtok") is not None:
        dollars += completion_tokens * price["output_per_mtok"] / 1e6
    return 1000 * dollars
