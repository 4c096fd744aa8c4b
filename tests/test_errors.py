"""The error tree drawn in errors.py's docstring is the tree of its classes."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

from imagegate import errors, resilience

# "│   ├── Name      404 some_error (code: the_code; ...)": depth from the indent, then the class,
# its status, its OpenAI type when it sets its own, and its default code when the tree names one.
LINE = re.compile(
    r"^(?P<indent>[ │├└─]*)(?P<name>[A-Z]\w+)\s+(?P<status>\d{3})(?: (?P<type>[a-z_]+_error|requests|insufficient_quota))?"
    r"(?:.*?code: (?P<code>[a-z_]+))?"
)


def drawn_tree() -> list[tuple[int, str, int, str | None, str | None]]:
    assert errors.__doc__ is not None
    rows = []
    for line in errors.__doc__.splitlines():
        found = LINE.match(line.strip("\n")[4:])  # the docstring indents the drawing by four spaces
        if found:
            depth = len(found["indent"]) // 4
            rows.append((depth, found["name"], int(found["status"]), found["type"], found["code"]))
    return rows


def test_the_docstring_tree_matches_the_error_classes() -> None:
    rows = drawn_tree()
    parents: list[type[errors.ImagegateError]] = []
    for depth, name, status, error_type, code in rows:
        cls = getattr(errors, name)
        del parents[depth:]
        if parents:
            assert cls.__bases__ == (parents[-1],), f"{name} is drawn under {parents[-1].__name__}"
            assert error_type in (None, cls.error_type), name
            if error_type is None:
                assert cls.error_type == parents[-1].error_type, f"{name}'s own type {cls.error_type} is not drawn"
        else:
            assert cls is errors.ImagegateError
        assert cls.status_code == status, name
        assert code in (None, cls.default_code), name
        parents.append(cls)
    classes = {
        name
        for name, obj in inspect.getmembers(errors, inspect.isclass)
        if issubclass(obj, errors.ImagegateError) and obj.__module__ == errors.__name__
    }
    assert {name for _, name, *_ in rows} == classes


# --- behaviour lives on the classes ------------------------------------------------------------

# class -> (status, wire code, upstream_failure, retryable, capacity, client_fault)
BEHAVIOUR: dict[type[errors.ImagegateError], tuple[int, str | None, bool, bool, bool, bool]] = {
    errors.ImagegateError: (500, "internal_error", False, False, False, False),
    errors.InvalidRequest: (400, "invalid_value", False, False, False, True),
    errors.UnsupportedParameter: (400, "unsupported_parameter", False, False, False, True),
    errors.InvalidImage: (400, "invalid_image", False, False, False, True),
    errors.ContentPolicyViolation: (400, "content_policy_violation", False, False, False, True),
    errors.UpstreamRejectedRequest: (400, "upstream_rejected_request", False, False, False, True),
    errors.PayloadTooLarge: (413, "payload_too_large", False, False, False, True),
    errors.IdempotencyKeyReused: (422, "idempotency_key_reused", False, False, False, True),
    errors.IdempotentResultsGone: (410, "idempotency_results_gone", False, False, False, True),
    errors.RequestTimeout: (408, "request_header_timeout", False, False, False, True),
    errors.AuthenticationFailed: (401, "invalid_api_key", False, False, False, True),
    errors.PermissionDenied: (403, "admin_key_required", False, False, False, True),
    errors.NotFound: (404, "not_found", False, False, False, True),
    errors.ModelNotFound: (404, "model_not_found", False, False, False, True),
    errors.UpstreamError: (502, "upstream_error", True, True, False, False),
    errors.UpstreamAuthFailed: (502, "upstream_auth_failed", True, False, False, False),
    errors.UpstreamBadResponse: (502, "upstream_bad_response", True, True, False, False),
    errors.UpstreamResponseTooLarge: (502, "upstream_response_too_large", True, False, False, False),
    errors.NoImageGenerated: (502, "no_image_generated", True, True, False, False),
    errors.UpstreamUnavailable: (503, "upstream_unavailable", True, True, True, False),
    errors.UpstreamRateLimited: (503, "upstream_rate_limited", True, True, True, False),
    errors.UpstreamAtCapacity: (503, "upstream_at_capacity", True, True, True, False),
    errors.UpstreamConnectionError: (503, "upstream_connection_error", True, True, True, False),
    errors.EngineBusy: (503, "engine_busy", True, False, True, False),
    errors.ProviderNotConfigured: (503, "provider_not_configured", False, False, False, False),
    errors.UpstreamTimeout: (504, "upstream_timeout", True, True, False, False),
    errors.ConfigurationError: (500, "configuration_error", False, False, False, False),
    errors.ServiceUnavailable: (503, "service_unavailable", False, False, False, False),
    errors.ConversionBusy: (503, "conversion_busy", False, False, False, False),
    errors.StorageFull: (503, "storage_full", False, False, False, False),
    errors.StorageUnavailable: (503, "storage_unavailable", False, False, False, False),
    errors.ServerBusy: (503, "too_many_connections", False, False, False, False),
    errors.JobNotFound: (404, "job_not_found", False, False, False, True),
    errors.JobConflict: (409, "job_already_finished", False, False, False, True),
    errors.JobQueueFull: (429, "job_queue_full", False, False, False, False),
    errors.ModelNotAllowed: (403, "model_not_allowed", False, False, False, True),
    errors.UpstreamBudgetExhausted: (503, "upstream_budget_exhausted", True, False, True, False),
    errors.RateLimitExceeded: (429, "rate_limit_exceeded", False, False, False, True),
    errors.InsufficientQuota: (429, "insufficient_quota", False, False, False, True),
    errors.LimitsUnavailable: (503, "limits_unavailable", False, False, False, False),
}


def test_every_error_class_has_its_behaviour_listed() -> None:
    classes = {
        obj
        for _, obj in inspect.getmembers(errors, inspect.isclass)
        if issubclass(obj, errors.ImagegateError) and obj.__module__ == errors.__name__
    }
    assert set(BEHAVIOUR) == classes


@pytest.mark.parametrize("cls", list(BEHAVIOUR), ids=lambda cls: cls.__name__)
def test_status_code_and_behaviour_of(cls: type[errors.ImagegateError]) -> None:
    status, code, upstream_failure, retryable, capacity, client_fault = BEHAVIOUR[cls]
    error = cls("m")
    assert (error.status_code, error.code, error.to_openai_json()["error"]["code"]) == (status, code, code)
    assert (error.upstream_failure, error.retryable, error.capacity, error.client_fault) == (
        upstream_failure,
        retryable,
        capacity,
        client_fault,
    )
    # The resilience helpers read the same attributes.
    assert (resilience.is_upstream_failure(error), resilience.is_retryable(error), resilience.is_capacity(error)) == (
        upstream_failure,
        retryable,
        capacity,
    )


def test_a_specific_code_does_not_change_the_behaviour() -> None:
    """An instance may name its case more precisely on the wire; how it is handled stays its class's."""
    plain, specific = errors.UpstreamError("m"), errors.UpstreamError("m", code="upstream_prediction_failed")
    assert specific.code == "upstream_prediction_failed"
    assert (specific.upstream_failure, specific.retryable, specific.capacity) == (
        plain.upstream_failure,
        plain.retryable,
        plain.capacity,
    )
    busy = errors.UpstreamUnavailable("m", code="engine_busy")  # the old way of saying EngineBusy
    assert busy.retryable and not errors.EngineBusy("m").retryable


def _code_comparisons(tree: ast.AST) -> list[int]:
    """Lines comparing something's `.code` (==, !=, in, not in), e.g. `error.code in CODES`."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(isinstance(op, ast.Attribute) and op.attr == "code" for op in operands):
                lines.append(node.lineno)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in ("startswith", "endswith")
            and isinstance(node.func.value, ast.Attribute)
            and node.func.value.attr == "code"
        ):
            lines.append(node.lineno)
    return lines


def test_no_module_decides_by_comparing_error_codes() -> None:
    """Retry, failover and fallback are decided by class: no module but errors.py looks at `.code`."""
    package = Path(errors.__file__).parent
    found = {}
    for path in sorted(package.rglob("*.py")):
        if path.name == "errors.py" and path.parent == package:
            continue
        lines = _code_comparisons(ast.parse(path.read_text(encoding="utf-8")))
        if lines:
            found[str(path.relative_to(package))] = lines
    assert found == {}


def test_the_code_comparison_finder_finds_them() -> None:
    """The check above would prove nothing if the finder missed the shapes it looks for."""
    source = (
        "if e.code == 'x': pass\nif 'y' != err.code: pass\nok = e.code not in CODES\n"
        "ok = e.code.startswith('upstream_')\nok = e.status_code == 5\n"
    )
    assert _code_comparisons(ast.parse(source)) == [1, 2, 3, 4]
