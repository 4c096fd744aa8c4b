"""What a request costs: the serving provider's price for what each upstream call made. Pure.

A request can be served by more than one provider (failover per image slot), so the cost is a
sum over served calls, each at its own provider's price (catalog `ProviderBinding.price`, or the
model's listed price marked as an estimate). One estimated call makes the whole cost estimated.

OpenAI prices GPT image models per image by quality and size (`by_quality_size`): a call whose
quality and WxH are in the table costs what the table says; without a quality (or with `auto`,
where the model chooses) it is priced at the dearest quality, and a size the table lacks at the
nearest listed size scaled by area. Both are upper-bound estimates and marked so.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .catalog import BindingPrice


@dataclass(frozen=True)
class Charge:
    """One served upstream call, as far as its price goes."""

    price: BindingPrice
    tier: str  # the layout's resolution tier, e.g. "4K"
    images: int  # images the call made
    input_images: int = 0  # images sent with the call (edits)
    options: Mapping[str, Any] | None = None  # the provider-handled options it was sent
    size: tuple[int, int] | None = None  # the output (width, height), for prices by quality and size


@dataclass(frozen=True)
class Cost:
    amount: float
    currency: str
    estimated: bool


def _nearest_size(table: Mapping[str, float], width: int, height: int) -> tuple[str, float]:
    """The listed size closest in shape and area (log distances), and its area."""

    def distance(key: str) -> float:
        w, h = (int(side) for side in key.split("x"))
        return abs(math.log((w / h) / (width / height))) + abs(math.log(w * h / (width * height)))

    key = min(table, key=distance)
    w, h = (int(side) for side in key.split("x"))
    return key, float(w * h)


def image_price(charge: Charge) -> tuple[float, bool]:
    """The price of one image of this call, and whether it is an estimate beyond the price's own flag."""
    price = charge.price
    if not price.by_quality_size or charge.size is None:
        return price.for_resolution(charge.tier), False
    quality = (charge.options or {}).get("quality")
    table = price.by_quality_size.get(quality) if isinstance(quality, str) else None
    estimated = table is None
    if table is None:  # no quality or `auto`: the model chooses, so the dearest is the honest bound
        table = max(price.by_quality_size.values(), key=lambda t: max(t.values(), default=0.0))
    width, height = charge.size
    exact = table.get(f"{width}x{height}")
    if exact is not None:
        return exact, estimated
    if not table:
        return price.for_resolution(charge.tier), True
    key, area = _nearest_size(table, width, height)
    return table[key] * width * height / area, True


def call_cost(charge: Charge) -> float:
    """Images at the tier's (or quality and size's) price, plus each input image, plus each
    extra whose option is on."""
    price = charge.price
    options = charge.options or {}
    extras = sum(amount for option, amount in price.extras.items() if options.get(option) is True)
    return image_price(charge)[0] * charge.images + price.per_input_image * charge.input_images + extras


def total_cost(charges: Iterable[Charge], default_currency: str = "USD") -> Cost:
    """The sum over served calls, rounded to a millionth (float noise is not money)."""
    charges = list(charges)
    currency = charges[0].price.currency if charges else default_currency
    return Cost(
        amount=round(sum(call_cost(c) for c in charges), 6),
        currency=currency,
        estimated=any(c.price.estimated or image_price(c)[1] for c in charges),
    )
