"""Hostile upstream answers, served over real HTTP by any fake as a scripted `RawResponse`.

Each builds the exact bytes a broken or malicious upstream could send: JSON nested deeper than a
recursive parser survives, Google error bodies whose retry hint is not a finite number, success
bodies with absurd usage figures, and JSON whose fields have the wrong types.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from .common import RawResponse
from .images import solid_png


def json_answer(status: int, body: Any, headers: dict[str, str] | None = None) -> RawResponse:
    return RawResponse(status, json.dumps(body), "application/json", headers)


def deeply_nested_json(status: int = 200, depth: int = 100_000) -> RawResponse:
    """Valid JSON that makes Python's recursive json parser raise RecursionError."""
    return RawResponse(status, "[" * depth + "]" * depth, "application/json")


def google_retry_delay(delay: str, status: int = 429) -> RawResponse:
    """A Google error with a RetryInfo detail whose retryDelay is exactly `delay` ("1e999s", "nans")."""
    error = {
        "code": status,
        "status": "RESOURCE_EXHAUSTED",
        "message": "Resource has been exhausted",
        "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}],
    }
    return json_answer(status, {"error": error})


def gemini_image(usage: dict[str, Any] | None = None, **candidate: Any) -> RawResponse:
    """A Gemini success with one small PNG; `usage` and `candidate` fields replace the normal ones."""
    data = base64.b64encode(solid_png(8, 8, (1, 2, 3))).decode("ascii")
    body = {
        "candidates": [
            {
                "content": {"role": "model", "parts": [{"inlineData": {"mimeType": "image/png", "data": data}}]},
                "finishReason": "STOP",
                "index": 0,
                **candidate,
            }
        ],
        "usageMetadata": usage if usage is not None else {"promptTokenCount": 1, "candidatesTokenCount": 1},
    }
    return json_answer(200, body)
