"""What a request costs: the serving provider's price for what each upstream call made. Pure.

A request can be served by more than one provider (failover per image slot), so the cost is a
sum over served calls, each at its own provider's price (catalog `ProviderBinding.price`, or the
model's listed price marked as an estimate). One estimated call makes the whole cost estimated.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class Cost:
    amount: float
    currency: str
    estimated: bool


def call_cost(charge: Charge) -> float:
    """Images at the tier's price, plus each input image, plus each extra whose option is on."""
    price = charge.price
    options = charge.options or {}
    extras = sum(amount for option, amount in price.extras.items() if options.get(option) is True)
    return price.for_resolution(charge.tier) * charge.images + price.per_input_image * charge.input_images + extras


def total_cost(charges: Iterable[Charge], default_currency: str = "USD") -> Cost:
    """The sum over served calls, rounded to a millionth (float noise is not money)."""
    charges = list(charges)
    currency = charges[0].price.currency if charges else default_currency
    return Cost(amount=round(sum(call_cost(c) for c in charges), 6), currency=currency,
                estimated=any(c.price.estimated for c in charges))
