"""GET /v1/usage: requests, images and cost over a period, optionally grouped.

    GET /v1/usage?start=2026-12-01&end=2026-12-02T12:00:00Z&group_by=key,model

`start` and `end` are Unix seconds or ISO 8601 dates or date-times (UTC unless they carry an
offset); by default the current UTC month up to now; `end` is not included. `group_by` is one
or several (comma-separated or repeated) of key, model, provider, day; none gives the total only.
An admin key (IMAGEGATE_ADMIN_KEYS, or a stored key with `admin`) sees every key's usage, any other
key only its own, and a gateway without keys only what it served without one (usage.UsageLog.totals
does the query, in SQL that SQLite and PostgreSQL both run).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Literal, get_args

import anyio.to_thread
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response

from .. import keys
from ..errors import InvalidRequest
from ..gateway import Gateway
from ..usage import Grouping, UsageTotal
from .render import json_response
from .routes import authenticate

GROUPINGS: tuple[Grouping, ...] = get_args(Grouping)
CURRENCY = "USD"  # every price in the catalog is in USD


async def usage_scope(request: Request) -> str | None | Literal["any"]:
    """Whose rows the caller may read: "any" for an admin key, else its own key id (None: the
    gateway has no keys, and the caller sees what was served without one). 401 as for any call."""
    gateway: Gateway = request.app.state.gateway
    key_id = await authenticate(request)
    if key_id is None:
        return None
    policy = gateway.keys.policy(key_id)
    return "any" if policy is not None and policy.admin else key_id


def parse_time(text: str, param: str) -> float:
    """Unix seconds, or an ISO 8601 date or date-time (UTC unless it says otherwise): as the admin
    API reads `expires_at` (keys.parse_time), a 400 naming `param` otherwise."""
    try:
        return keys.parse_time(text)
    except ValueError:
        raise InvalidRequest(
            f"{param} must be Unix seconds or an ISO 8601 date or date-time, not {text!r}.", param=param
        ) from None


def month_start(now: float) -> float:
    today = datetime.fromtimestamp(now, UTC)
    return today.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()


def parse_groupings(values: list[str]) -> tuple[Grouping, ...]:
    """`group_by=a,b` and `group_by=a&group_by=b` alike, each once, in the order given."""
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in GROUPINGS]
    if unknown:
        raise InvalidRequest(
            f"group_by must be among {', '.join(GROUPINGS)} (comma-separated), not {unknown[0]!r}.", param="group_by"
        )
    return tuple(dict.fromkeys(name for name in names if name in GROUPINGS))


def parse_period(query: QueryParams, now: float) -> tuple[float, float]:
    start = parse_time(query["start"], "start") if query.get("start") else month_start(now)
    end = parse_time(query["end"], "end") if query.get("end") else now
    if start >= end:
        raise InvalidRequest("start must be before end (end is not included).", param="start")
    return start, end


def usage_row(total: UsageTotal) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for name, value in total.group.items():
        if name == "key":
            row["key_id"], row["key_name"] = value, total.key_name
        else:
            row[name] = value
    return row | {
        "requests": total.requests,
        "images": total.images,
        "undelivered_images": total.undelivered_images,
        "cost": round(total.cost, 6),
        "currency": CURRENCY,
    }


async def get_usage(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    scope = await usage_scope(request)
    start, end = parse_period(request.query_params, time.time())
    groups = parse_groupings(request.query_params.getlist("group_by"))
    totals = await anyio.to_thread.run_sync(lambda: gateway.usage.totals(start, end, groups, key_id=scope))
    overall = UsageTotal(
        {},
        sum(t.requests for t in totals),
        sum(t.images for t in totals),
        sum(t.cost for t in totals),
        undelivered_images=sum(t.undelivered_images for t in totals),
    )
    return json_response(
        {
            "object": "list",
            "start": start,
            "end": end,
            "group_by": list(groups),
            "data": [usage_row(t) for t in totals] if groups else [],
            "total": usage_row(overall),
        }
    )
