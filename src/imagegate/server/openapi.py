"""The OpenAPI 3.1 document (GET /openapi.json) and its reference page (GET /docs), built from the
code and the catalog at request time, never written by hand.

- Paths come from the app's own Starlette routes: every route under the /v1 mount and every
  top-level route (health, metrics, these two) is looked up in `OPERATIONS`, the one table of
  what each operation is for, what it takes and what it answers. /openai/v1 mirrors /v1 and is
  said so in `info.description` rather than listed twice. A route missing from `OPERATIONS` is
  left out here and fails tests/server/test_openapi.py, so a new route cannot go undocumented.
- The image request bodies are built from the catalog through `render.model_card` (the same
  parameter cards GET /v1/models answers with): each parameter's type, description, enum and
  range, and in the `x-imagegate-models` extension which models require / support / do not have
  it, per mode, with that model's own allowed values and each provider's handling of it.
- Schemas come from pydantic models where the code has them (the admin key bodies; pydantic's
  JSON Schema is 2020-12, the dialect of OpenAPI 3.1); the answers the code builds as dicts
  (render.py's images answer, jobs.py's job object, the usage answer, keys.py's key object) by
  the schema dicts in this module, each naming the function whose output it describes.
- /docs is server-rendered HTML with one bundled stylesheet and no JavaScript: no Node build, no
  extra PyPI package (swagger-ui-bundle would add megabytes of JavaScript for a page people read),
  and it works offline because nothing leaves the gateway's origin.
"""

from __future__ import annotations

import html
import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from .. import errors
from ..gateway import Gateway
from ..idempotency import MAX_KEY_LENGTH
from ..jobs import STATUSES
from ..params import TEXT_PARAMS
from ..router import Router
from . import admin_routes
from .render import json_response, model_card
from .usage_routes import GROUPINGS

OPENAPI_VERSION = "3.1.0"
STATIC_DIR = Path(__file__).parent / "static"
API_PREFIX = "/v1"
JSON = "application/json"
_CONVERTOR = re.compile(r"\{([^}:]+):[^}]+\}")  # Starlette's {name:path} is OpenAPI's {name}
_JSON_TYPES = {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean"}
# Image inputs and the mask are files: multipart parts of images/edits, never JSON generation fields.
_FILE_FIELDS = ("image", "images", "mask")


# --- response schemas (the dicts render.py, jobs.py, keys.py and usage_routes.py build) ------------

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "OpenAI's error shape (errors.py ImagegateError.to_openai_json).",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string", "examples": ["invalid_request_error"]},
                "param": {"type": ["string", "null"], "description": "The field at fault, when there is one."},
                "code": {"type": ["string", "null"], "examples": ["invalid_value", "unsupported_parameter"]},
            },
        }
    },
}
ADJUSTMENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A value the gateway changed or did not apply (pipeline.adjustment_fields).",
    "required": ["param", "requested", "applied"],
    "properties": {"param": {"type": "string"}, "requested": {"type": "string"}, "applied": {"type": "string"}},
}
_TOKEN_SPLIT = {
    "type": "object",
    "properties": {"text_tokens": {"type": "integer"}, "image_tokens": {"type": "integer"}},
}
IMAGES_RESPONSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "The images answer (server/render.py images_response); `effective` and `adjustments` "
    "are imagegate's additions to OpenAI's shape.",
    "required": ["created", "data", "usage", "effective", "adjustments"],
    "properties": {
        "created": {"type": "integer", "description": "Unix seconds."},
        "data": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "url": {"type": "string", "description": "A result URL (or a data URI with sync_mode)."},
                    "b64_json": {"type": "string", "contentEncoding": "base64"},
                    "revised_prompt": {"type": ["string", "null"]},
                },
            },
        },
        "output_format": {"type": "string"},
        "size": {"type": "string", "pattern": "^[0-9]+x[0-9]+$"},
        "usage": {
            "type": "object",
            "properties": {
                "model": {"type": "string"},
                "provider": {"type": "string"},
                "images": {"type": "integer"},
                "cost": {"type": "number"},
                "currency": {"type": "string"},
                "cost_estimated": {"type": "boolean"},
                "input_tokens": {"type": "integer"},
                "output_tokens": {"type": "integer"},
                "total_tokens": {"type": "integer"},
                "input_tokens_details": _TOKEN_SPLIT,
                "output_tokens_details": _TOKEN_SPLIT,
            },
        },
        "effective": {
            "type": "object",
            "description": "The settings the images were really made with (pipeline.py effective).",
            "properties": {
                "model": {"type": "string"},
                "provider": {"type": "string"},
                "aspect_ratio": {"type": ["string", "null"]},
                "resolution": {"type": ["string", "null"]},
                "width": {"type": "integer"},
                "height": {"type": "integer"},
                "output_format": {"type": "string"},
                "response_format": {"type": "string"},
                "n": {"type": "integer"},
                "seed": {"type": ["integer", "null"]},
            },
        },
        "adjustments": {"type": "array", "items": {"$ref": "#/components/schemas/Adjustment"}},
    },
}
JOB_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "An async job (jobs.py Job.to_object); `result` is the images answer once it succeeded.",
    "required": ["id", "object", "status", "created_at", "model"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "image.job"},
        "status": {"enum": list(STATUSES)},
        "created_at": {"type": "integer"},
        "started_at": {"type": ["integer", "null"]},
        "finished_at": {"type": ["integer", "null"]},
        "model": {"type": "string"},
        "attempts": {"type": "integer"},
        "webhook": {"type": "object"},
        "result": {"oneOf": [{"$ref": "#/components/schemas/ImagesResponse"}, {"type": "null"}]},
        "error": {"oneOf": [{"$ref": "#/components/schemas/Error"}, {"type": "object"}, {"type": "null"}]},
    },
}
_USAGE_ROW = {
    "type": "object",
    "properties": {
        "key_id": {"type": ["string", "null"]},
        "key_name": {"type": ["string", "null"]},
        "model": {"type": "string"},
        "provider": {"type": "string"},
        "day": {"type": "string"},
        "requests": {"type": "integer"},
        "images": {"type": "integer"},
        "undelivered_images": {"type": "integer"},
        "cost": {"type": "number"},
        "currency": {"type": "string"},
    },
}
USAGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Requests, images and cost over a period (server/usage_routes.py get_usage).",
    "properties": {
        "object": {"const": "list"},
        "start": {"type": "number"},
        "end": {"type": "number"},
        "group_by": {"type": "array", "items": {"type": "string"}},
        "data": {"type": "array", "items": _USAGE_ROW},
        "total": _USAGE_ROW,
    },
}
_NULLABLE_INT = {"type": ["integer", "null"]}
_NULLABLE_NUMBER = {"type": ["number", "null"]}
API_KEY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A stored key (keys.py KeyRecord.to_object); never the key itself after creation.",
    "properties": {
        "object": {"const": "api_key"},
        "id": {"type": "string"},
        "name": {"type": "string"},
        "prefix": {"type": "string"},
        "created_at": {"type": "integer"},
        "updated_at": _NULLABLE_INT,
        "expires_at": _NULLABLE_INT,
        "revoked_at": _NULLABLE_INT,
        "models": {"type": ["array", "null"], "items": {"type": "string"}},
        "rate_limits": {
            "type": "object",
            "properties": {"requests_per_minute": _NULLABLE_INT, "images_per_minute": _NULLABLE_INT},
        },
        "budget": {
            "type": "object",
            "properties": {"usd_per_day": _NULLABLE_NUMBER, "usd_per_month": _NULLABLE_NUMBER},
        },
        "admin": {"type": "boolean"},
        "key": {"type": "string", "description": "Only in POST /admin/keys's answer."},
        "webhook_secret": {"type": "string", "description": "Only in POST /admin/keys's answer."},
    },
}
MODEL_CARD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A model's card, straight from the catalog (server/render.py model_card); asked for by an "
    "alias, it carries that id and `alias_of`.",
    "required": ["id", "object", "modes", "parameters", "providers"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "model"},
        "aliases": {"type": "array", "items": {"type": "string"}},
        "alias_of": {"type": "string"},
        "owned_by": {"type": "string"},
        "name": {"type": "string"},
        "description": {"type": "string"},
        "available": {"type": "boolean", "description": "Whether a configured provider serves it."},
        "modes": {"type": "array", "items": {"enum": ["t2i", "edit"]}},
        "parameters": {
            "type": "object",
            "description": "Each parameter's spec: type, description, t2i / edit availability, values, range.",
            "additionalProperties": {"type": "object"},
        },
        "resolution_tiers": {"type": "array", "items": {"type": "string"}},
        "default_resolution": {"type": ["string", "null"]},
        "aspect_ratios": {"type": "array", "items": {"type": "string"}},
        "sizes": {"type": ["array", "null"], "items": {"type": "object"}},
        "pixel_limits": {"type": ["object", "null"]},
        "max_input_images": {"type": ["integer", "null"]},
        "input_formats": {"type": ["array", "null"], "items": {"type": "string"}},
        "price": {"type": "object"},
        "providers": {"type": "array", "items": {"type": "object"}},
    },
}
_LIST_OF: dict[str, Any] = {"type": "object", "properties": {"object": {"const": "list"}, "data": {"type": "array"}}}
# One server-sent event, as OpenAPI 3.1 has a text/event-stream `schema` describe each (3.2 calls it
# itemSchema): its `event` name and its JSON `data` (server/streaming.py _sse, jobs.py's events).
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "event": {"type": "string", "examples": ["image_generation.partial_image", "image_generation.completed"]},
        "data": {"type": "string", "contentMediaType": "application/json"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
}


# --- operations ------------------------------------------------------------------------------------


def _json(ref: str) -> dict[str, Any]:
    return {"content": {JSON: {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def _ok(ref: str | None, description: str = "OK") -> dict[str, Any]:
    return {"description": description, **(_json(ref) if ref else {})}


def _errors(*classes: type[errors.ImagegateError]) -> dict[str, Any]:
    """One response per status the classes answer with, each OpenAI's error shape, listing the codes."""
    by_status: dict[int, list[str]] = {}
    for cls in classes:
        codes = by_status.setdefault(cls.status_code, [])
        if cls.default_code is not None and cls.default_code not in codes:
            codes.append(cls.default_code)
    return {
        str(status): {"description": "Error codes: " + ", ".join(codes), **_json("Error")}
        for status, codes in sorted(by_status.items())
    }


_AUTH_ERRORS = (errors.AuthenticationFailed,)
_IMAGE_ERRORS = (
    errors.InvalidRequest,
    errors.UnsupportedParameter,
    errors.InvalidImage,
    errors.AuthenticationFailed,
    errors.PermissionDenied,
    errors.ModelNotFound,
    errors.RequestTimeout,
    errors.IdempotentResultsGone,
    errors.PayloadTooLarge,
    errors.IdempotencyKeyReused,
    errors.UpstreamError,
    errors.UpstreamBadResponse,
    errors.NoImageGenerated,
    errors.UpstreamUnavailable,
    errors.UpstreamRateLimited,
    errors.ServiceUnavailable,
    errors.UpstreamTimeout,
    errors.ImagegateError,
)
_ADMIN_ERRORS = (errors.InvalidRequest, errors.AuthenticationFailed, errors.PermissionDenied, errors.NotFound)
_JOB_ERRORS = (errors.InvalidRequest, errors.AuthenticationFailed, errors.JobNotFound)
_PREFER = {
    "name": "Prefer",
    "in": "header",
    "required": False,
    "description": "`respond-async`: answer 202 with a job object at once (see /v1/images/jobs).",
    "schema": {"type": "string", "examples": ["respond-async"]},
}
_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "The same key and body within the key's lifetime replays the first answer. Not with "
    "`Prefer: respond-async` or `stream: true` (a 400: a job id identifies the work, a stream is not replayed).",
    # idempotency.scope_key: 1 to MAX_KEY_LENGTH printable characters (here ASCII: a header's).
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH, "pattern": "^[!-~]([ -~]*[!-~])?$"},
}


# A model page that is not there: an HTML page naming the unknown id (page_routes.model_page), or
# OpenAI's error JSON when IMAGEGATE_PLAYGROUND=false turns the pages off.
_PAGE_NOT_FOUND: dict[str, Any] = {
    "description": "No such model (an HTML page), or the pages are off (JSON).",
    "content": {"text/html": {}, **_json("Error")["content"]},
}


# keys.parse_time: Unix seconds (before year 10000: at most 11 digits) or an ISO 8601 date or
# date-time; empty is the default (usage_routes.parse_period).
_TIME: dict[str, Any] = {
    "anyOf": [
        {"type": "string", "pattern": "^([0-9]{1,11}(\\.[0-9]+)?)?$"},
        {"type": "string", "format": "date"},
        {"type": "string", "format": "date-time"},
    ]
}
_GROUPING = "(" + "|".join(GROUPINGS) + ")"  # usage_routes.parse_groupings


def _links(parameter: str, *operation_ids: str) -> dict[str, Any]:
    """OpenAPI links from an answer's `id` to the operations that take it as `parameter`: what a
    client does next, and what lets schemathesis's stateful phase reach the by-id operations."""
    return {
        operation_id: {"operationId": operation_id, "parameters": {parameter: "$response.body#/id"}}
        for operation_id in operation_ids
    }


_JOB_LINKS = _links("job_id", "get_job", "cancel_job", "job_events")
_KEY_LINKS = _links("key_id", "get_key", "update_key", "delete_key")


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": {"type": "string"}}


def _images_operation(summary: str, body_ref: str, multipart: bool) -> dict[str, Any]:
    content_type = "multipart/form-data" if multipart else JSON
    body: dict[str, Any] = {
        "required": True,
        "content": {content_type: {"schema": {"$ref": f"#/components/schemas/{body_ref}"}}},
    }
    if multipart:  # images/edits takes the same fields as JSON too (image URLs or data URIs)
        body["content"][JSON] = {"schema": {"$ref": "#/components/schemas/EditJsonRequest"}}
    return {
        "summary": summary,
        "tags": ["images"],
        "parameters": [_PREFER, _IDEMPOTENCY_KEY],
        "requestBody": body,
        "responses": {
            "200": {
                "description": "The images (or, with `stream: true`, a text/event-stream of partial and "
                "completed events).",
                "content": {
                    **_json("ImagesResponse")["content"],
                    "text/event-stream": {"schema": SSE_EVENT_SCHEMA},  # server/streaming.py's events
                },
            },
            "202": {**_ok("Job", "Accepted as an async job (Prefer: respond-async)."), "links": _JOB_LINKS},
            **_errors(*_IMAGE_ERRORS),
        },
    }


# (route path as the app declares it, method) -> the operation. Responses name shared schemas.
OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("/v1/images/generations", "POST"): _images_operation("Generate images from a prompt", "GenerationRequest", False),
    ("/v1/images/edits", "POST"): _images_operation("Edit images (with an optional mask)", "EditRequest", True),
    ("/v1/models", "GET"): {
        "summary": "Every model card (and one per alias)",
        "tags": ["models"],
        "responses": {"200": _ok("ModelList"), **_errors(*_AUTH_ERRORS)},
    },
    ("/v1/models/{model_id:path}", "GET"): {
        "summary": "One model card: its parameters, sizes, price and providers, from the catalog",
        "tags": ["models"],
        "parameters": [_path_param("model_id", "A model id or alias (may contain '/').")],
        "responses": {"200": _ok("ModelCard"), **_errors(errors.AuthenticationFailed, errors.ModelNotFound)},
    },
    ("/v1/results/{name}", "GET"): {
        "summary": "A result image (its URL is the capability: no API key)",
        "tags": ["images"],
        "security": [],
        "parameters": [_path_param("name", "The result's name from a result URL.")],
        "responses": {
            "200": {"description": "The image bytes.", "content": {"image/*": {"schema": {"type": "string"}}}},
            **_errors(errors.NotFound),
        },
    },
    ("/v1/images/jobs", "GET"): {
        "summary": "The caller's async jobs, newest first",
        "tags": ["jobs"],
        "parameters": [
            {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100}},
            {
                "name": "after",
                "in": "query",
                "schema": {"type": "string"},
                "description": "The cursor: the id of one of your jobs (another is a 400 invalid_cursor).",
            },
            {"name": "status", "in": "query", "schema": {"enum": list(STATUSES)}},
        ],
        "responses": {"200": _ok("JobList"), **_errors(*_JOB_ERRORS)},
    },
    ("/v1/images/jobs/{job_id}", "GET"): {
        "summary": "One async job",
        "tags": ["jobs"],
        "parameters": [_path_param("job_id", "The job's id.")],
        "responses": {"200": _ok("Job"), **_errors(*_JOB_ERRORS)},
    },
    ("/v1/images/jobs/{job_id}/cancel", "POST"): {
        "summary": "Cancel a queued or running job (409 once it has ended)",
        "tags": ["jobs"],
        "parameters": [_path_param("job_id", "The job's id.")],
        "responses": {
            "200": _ok("Job"),
            "409": {"description": "The job has already ended.", **_json("Error")},
            **_errors(*_JOB_ERRORS),
        },
    },
    ("/v1/images/jobs/{job_id}/events", "GET"): {
        "summary": "The job's event stream, replayed from the start, then followed live",
        "tags": ["jobs"],
        "parameters": [_path_param("job_id", "The job's id.")],
        "responses": {
            "200": {
                "description": "Server-sent events.",
                "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}},
            },
            **_errors(*_JOB_ERRORS),
        },
    },
    ("/v1/admin/keys", "POST"): {
        "summary": "Create a stored key (admin key only); the answer is the only time `key` is shown",
        "tags": ["admin"],
        "requestBody": {"required": True, **_json("NewKey")},
        "responses": {"201": {**_ok("ApiKey", "Created."), "links": _KEY_LINKS}, **_errors(*_ADMIN_ERRORS)},
    },
    ("/v1/admin/keys", "GET"): {
        "summary": "Every stored key (admin key only)",
        "tags": ["admin"],
        "parameters": [{"name": "include_revoked", "in": "query", "schema": {"type": "boolean", "default": True}}],
        "responses": {"200": _ok("ApiKeyList"), **_errors(*_ADMIN_ERRORS)},
    },
    ("/v1/admin/keys/{key_id}", "GET"): {
        "summary": "One stored key (admin key only)",
        "tags": ["admin"],
        "parameters": [_path_param("key_id", "The key's id.")],
        "responses": {"200": _ok("ApiKey"), **_errors(*_ADMIN_ERRORS)},
    },
    ("/v1/admin/keys/{key_id}", "PATCH"): {
        "summary": "Change a stored key's policy (only the fields sent change)",
        "tags": ["admin"],
        "parameters": [_path_param("key_id", "The key's id.")],
        "requestBody": {"required": True, **_json("KeyChanges")},
        "responses": {"200": _ok("ApiKey"), **_errors(*_ADMIN_ERRORS)},
    },
    ("/v1/admin/keys/{key_id}", "DELETE"): {
        "summary": "Revoke a stored key (it stays listed and readable, with `revoked_at` set)",
        "tags": ["admin"],
        "parameters": [_path_param("key_id", "The key's id.")],
        "responses": {"200": _ok(None, "`{id, object: api_key, deleted: true}`"), **_errors(*_ADMIN_ERRORS)},
    },
    ("/v1/usage", "GET"): {
        "summary": "Requests, images and cost over a period, optionally grouped",
        "tags": ["usage"],
        "parameters": [
            {"name": "start", "in": "query", "schema": _TIME, "description": "Unix seconds or ISO 8601."},
            {"name": "end", "in": "query", "schema": _TIME, "description": "Unix seconds or ISO 8601."},
            {
                "name": "group_by",
                "in": "query",
                "schema": {"type": "string", "pattern": f"^({_GROUPING}(,{_GROUPING})*)?$"},  # empty: no grouping
                "description": "One or several (comma-separated) of key, model, provider, day.",
            },
        ],
        "responses": {"200": _ok("Usage"), **_errors(errors.InvalidRequest, errors.AuthenticationFailed)},
    },
    ("/health", "GET"): {
        "summary": "The configured providers",
        "tags": ["monitoring"],
        "security": [],
        "responses": {"200": _ok(None)},
    },
    ("/health/live", "GET"): {
        "summary": "Liveness: the process serves",
        "tags": ["monitoring"],
        "security": [],
        "responses": {"200": _ok(None)},
    },
    ("/health/ready", "GET"): {
        "summary": "Readiness: database, Redis and result store checked",
        "tags": ["monitoring"],
        "security": [],
        "responses": {"200": _ok(None), "503": {"description": "A check failed."}},
    },
    ("/metrics", "GET"): {
        "summary": "Prometheus metrics",
        "tags": ["monitoring"],
        "security": [],
        "responses": {"200": {"description": "Prometheus text format.", "content": {"text/plain": {}}}},
    },
    ("/openapi.json", "GET"): {
        "summary": "This document",
        "tags": ["docs"],
        "security": [],
        "responses": {"200": {"description": "OpenAPI 3.1.", "content": {JSON: {}}}},
    },
    ("/docs", "GET"): {
        "summary": "This document as an HTML reference (off with IMAGEGATE_PLAYGROUND=false)",
        "tags": ["docs"],
        "security": [],
        "responses": {"200": {"description": "HTML.", "content": {"text/html": {}}}, **_errors(errors.NotFound)},
    },
    ("/", "GET"): {
        "summary": "The playground: try the models in a browser with a key (HTML; off with IMAGEGATE_PLAYGROUND=false)",
        "tags": ["docs"],
        "security": [],
        "responses": {"200": {"description": "HTML.", "content": {"text/html": {}}}, **_errors(errors.NotFound)},
    },
    ("/favicon.ico", "GET"): {
        "summary": "The pages' icon, /static/favicon.svg (off with IMAGEGATE_PLAYGROUND=false)",
        "tags": ["docs"],
        "security": [],
        "responses": {
            "200": {"description": "The SVG icon.", "content": {"image/svg+xml": {}}},
            **_errors(errors.NotFound),
        },
    },
    ("/models", "GET"): {
        "summary": "Every model's page, listed (HTML; off with IMAGEGATE_PLAYGROUND=false)",
        "tags": ["docs"],
        "security": [],
        "responses": {"200": {"description": "HTML.", "content": {"text/html": {}}}, **_errors(errors.NotFound)},
    },
    ("/models/{model_id:path}", "GET"): {
        "summary": "A model's page from the catalog: parameters per mode, sizes, providers, prices, examples (HTML)",
        "tags": ["docs"],
        "security": [],
        "parameters": [_path_param("model_id", "A model id or alias (may contain '/').")],
        "responses": {"200": {"description": "HTML.", "content": {"text/html": {}}}, "404": _PAGE_NOT_FOUND},
    },
}


def served_operations(routes: list[BaseRoute]) -> list[tuple[str, str, str]]:
    """(path, method, endpoint name) of every route the app serves under /v1 and at the top level:
    the mirror under /openai/v1 and static file mounts are not operations of their own."""
    found: list[tuple[str, str, str]] = []
    for route in routes:
        if isinstance(route, Mount) and route.path == API_PREFIX:
            found += [
                (API_PREFIX + r.path, m, r.name) for r in route.routes if isinstance(r, Route) for m in _methods(r)
            ]
        elif isinstance(route, Route):
            found += [(route.path, m, route.name) for m in _methods(route)]
    return found


def _methods(route: Route) -> list[str]:
    return sorted((route.methods or set()) - {"HEAD"})  # Starlette adds HEAD to every GET


# --- the image parameters, from the catalog --------------------------------------------------------


def _cards(router: Router) -> list[dict[str, Any]]:
    return [model_card(model, router) for model in router.catalog]


def _allowed_values(name: str, card: dict[str, Any]) -> list[str] | None:
    """A model's values for `name`: its ratios and tiers come from its size table, the rest from the spec."""
    if name == "aspect_ratio":
        return list(card["aspect_ratios"]) or None
    if name == "resolution":  # the spec's values ("auto" among them), then the size table's tiers
        declared = card["parameters"].get(name, {}).get("values") or []
        return [*declared, *(t for t in card["resolution_tiers"] if t not in declared)] or None
    values = card["parameters"].get(name, {}).get("values")
    return list(values) if values else None


# What the gateway parses out of free-form strings (normalize.py _SIZE_PIXELS and _RATIO, which
# also take decimals and more separators; the patterns are the everyday subset), so generated
# values reach the matching rather than only its 400. ECMA-262 regexes, as JSON Schema has them.
_NUMBER = "[1-9][0-9]{0,4}"
_RATIO = f"{_NUMBER} *[:/] *{_NUMBER}"
_STRING_FORMATS: dict[str, dict[str, Any]] = {
    "size": {"pattern": f"^ *(|[aA][uU][tT][oO]|{_NUMBER} *[xX*] *{_NUMBER}|{_RATIO}) *$"},
    "aspect_ratio": {"pattern": f"^ *{_RATIO} *$"},
}
# params._string: a text parameter (the prompt) must not be empty once stripped.
_TEXT_FORMAT = {"minLength": 1, "pattern": "\\S"}


def parameter_schema(name: str, cards: list[dict[str, Any]]) -> dict[str, Any]:
    """One request field: its type, description, enum (where the gateway checks it), range and
    default from the catalog, and per model and mode whether it is required / supported / not
    available (`x-imagegate-models`, with each provider's handling of it; a model not listed passes
    the field through to its upstream). Models that declare it with different types (BFL's integer
    safety_tolerance, fal's string one) give one `anyOf` branch per type."""
    declared = [(card, card["parameters"][name]) for card in cards if name in card["parameters"]]
    first = declared[0][1]
    by_type: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for card, spec in declared:
        by_type.setdefault(_JSON_TYPES[spec["type"]], []).append((card, spec))
    variants = [_typed_schema(name, json_type, entries) for json_type, entries in by_type.items()]
    schema: dict[str, Any] = {"description": first["description"]}
    schema |= variants[0] if len(variants) == 1 else {"anyOf": variants}
    defaults = {repr(spec.get("default")) for _, spec in declared}
    if len(defaults) == 1 and first.get("default") is not None:
        schema["default"] = first["default"]
    schema["x-imagegate-models"] = {
        card["id"]: {
            "t2i": spec["t2i"],
            "edit": spec["edit"],
            **({"values": allowed} if (allowed := _allowed_values(name, card)) else {}),
            **({"provider": spec["provider"]} if spec.get("provider") else {}),
            **({"providers": handlings} if (handlings := _handlings(name, card)) else {}),
        }
        for card, spec in declared
    }
    return schema


def _typed_schema(name: str, json_type: str, declared: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """The field's values of one JSON type, over the models that declare it so."""
    schema: dict[str, Any] = {"type": json_type}
    enum: list[str] = []
    for card, _spec in declared:
        enum += [v for v in _allowed_values(name, card) or [] if v not in enum]
    if enum:
        # Ratios and tiers are matched to the nearest one the model has, so any is accepted:
        # they are examples there, an enum only where a value outside it is a 400 (params._string).
        schema["enum" if name not in ("aspect_ratio", "resolution") else "examples"] = enum
    if json_type == "string":
        schema |= _TEXT_FORMAT if name in TEXT_PARAMS else _STRING_FORMATS.get(name, {})
    else:
        for bound in ("minimum", "maximum"):
            values = [spec[bound] for _, spec in declared if spec.get(bound) is not None]
            if values:
                value = min(values) if bound == "minimum" else max(values)
                schema[bound] = int(value) if float(value).is_integer() else value  # the catalog keeps floats
    return schema


def _handlings(name: str, card: dict[str, Any]) -> dict[str, str]:
    """How each provider of the model takes `name`: passthrough, renamed, converted, emulated or
    not_available (the catalog's bindings, as the model card shows them)."""
    return {
        provider["id"]: provider["parameters"][name]["handling"]
        for provider in card["providers"]
        if name in provider["parameters"]
    }


def _request_schema(cards: list[dict[str, Any]], mode: str, *, multipart: bool) -> dict[str, Any]:
    names: list[str] = []
    for card in cards:
        names += [
            n
            for n, spec in card["parameters"].items()
            if n not in names and n not in _FILE_FIELDS and spec["type"] != "file"
        ]  # files are the edit's parts below, whatever an operator's catalog calls them
    # The models this gateway can serve now (a provider is configured for them): the others are a
    # 503 provider_not_configured, the operator's to fix, and GET /v1/models lists them as
    # `available: false`. With none configured, the document still names every model.
    served = [card for card in cards if card["available"]] or cards
    model_ids = [name for card in served for name in (card["id"], *card["aliases"])]
    properties: dict[str, Any] = {
        "model": {
            "type": "string",
            "enum": model_ids,
            "description": "A model id or alias this gateway serves (GET /v1/models: `available`); by default "
            "IMAGEGATE_DEFAULT_MODEL, else the catalog's first.",
        }
    }
    properties |= {name: parameter_schema(name, cards) for name in names}
    required = [n for n in names if all(c["parameters"].get(n, {}).get(mode) == "required" for c in cards)]
    schema: dict[str, Any] = {"type": "object", "required": required, "properties": properties}
    if mode == "edit":
        schema |= _edit_inputs(properties, multipart=multipart)
    example = {"model": served[0]["id"] if served else "", "prompt": "A lighthouse at dusk", "n": 1}
    if mode == "edit" and not multipart:  # a real image: generated strings are no pictures
        example = {**example, "prompt": "Make the sky purple", "image": EXAMPLE_IMAGE}
    return schema | ({"examples": [example]} if mode == "t2i" or not multipart else {})


# A 1x1 PNG as a data URI: the JSON edit's example, an input the gateway really decodes.
EXAMPLE_IMAGE = (
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def _edit_inputs(properties: dict[str, Any], *, multipart: bool) -> dict[str, Any]:
    """The edit's input images and mask (server/parsing.py: multipart files, or JSON references),
    added to `properties`; answers the schema keywords that make one image required."""
    if multipart:
        image = {"type": "string", "contentMediaType": "application/octet-stream"}
        description = "Input images, as repeated `image[]` parts (the openai SDK) or `image`."
        properties["image[]"] = {"type": "array", "items": image, "minItems": 1, "description": description}
        properties["image"] = {"oneOf": [image, {"type": "array", "items": image}], "description": description}
        properties["mask"] = {**image, "description": "A PNG whose transparent pixels mark where to edit."}
        return {"anyOf": [{"required": ["image[]"]}, {"required": ["image"]}]}
    # parsing._image_ref: a URL or data URI, or OpenAI's {"image_url": ...} (chat-style {"url": ...} inside).
    url = {"type": "string", "minLength": 1, "description": "An http(s) URL or a data URI."}
    chat_style = {"type": "object", "required": ["url"], "properties": {"url": url}}
    wrapped = {"type": "object", "required": ["image_url"], "properties": {"image_url": {"oneOf": [url, chat_style]}}}
    ref = {"oneOf": [url, wrapped]}
    properties["image"] = {"oneOf": [ref, {"type": "array", "items": ref, "minItems": 1}]}
    properties["images"] = {"type": "array", "items": ref, "minItems": 1}
    properties["mask"] = ref
    return {"anyOf": [{"required": ["image"]}, {"required": ["images"]}]}


# --- the document ----------------------------------------------------------------------------------


def openapi_document(router: Router, routes: list[BaseRoute]) -> dict[str, Any]:
    cards = _cards(router)
    model_ids = [name for card in cards for name in (card["id"], *card["aliases"])]
    paths: dict[str, dict[str, Any]] = {}
    for path, method, endpoint in served_operations(routes):
        operation = OPERATIONS.get((path, method))
        if operation is not None:
            # The handler's name is the operationId: unique (tests/server/test_openapi.py checks),
            # what client generators name their methods by, and what the `links` point at.
            paths.setdefault(_CONVERTOR.sub(r"{\1}", path), {})[method.lower()] = {"operationId": endpoint, **operation}
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "imagegate",
            "version": _version(),
            "description": "An OpenAI-compatible gateway for image generation and editing. Every path under "
            "/v1 is also served under /openai/v1. Parameters and their per-model availability come from "
            "the model catalog (x-imagegate-models); GET /v1/models/{model_id} has a model's full card.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "An imagegate API key."}},
            "schemas": {
                "GenerationRequest": _request_schema(cards, "t2i", multipart=False),
                "EditRequest": _request_schema(cards, "edit", multipart=True),
                "EditJsonRequest": _request_schema(cards, "edit", multipart=False),
                "ImagesResponse": IMAGES_RESPONSE_SCHEMA,
                "Adjustment": ADJUSTMENT_SCHEMA,
                "Error": ERROR_SCHEMA,
                "Job": JOB_SCHEMA,
                "JobList": {**_LIST_OF, "properties": {**_LIST_OF["properties"], "has_more": {"type": "boolean"}}},
                "Usage": USAGE_SCHEMA,
                "ApiKey": API_KEY_SCHEMA,
                "ApiKeyList": _LIST_OF,
                "ModelCard": MODEL_CARD_SCHEMA,
                "ModelList": {
                    **_LIST_OF,
                    "properties": {
                        **_LIST_OF["properties"],
                        "data": {"type": "array", "items": {"$ref": "#/components/schemas/ModelCard"}},
                        "notice": {"type": "string"},
                    },
                },
                **_pydantic_schemas(model_ids),
            },
        },
    }


def _pydantic_schemas(model_ids: list[str]) -> dict[str, Any]:
    """The admin request bodies from their pydantic models; their $defs move to components. A
    key's `models` allow-list takes the catalog's ids and aliases (admin_routes._check_models),
    which only the catalog knows, so they are filled in here."""
    schemas: dict[str, Any] = {}
    for model in (admin_routes.NewKey, admin_routes.KeyChanges):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas |= schema.pop("$defs", {})
        allow_list = schema["properties"]["models"]["anyOf"][0]
        allow_list["items"] = {**allow_list["items"], "enum": model_ids}
        schemas[model.__name__] = schema
    return schemas


def _version() -> str:
    try:
        return version("imagegate")
    except PackageNotFoundError:  # run from a source tree
        return "0.0.0"


# --- routes ----------------------------------------------------------------------------------------


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


async def openapi_json(request: Request) -> Response:
    """Unauthenticated, like /health: what a client generator reads first."""
    return json_response(openapi_document(_gateway(request).router, request.app.routes))


async def docs(request: Request) -> Response:
    if not _gateway(request).settings.playground:
        raise errors.NotFound(f"No route {request.method} {request.url.path}.")
    return HTMLResponse(render_docs(openapi_document(_gateway(request).router, request.app.routes)))


# The descriptions' only markup: `inline code` (catalog and schema text), and blank lines between paragraphs.
_INLINE_CODE = re.compile(r"`([^`\n]+)`")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
OPEN_SCHEMA_FIELDS = 6  # a body of up to this many fields is shown open; a longer one folded in <details>


def inline_html(text: str) -> str:
    """Description text -> HTML: escaped first, then each `...` span as <code>, so nothing in the text
    (an operator's catalog entry included) can add markup of its own."""
    return _INLINE_CODE.sub(r"<code>\1</code>", html.escape(text))


def prose_html(text: str) -> str:
    """Description text -> <p> paragraphs (split at blank lines), each as inline_html."""
    return "".join(f"<p>{inline_html(part.strip())}</p>" for part in _PARAGRAPH_BREAK.split(text) if part.strip())


def _anchor(method: str, path: str) -> str:
    return f"{method}-{path}"


def render_docs(document: dict[str, Any]) -> str:
    """The document as one HTML page: a table of contents of the operations (by tag), then each
    operation with its parameters, body fields (a long body folded) and answers."""
    e = html.escape
    sections = []
    contents: dict[str, list[str]] = {}
    schemas = document["components"]["schemas"]
    for path, item in document["paths"].items():
        for method, operation in item.items():
            anchor = _anchor(method, path)
            # The link is the summary (the path beside it is text: a link named by the path would also
            # answer to a search for the /openapi.json link); /docs#..., since every href is a path.
            link = f'<a href="/docs#{e(quote(anchor, safe="/-_."))}">{inline_html(operation.get("summary", ""))}</a>'
            tag = (operation.get("tags") or ["other"])[0]
            contents.setdefault(tag, []).append(
                f'<li><span class="method">{e(method.upper())}</span> <code>{e(path)}</code> {link}</li>'
            )
            rows = "".join(
                f"<tr><td><code>{e(p['name'])}</code></td><td>{e(p['in'])}</td><td>{inline_html(p.get('description', ''))}</td></tr>"
                for p in operation.get("parameters", [])
            )
            body = "".join(
                _body_html(content_type, _resolve(media["schema"], schemas))
                for content_type, media in operation.get("requestBody", {}).get("content", {}).items()
            )
            answers = "".join(
                f"<li><code>{e(status)}</code> {inline_html(response['description'])}</li>"
                for status, response in operation["responses"].items()
            )
            sections.append(
                f'<section id="{e(anchor)}"><h3><span class="method">{e(method.upper())}</span> '
                f"<code>{e(path)}</code></h3>{prose_html(operation.get('summary', ''))}"
                + (f"<table><tr><th>Name</th><th>In</th><th>Description</th></tr>{rows}</table>" if rows else "")
                + body
                + f'<h4>Responses</h4><ul class="answers">{answers}</ul></section>'
            )
    toc = "".join(f"<li>{e(tag)}<ul>{''.join(links)}</ul></li>" for tag, links in contents.items())
    info = document["info"]
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(info['title'])} API reference</title>"
        '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">'
        '<link rel="stylesheet" href="/docs/static/docs.css"></head><body><main>'
        f"<h1>{e(info['title'])} API reference</h1>{prose_html(info['description'])}"
        '<p>The machine-readable document: <a href="/openapi.json">/openapi.json</a> (OpenAPI '
        f"{e(document['openapi'])}).</p>"
        f'<nav id="contents" aria-labelledby="contents-heading"><h2 id="contents-heading">Operations</h2><ul>{toc}</ul></nav>'
        + "".join(sections)
        + "</main></body></html>"
    )


def _resolve(schema: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref", "")
    return dict(schemas[ref.rsplit("/", 1)[-1]]) if ref else schema


def _body_html(content_type: str, schema: dict[str, Any]) -> str:
    """A request body's fields: a table under its heading, folded in <details> when it is long."""
    count = len(schema.get("properties", {}))
    heading = f"Body ({html.escape(content_type)}): {count} field{'' if count == 1 else 's'}"
    table = _fields_table(schema)
    if count <= OPEN_SCHEMA_FIELDS:
        return f"<h4>{heading}</h4>{table}"
    return f'<details class="schema"><summary><h4>{heading}</h4></summary>{table}</details>'


def _fields_table(schema: dict[str, Any]) -> str:
    e = html.escape
    required = set(schema.get("required", []))
    rows = []
    for name, field in schema.get("properties", {}).items():
        branches = field.get("anyOf") or [field]  # a field some models type differently: each type
        allowed = [v for branch in branches for v in branch.get("enum") or branch.get("examples") or []]
        bounds = " ".join(f"{b} {branch[b]}" for branch in branches for b in ("minimum", "maximum") if b in branch)
        types = " or ".join(str(branch["type"]) for branch in branches if "type" in branch)
        rows.append(
            f"<tr><td><code>{e(name)}</code>{' (required)' if name in required else ''}</td>"
            f"<td>{e(types)}</td><td>{inline_html(str(field.get('description', '')))}"
            + (f"<br>Values: {e(', '.join(map(str, allowed)))}" if allowed else "")
            + (f"<br>{e(bounds)}" if bounds else "")
            + _availability_note(field.get("x-imagegate-models", {}))
            + "</td></tr>"
        )
    return "<table><tr><th>Field</th><th>Type</th><th>Description</th></tr>" + "".join(rows) + "</table>"


def _availability_note(models: dict[str, Any]) -> str:
    """Which models require or lack a field, per mode (x-imagegate-models), in a line each."""
    notes = []
    for mode, label in (("t2i", "text-to-image"), ("edit", "edit")):
        for state in ("required", "not_available"):
            names = [model_id for model_id, entry in models.items() if entry[mode] == state]
            if names:
                notes.append(f"{state.replace('_', ' ').capitalize()} ({label}): {', '.join(names)}")
    return "".join(f'<br><small class="models">{html.escape(note)}</small>' for note in notes)
