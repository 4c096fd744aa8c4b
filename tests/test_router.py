"""The router and the planner, with no sockets: which providers serve a model, in what order,
and the candidate each becomes (its view, its mask handling, its native output format)."""

from __future__ import annotations

import pytest

from imagegate.errors import ModelNotFound, UnsupportedParameter, UpstreamUnavailable
from imagegate.params import normalize_params
from imagegate.resilience import CircuitBreaker
from imagegate.router import Candidate, Router, plan_candidates

from .fakes.provider import FakeProvider, model_entry, small_catalog

NOT_AVAILABLE = {"handling": "not_available"}


def router(
    *configured: str,
    overrides: dict[str, list[str]] | None = None,
    breaker: CircuitBreaker | None = None,
    **entry_fields: object,
) -> Router:
    """A router over one model `m` served by gemini, replicate and fal (in that priority order),
    of which only `configured` have a key."""
    entry = (
        model_entry("m", aliases=["m-alias"], **entry_fields)
        if entry_fields
        else model_entry("m", aliases=["m-alias"], providers={"gemini": {}, "replicate": {}, "fal": {}})
    )
    return Router(small_catalog(entry), {p: FakeProvider(p) for p in configured}, overrides, breaker)


def order(r: Router, model_id: str = "m", given: set[str] | None = None) -> list[str]:
    return [route.provider_id for route in r.routes(model_id, given=given)]


def test_routes_follow_the_catalog_priority_not_the_configuration_order() -> None:
    assert order(router("fal", "replicate", "gemini")) == ["gemini", "replicate", "fal"]


def test_only_configured_providers_are_routes() -> None:
    assert order(router("fal", "gemini")) == ["gemini", "fal"]


def test_an_alias_routes_to_its_model() -> None:
    routes = router("gemini").routes("m-alias")
    assert [(r.model.id, r.provider_id) for r in routes] == [("m", "gemini")]


def test_routing_overrides_set_the_order_and_may_name_the_model_by_alias() -> None:
    r = router("gemini", "replicate", "fal", overrides={"m-alias": ["fal", "gemini"]})
    assert order(r) == ["fal", "gemini"]  # replicate is not in the override: not a route


def test_an_override_naming_an_unknown_provider_skips_it() -> None:
    r = router("gemini", "fal", overrides={"m": ["openai", "fal", "gemini"]})
    assert order(r) == ["fal", "gemini"]


def test_a_provider_whose_circuit_is_open_goes_last_but_stays() -> None:
    breaker = CircuitBreaker(threshold=1, cooldown=60.0)
    breaker.record_failure("gemini")
    assert order(router("gemini", "replicate", "fal", breaker=breaker)) == ["replicate", "fal", "gemini"]


def test_providers_honouring_every_given_parameter_come_first() -> None:
    r = router(
        "gemini",
        "replicate",
        "fal",
        providers={"gemini": {"parameters": {"seed": NOT_AVAILABLE}}, "replicate": {}, "fal": {}},
    )
    assert order(r, given={"seed"}) == ["replicate", "fal", "gemini"]
    assert order(r, given={"prompt"}) == ["gemini", "replicate", "fal"]


def test_an_open_circuit_outweighs_honouring_the_parameters() -> None:
    breaker = CircuitBreaker(threshold=1, cooldown=60.0)
    breaker.record_failure("replicate")
    r = router(
        "gemini",
        "replicate",
        breaker=breaker,
        providers={"gemini": {"parameters": {"seed": NOT_AVAILABLE}}, "replicate": {}},
    )
    assert order(r, given={"seed"}) == ["gemini", "replicate"]


def test_no_configured_provider_is_a_503_naming_the_settings() -> None:
    with pytest.raises(UpstreamUnavailable) as excinfo:
        router("openai").routes("m")
    error = excinfo.value
    assert (error.status_code, error.code, error.param) == (503, "provider_not_configured", "model")
    assert "GEMINI_API_KEY" in error.message and "REPLICATE_API_TOKEN" in error.message


def test_an_unknown_model_is_a_404() -> None:
    with pytest.raises(ModelNotFound) as excinfo:
        router("gemini").routes("nope")
    assert (excinfo.value.status_code, excinfo.value.param) == (404, "model")


# --- plan_candidates ---------------------------------------------------------------------------

EMULATED_MASK = {"mask": {"handling": "emulated"}}


def planned(
    fields: dict[str, object],
    *,
    has_mask: bool = False,
    strict: bool = False,
    mode: str = "edit",
    **bindings: dict[str, object],
) -> dict[str, Candidate]:
    entry = model_entry("m", providers=bindings)
    r = Router(small_catalog(entry), {p: FakeProvider(p) for p in bindings})
    params = normalize_params({"prompt": "p", **fields}, model=entry, mode=mode)
    return {
        c.provider_id: c
        for c in plan_candidates(params, r.routes("m", set(params.values)), strict=strict, has_mask=has_mask)
    }


def test_the_mask_is_emulated_only_where_the_binding_says_so_and_a_mask_was_sent() -> None:
    bindings = {
        "gemini": {"parameters": EMULATED_MASK},
        "openai": {"parameters": {"mask": {"handling": "passthrough"}}},
    }
    with_mask = planned({}, has_mask=True, **bindings)
    assert [with_mask["gemini"].mask_emulated, with_mask["openai"].mask_emulated] == [True, False]
    assert planned({}, has_mask=False, **bindings)["gemini"].mask_emulated is False


def test_the_output_format_is_sent_only_to_upstreams_that_make_it() -> None:
    candidates = planned(
        {"output_format": "jpeg"},
        gemini={},
        replicate={"native_output_formats": ["png", "jpeg"]},
        fal={"native_output_formats": ["png"]},
    )
    formats = {p: c.native_output_format for p, c in candidates.items()}
    assert formats == {"gemini": None, "replicate": "jpeg", "fal": None}


def test_each_candidate_has_its_own_view_of_the_request() -> None:
    candidates = planned({"seed": 7}, gemini={"parameters": {"seed": NOT_AVAILABLE}}, replicate={})
    gemini, replicate = candidates["gemini"], candidates["replicate"]
    assert replicate.view.get("seed") == 7 and replicate.view.ignored == []
    assert gemini.view.get("seed") is None
    assert [a.param for a in gemini.view.ignored] == ["seed"]
    assert list(candidates) == ["replicate", "gemini"]  # the provider honouring seed first


def test_a_parameter_no_candidate_honours_is_refused_when_planning() -> None:
    with pytest.raises(UnsupportedParameter) as excinfo:
        planned(
            {"seed": 7},
            gemini={"parameters": {"seed": NOT_AVAILABLE}},
            replicate={"parameters": {"seed": NOT_AVAILABLE}},
        )
    assert excinfo.value.param == "seed"


def test_a_standard_field_no_candidate_honours_is_not_applied_unless_strict() -> None:
    quality = {"type": "string", "description": "q", "t2i": "supported", "edit": "supported", "values": ["low", "high"]}
    entry = model_entry(
        "m", parameters={"quality": quality}, providers={"gemini": {"parameters": {"quality": NOT_AVAILABLE}}}
    )
    routes = Router(small_catalog(entry), {"gemini": FakeProvider("gemini")}).routes("m")
    params = normalize_params({"prompt": "p", "quality": "high"}, model=entry, mode="t2i")
    (candidate,) = plan_candidates(params, routes, strict=False, has_mask=False)
    assert [(a.param, a.applied) for a in candidate.view.ignored] == [
        ("quality", "not applied (provider gemini lacks it)")
    ]
    assert "quality" not in candidate.view.options
    with pytest.raises(UnsupportedParameter):
        plan_candidates(params, routes, strict=True, has_mask=False)
