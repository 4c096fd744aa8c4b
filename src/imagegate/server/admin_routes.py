"""The admin API: stored keys and their policies over HTTP (keys.py keeps them).

    POST   /admin/keys          201: the key object, plus `key` and `webhook_secret` (shown only now)
    GET    /admin/keys          {"object": "list", "data": [key objects]}, revoked ones too
                                (`?include_revoked=false` leaves them out)
    GET    /admin/keys/{id}     the key object; 404 key_not_found
    PATCH  /admin/keys/{id}     any of name, models, rate_limits, budget, expires_at, admin: null
                                clears a limit, a sub-object is merged field by field
    DELETE /admin/keys/{id}     revokes it: {"id", "object": "api_key", "deleted": true}

Each is served under /v1 and /openai/v1. Every call needs an admin key (IMAGEGATE_ADMIN_KEYS, or a
stored key with `admin`): none or a wrong one is a 401, another key a 403 admin_key_required.
Static keys are configuration and never listed. A change reaches every instance within the key
cache's time (keys.CACHE_SECONDS), this one at once.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator
from pydantic.json_schema import SkipJsonSchema, WithJsonSchema
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import AuthenticationFailed, InvalidRequest, NotFound, PermissionDenied
from ..gateway import Gateway
from ..keys import LATEST_TIME, KeyRecord, parse_time
from ..policy import Budget, KeyPolicy, RateLimits
from .parsing import read_json
from .render import json_response
from .routes import authenticate

# --- the request bodies --------------------------------------------------------------------------

# 0 would refuse everything: revoke the key instead. At most a signed 64-bit integer, what SQLite's
# INTEGER and PostgreSQL's BIGINT columns hold (a larger one was a 500 OverflowError).
PerMinute = Annotated[int, Field(ge=1, le=2**63 - 1)]
Usd = Annotated[float, Field(ge=0, allow_inf_nan=False)]
# Not blank once stripped (KeyChanges._not_blank too): the pattern says so in the JSON Schema.
Name = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    Field(json_schema_extra={"pattern": r"\S"}),
]
# Unix seconds or an ISO 8601 string (parse_time), in the future, or null: never. The JSON Schema
# says what the before-validator below takes (pydantic's own would offer only numbers).
ExpiresAt = Annotated[
    float | None,
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": LATEST_TIME},
                {"type": "string", "format": "date-time"},
                {"type": "null"},
            ],
            "description": "When the key stops working: Unix seconds or ISO 8601, in the future; null: never.",
        }
    ),
]
ModelName = Annotated[str, StringConstraints(min_length=1, max_length=200)]


def _no_default(schema: dict[str, Any]) -> None:
    """A field whose "not sent" is None and that takes no null: its schema shows no default."""
    schema.pop("default", None)


class _Body(BaseModel):
    # Strict: "5" is no number and 1 no boolean; unknown fields are refused, not ignored.
    model_config = ConfigDict(extra="forbid", strict=True)


class RateLimitsBody(_Body):
    requests_per_minute: PerMinute | None = None
    images_per_minute: PerMinute | None = None


class BudgetBody(_Body):
    usd_per_day: Usd | None = None
    usd_per_month: Usd | None = None


class KeyChanges(_Body):
    """PATCH: only the fields sent change (`model_fields_set`)."""

    # None is "not sent" here; a null `name` or `admin` is refused (_changes), so the JSON Schema
    # (the OpenAPI document's) does not offer null for them.
    name: Name | SkipJsonSchema[None] = Field(default=None, json_schema_extra=_no_default)
    models: Annotated[list[ModelName], Field(min_length=1, max_length=1000)] | None = None
    rate_limits: RateLimitsBody | None = None
    budget: BudgetBody | None = None
    expires_at: ExpiresAt = None  # Unix seconds; an ISO 8601 string is read into them first
    admin: bool | SkipJsonSchema[None] = Field(default=None, json_schema_extra=_no_default)

    @field_validator("name")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        """Python's whitespace, as the key store judges a name (keys._column_value): pydantic's
        strip_whitespace keeps e.g. U+001D, and a name of only that was a 500 (found by schemathesis)."""
        if value is not None and not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("expires_at", mode="before")
    @classmethod
    def _future_time(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError("must be Unix seconds or an ISO 8601 date/time string")
        seconds = parse_time(value)
        if seconds <= time.time():
            raise ValueError("is in the past; a key must expire in the future (null: never)")
        return seconds


class NewKey(KeyChanges):
    name: Name
    admin: bool = False


def _validated(model: type[_Body], body: dict[str, Any]) -> Any:
    """The body as `model`, or a 400 naming the first field at fault (`rate_limits.requests_per_minute`)."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        error = exc.errors()[0]
        param = ".".join(str(part) for part in error["loc"]) or None
        if error["type"] == "extra_forbidden":
            raise InvalidRequest(f"Unknown parameter: '{param}'.", param=param, code="unknown_parameter") from None
        if error["type"] == "missing":
            raise InvalidRequest(f"'{param}' is required.", param=param, code="missing_required_parameter") from None
        reason = str(error["ctx"]["error"]) if error["type"] == "value_error" else error["msg"]
        raise InvalidRequest(f"'{param}': {reason}.", param=param) from None


def _check_models(gateway: Gateway, models: list[str] | None) -> None:
    """Every name in an allow-list must be a catalog model (an id or an alias)."""
    unknown = [m for m in models or [] if gateway.catalog.get(m) is None]
    if unknown:
        raise InvalidRequest(
            f"Unknown model(s) in 'models': {', '.join(repr(m) for m in unknown)}. See GET /v1/models.",
            param="models",
            code="model_not_found",
        )


def _changes(body: KeyChanges) -> dict[str, Any]:
    """The PATCH as flat store fields (keys.UPDATABLE); a sub-object sent as null clears all of it."""
    changes: dict[str, Any] = {}
    for field in body.model_fields_set:
        value = getattr(body, field)
        if isinstance(value, (RateLimitsBody, BudgetBody)):
            changes.update({name: getattr(value, name) for name in value.model_fields_set})
        elif field in ("rate_limits", "budget"):  # null: no limits of that kind
            changes.update(dict.fromkeys((RateLimitsBody if field == "rate_limits" else BudgetBody).model_fields))
        elif value is None and field in ("name", "admin"):
            raise InvalidRequest(f"'{field}' cannot be null.", param=field)
        else:
            changes[field] = value
    return changes


# --- the routes ----------------------------------------------------------------------------------


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


async def require_admin(request: Request) -> KeyPolicy:
    """The caller's policy when it is an admin key: else 401 (no key, a wrong one, or a gateway
    without keys) or 403 admin_key_required."""
    key_id = await authenticate(request)
    if key_id is None:
        raise AuthenticationFailed(
            "The admin API needs an admin key: set IMAGEGATE_ADMIN_KEYS, or create one with "
            "`imagegate keys create NAME --admin`."
        )
    policy = _gateway(request).keys.policy(key_id)
    if policy is None or not policy.admin:
        raise PermissionDenied("This API key is not an admin key; the admin API needs one.")
    return policy


async def _stored(gateway: Gateway, key_id: str) -> KeyRecord:
    record = await asyncio.to_thread(gateway.keys.get, key_id)
    if record is None:
        raise NotFound(f"No key with id '{key_id}'.", param="id", code="key_not_found")
    return record


async def create_key(request: Request) -> Response:
    await require_admin(request)
    gateway = _gateway(request)
    body: NewKey = _validated(NewKey, await read_json(request))
    _check_models(gateway, body.models)
    limits, budget = body.rate_limits or RateLimitsBody(), body.budget or BudgetBody()

    def create() -> tuple[KeyRecord, str, str | None]:
        record, plaintext = gateway.keys.create(
            body.name,
            models=body.models,
            rate_limits=RateLimits(limits.requests_per_minute, limits.images_per_minute),
            budget=Budget(budget.usd_per_day, budget.usd_per_month),
            expires_at=body.expires_at,
            admin=body.admin,
        )
        return record, plaintext, gateway.keys.webhook_secret(record.id)

    record, plaintext, secret = await asyncio.to_thread(create)
    return json_response({**record.to_object(), "key": plaintext, "webhook_secret": secret}, status=201)


async def list_keys(request: Request) -> Response:
    await require_admin(request)
    flag = request.query_params.get("include_revoked", "true").lower()
    if flag not in ("true", "false"):
        raise InvalidRequest("'include_revoked' must be true or false.", param="include_revoked")
    records = await asyncio.to_thread(_gateway(request).keys.list, flag == "true")
    return json_response({"object": "list", "data": [record.to_object() for record in records]})


async def get_key(request: Request) -> Response:
    await require_admin(request)
    return json_response((await _stored(_gateway(request), request.path_params["key_id"])).to_object())


async def update_key(request: Request) -> Response:
    await require_admin(request)
    gateway, key_id = _gateway(request), request.path_params["key_id"]
    body: KeyChanges = _validated(KeyChanges, await read_json(request))
    _check_models(gateway, body.models)
    await _stored(gateway, key_id)  # an unknown id is a 404 before anything else
    record = await asyncio.to_thread(gateway.keys.update, key_id, _changes(body))
    if record is None:
        raise NotFound(f"No key with id '{key_id}'.", param="id", code="key_not_found")
    return json_response(record.to_object())


async def delete_key(request: Request) -> Response:
    """Revokes the key; revoking one already revoked answers the same (DELETE is idempotent)."""
    await require_admin(request)
    gateway, key_id = _gateway(request), request.path_params["key_id"]
    await _stored(gateway, key_id)
    await asyncio.to_thread(gateway.keys.revoke, key_id)
    return json_response({"id": key_id, "object": "api_key", "deleted": True})


ADMIN_ROUTES = [
    Route("/admin/keys", create_key, methods=["POST"]),
    Route("/admin/keys", list_keys, methods=["GET"]),
    Route("/admin/keys/{key_id}", get_key, methods=["GET"]),
    Route("/admin/keys/{key_id}", update_key, methods=["PATCH"]),
    Route("/admin/keys/{key_id}", delete_key, methods=["DELETE"]),
]
