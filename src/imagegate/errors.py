"""The one error hierarchy of imagegate, rendered as OpenAI error JSON in one place.

    ImagegateError                      500 server_error
    ├── InvalidRequest                  400 invalid_request_error                  client_fault
    │   ├── UnsupportedParameter        400 (code: unsupported_parameter)
    │   ├── InvalidImage                400 (code: invalid_image)
    │   ├── ContentPolicyViolation      400 (code: content_policy_violation)
    │   ├── UpstreamRejectedRequest     400 (code: upstream_rejected_request; an upstream's 400/422)
    │   ├── PayloadTooLarge             413 (code: payload_too_large)
    │   ├── IdempotencyKeyReused        422 (code: idempotency_key_reused)
    │   ├── IdempotentResultsGone       410 (code: idempotency_results_gone)
    │   ├── JobConflict                 409 (code: job_already_finished; cancelling a finished async job)
    │   ├── RequestTimeout              408 (code: request_header_timeout; the client did not send its request in time)
    │   └── ModelNotAllowed             403 (code: model_not_allowed; not in the key's `models` allow-list)
    ├── AuthenticationFailed            401 authentication_error                   client_fault
    ├── PermissionDenied                403 permission_error (code: admin_key_required; the admin API, not an admin key)
    ├── NotFound                        404 not_found_error                        client_fault
    │   ├── JobNotFound                 404 (code: job_not_found; unknown, or another key's job)
    │   └── ModelNotFound               404 invalid_request_error (code: model_not_found)
    ├── UpstreamError                   502 upstream_error                         upstream_failure, retryable
    │   ├── UpstreamAuthFailed          502 (code: upstream_auth_failed; our upstream key)        not retryable
    │   ├── UpstreamBadResponse         502 (code: upstream_bad_response; garbage from upstream)
    │   ├── UpstreamResponseTooLarge    502 (code: upstream_response_too_large)                   not retryable
    │   ├── NoImageGenerated            502 (code: no_image_generated)
    │   ├── UpstreamUnavailable         503 (code: upstream_unavailable)                          capacity
    │   │   ├── UpstreamRateLimited     503 (code: upstream_rate_limited)
    │   │   ├── UpstreamAtCapacity      503 (code: upstream_at_capacity)
    │   │   ├── UpstreamConnectionError 503 (code: upstream_connection_error; refused, reset, dropped)
    │   │   ├── EngineBusy              503 (code: engine_busy; the local engine's queue is full)   not retryable
    │   │   ├── UpstreamBudgetExhausted 503 (code: upstream_budget_exhausted; the provider's own rpm/ipm)  not retryable
    │   │   └── ProviderNotConfigured   503 (code: provider_not_configured; no key set)  not an upstream failure
    │   └── UpstreamTimeout             504 (code: upstream_timeout)
    ├── JobQueueFull                    429 rate_limit_error (code: job_queue_full; IMAGEGATE_JOB_QUEUE_MAX, Retry-After)
    ├── RateLimitExceeded               429 requests (code: rate_limit_exceeded; the key's rpm/ipm, Retry-After)
    ├── InsufficientQuota               429 insufficient_quota (code: insufficient_quota; the key's budget)
    ├── ConfigurationError              500 (code: configuration_error; found at startup, never an answer)
    └── ServiceUnavailable              503 server_error (the gateway's own resources; Retry-After)
        ├── ConversionBusy              503 (code: conversion_busy)
        ├── StorageFull                 503 (code: storage_full)
        ├── StorageUnavailable          503 (code: storage_unavailable; the S3 result store failed a write)
        ├── ServerBusy                  503 (code: too_many_connections)
        └── LimitsUnavailable           503 (code: limits_unavailable; Redis, where limits are kept, did not answer)

Providers raise only these; the HTTP layer renders them with `to_openai_json()`.

What a failure means for the request is decided by its class, as httpx decides by
`TimeoutException` or `TransportError` and never by a message: four class attributes, read by
dispatch (retries, failover), the circuit breaker and the model fallback. `code` is only what the
client reads; an instance may carry a more specific one (`upstream_prediction_failed`) without
changing how it is handled.

- `upstream_failure`: the provider failed; the same request may succeed at another provider.
- `retryable`: another try at the same provider may succeed (implies `upstream_failure`).
- `capacity`: at capacity or rate limited, the case `allow_fallback_model` is for.
- `client_fault`: the request itself is at fault; final, no provider would answer otherwise.
"""

from __future__ import annotations

import math
from typing import Any

# The longest pause a Retry-After header suggests; an upstream's "wait a year" is no advice.
MAX_RETRY_AFTER_SECONDS = 86_400


class ImagegateError(Exception):
    status_code: int = 500
    error_type: str = "server_error"
    default_code: str | None = "internal_error"
    upstream_status: int | None = None  # the upstream's HTTP status, when an upstream answered with an error
    # How the failure is handled (see the module docstring); by class, never by `code`.
    upstream_failure: bool = False
    retryable: bool = False
    capacity: bool = False
    client_fault: bool = False

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
        # Upstream hints end up here: NaN or infinity must not reach round() (a 500 of our own).
        if self.retry_after is None or not math.isfinite(self.retry_after):
            return {}
        return {"retry-after": str(max(1, round(min(self.retry_after, MAX_RETRY_AFTER_SECONDS))))}


class InvalidRequest(ImagegateError):
    status_code = 400
    error_type = "invalid_request_error"
    default_code = "invalid_value"
    client_fault = True


class UnsupportedParameter(InvalidRequest):
    default_code = "unsupported_parameter"


class InvalidImage(InvalidRequest):
    default_code = "invalid_image"


class ContentPolicyViolation(InvalidRequest):
    default_code = "content_policy_violation"


class UpstreamRejectedRequest(InvalidRequest):
    """An upstream refused the request's content (its 400/422): the client can fix it, so it stays a
    400, and another provider would refuse it too."""

    default_code = "upstream_rejected_request"


class PayloadTooLarge(InvalidRequest):
    status_code = 413
    default_code = "payload_too_large"


class IdempotencyKeyReused(InvalidRequest):
    """An Idempotency-Key sent again with another request body (the IETF Idempotency-Key draft's 422)."""

    status_code = 422
    default_code = "idempotency_key_reused"


class IdempotentResultsGone(InvalidRequest):
    """The kept answer of an Idempotency-Key points at result URLs that have expired. 410, not 409
    or 5xx: the openai SDK retries those, and retrying with the same key can never succeed."""

    status_code = 410
    default_code = "idempotency_results_gone"


class AuthenticationFailed(ImagegateError):
    status_code = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"
    client_fault = True


class PermissionDenied(ImagegateError):
    """A valid key that may not do this: the admin API called with a key that is not an admin key."""

    status_code = 403
    error_type = "permission_error"
    default_code = "admin_key_required"
    client_fault = True


class NotFound(ImagegateError):
    status_code = 404
    error_type = "not_found_error"
    default_code = "not_found"
    client_fault = True


class ModelNotFound(NotFound):
    error_type = "invalid_request_error"
    default_code = "model_not_found"


class UpstreamError(ImagegateError):
    status_code = 502
    error_type = "upstream_error"
    default_code = "upstream_error"
    upstream_failure = True
    retryable = True


class UpstreamAuthFailed(UpstreamError):
    """The upstream refused our key (its 401/403): the operator's to fix, and no retry helps."""

    default_code = "upstream_auth_failed"
    retryable = False


class UpstreamBadResponse(UpstreamError):
    """The upstream's answer could not be read (not JSON, a missing field, not an image)."""

    default_code = "upstream_bad_response"


class UpstreamResponseTooLarge(UpstreamError):
    """Over the size or pixel cap: the same request would be as large again."""

    default_code = "upstream_response_too_large"
    retryable = False


class NoImageGenerated(UpstreamError):
    default_code = "no_image_generated"


class UpstreamUnavailable(UpstreamError):
    status_code = 503
    default_code = "upstream_unavailable"
    capacity = True


class UpstreamRateLimited(UpstreamUnavailable):
    default_code = "upstream_rate_limited"


class UpstreamAtCapacity(UpstreamUnavailable):
    default_code = "upstream_at_capacity"


class UpstreamConnectionError(UpstreamUnavailable):
    default_code = "upstream_connection_error"


class EngineBusy(UpstreamUnavailable):
    """The local engine's queue is full. It says when to come back; the client hears that at once
    (503, Retry-After) instead of waiting through retries."""

    default_code = "engine_busy"
    retryable = False


class ProviderNotConfigured(UpstreamUnavailable):
    """No provider of the model has its key set: not a failure of any provider, and not capacity."""

    default_code = "provider_not_configured"
    upstream_failure = False
    retryable = False
    capacity = False


class UpstreamTimeout(UpstreamError):
    status_code = 504
    default_code = "upstream_timeout"


class ConfigurationError(ImagegateError):
    """The catalog or config file contradicts itself (an alias taken twice, an override of an unknown
    model or provider): found at startup, never in answer to a request."""

    default_code = "configuration_error"


class ServiceUnavailable(ImagegateError):
    """The gateway itself is out of a resource for now (not the client's fault, not the upstream's)."""

    status_code = 503
    default_code = "service_unavailable"


class ConversionBusy(ServiceUnavailable):
    default_code = "conversion_busy"


class StorageFull(ServiceUnavailable):
    default_code = "storage_full"


class StorageUnavailable(ServiceUnavailable):
    default_code = "storage_unavailable"


# --- connection-level refusals, written by server/serving.py before any request is parsed ---------


class RequestTimeout(InvalidRequest):
    status_code = 408
    default_code = "request_header_timeout"


class ServerBusy(ServiceUnavailable):
    default_code = "too_many_connections"


# --- async jobs (jobs.py, server/job_routes.py) --------------------------------------------------


class JobNotFound(NotFound):
    """No such job for this caller: another key's job is answered the same, so ids leak nothing."""

    default_code = "job_not_found"


class JobConflict(InvalidRequest):
    status_code = 409
    default_code = "job_already_finished"


class JobQueueFull(ImagegateError):
    """IMAGEGATE_JOB_QUEUE_MAX jobs are already waiting: the client may come back (Retry-After)."""

    status_code = 429
    error_type = "rate_limit_error"
    default_code = "job_queue_full"


# --- a key's limits and budgets, and the providers' own (limits.py) ------------------------------


class ModelNotAllowed(InvalidRequest):
    """The key's policy lists the models it may use, and this is not one of them."""

    status_code = 403
    default_code = "model_not_allowed"


class UpstreamBudgetExhausted(UpstreamUnavailable):
    """A provider's configured requests/images per minute are taken for now: its slots move on to
    the next candidate (dispatch.py), so the gateway does not send a call the upstream would 429."""

    default_code = "upstream_budget_exhausted"
    retryable = False


class RateLimitExceeded(ImagegateError):
    """Over the key's requests_per_minute or images_per_minute; Retry-After says when it fits.
    OpenAI answers its own rate limits with type "requests" and code "rate_limit_exceeded"
    (`error_type=requests` in the SDK's log, github.com/mmz-001/knowledge_gpt/issues/5)."""

    status_code = 429
    error_type = "requests"
    default_code = "rate_limit_exceeded"
    client_fault = True


class InsufficientQuota(ImagegateError):
    """The request's expected cost does not fit the key's daily or monthly budget. OpenAI's body for
    this is type and code "insufficient_quota" (github.com/OpenHands/OpenHands/issues/998)."""

    status_code = 429
    error_type = "insufficient_quota"
    default_code = "insufficient_quota"
    client_fault = True


class LimitsUnavailable(ServiceUnavailable):
    """The store of rate-limit and budget state (Redis) did not answer: the request is refused
    rather than let through unmetered."""

    default_code = "limits_unavailable"
