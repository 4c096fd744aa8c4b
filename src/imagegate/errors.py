"""The one error hierarchy of imagegate, rendered as OpenAI error JSON in one place.

    ImagegateError                      500 server_error
    ├── InvalidRequest                  400 invalid_request_error
    │   ├── UnsupportedParameter        400 (code: unsupported_parameter)
    │   ├── InvalidImage                400 (code: invalid_image)
    │   ├── ContentPolicyViolation      400 (code: content_policy_violation)
    │   ├── PayloadTooLarge             413 (code: payload_too_large)
    │   └── RequestTimeout              408 (the client did not send its request in time)
    ├── AuthenticationFailed            401 authentication_error
    ├── NotFound                        404 not_found_error
    │   └── ModelNotFound               404 (code: model_not_found)
    ├── ServerBusy                      503 (code: too_many_connections)
    └── UpstreamError                   502 upstream_error
        ├── UpstreamUnavailable         503 (rate limited or overloaded upstream)
        └── UpstreamTimeout             504

Providers raise only these; the HTTP layer renders them with `to_openai_json()`.
"""

from __future__ import annotations

from typing import Any


class ImagegateError(Exception):
    status_code: int = 500
    error_type: str = "server_error"
    default_code: str | None = "internal_error"
    upstream_status: int | None = None  # the upstream's HTTP status, when an upstream answered with an error

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.retry_after = retry_after

    def to_openai_json(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"retry-after": str(max(1, round(self.retry_after)))}


class InvalidRequest(ImagegateError):
    status_code = 400
    error_type = "invalid_request_error"
    default_code = "invalid_value"


class UnsupportedParameter(InvalidRequest):
    default_code = "unsupported_parameter"


class InvalidImage(InvalidRequest):
    default_code = "invalid_image"


class ContentPolicyViolation(InvalidRequest):
    default_code = "content_policy_violation"


class PayloadTooLarge(InvalidRequest):
    status_code = 413
    default_code = "payload_too_large"


class AuthenticationFailed(ImagegateError):
    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class NotFound(ImagegateError):
    status_code = 404
    error_type = "not_found_error"
    default_code = "not_found"


class ModelNotFound(NotFound):
    error_type = "invalid_request_error"
    default_code = "model_not_found"


class UpstreamError(ImagegateError):
    status_code = 502
    error_type = "upstream_error"
    default_code = "upstream_error"


class UpstreamUnavailable(UpstreamError):
    status_code = 503
    default_code = "upstream_unavailable"


class UpstreamTimeout(UpstreamError):
    status_code = 504
    default_code = "upstream_timeout"


# --- connection-level refusals, written by server/serving.py before any request is parsed ---------


class RequestTimeout(InvalidRequest):
    status_code = 408
    default_code = "request_timeout"


class ServerBusy(ImagegateError):
    status_code = 503
    default_code = "too_many_connections"
