"""Routing across Gemini, Replicate and fal for Nano Banana Pro: the default order, failover, and
provider-only parameters sent where they can be honoured (and reported where they cannot)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from ..conftest import API_KEY, RunningGateway
from ..fakes.fal import FakeFal
from ..fakes.gemini import FakeGemini, GeminiError
from ..fakes.replicate import FakeReplicate, ReplicateError

MODEL = "gemini-3-pro-image-preview"
AUTH = {"authorization": f"Bearer {API_KEY}"}


def keys(
    gemini: FakeGemini | None = None, replicate: FakeReplicate | None = None, fal: FakeFal | None = None
) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    if gemini is not None:
        settings |= {"gemini_api_key": gemini.api_key, "gemini_base_url": gemini.base_url}
    if replicate is not None:
        settings |= {"replicate_api_key": replicate.api_key, "replicate_base_url": replicate.base_url}
    if fal is not None:
        settings |= {"fal_api_key": fal.api_key, "fal_base_url": fal.base_url}
    return settings


def generate(gw: RunningGateway, **body: Any) -> httpx.Response:
    payload = {"model": MODEL, "prompt": "route me", "response_format": "b64_json"} | body
    return httpx.post(f"{gw.url}/v1/images/generations", json=payload, headers=AUTH, timeout=30)


def served_by(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.headers["x-imagegate-provider"]


def test_default_order_is_gemini_then_replicate_then_fal(
    gateway_factory: Any, fake_gemini: FakeGemini, fake_replicate: FakeReplicate, fake_fal: FakeFal
) -> None:
    gw = gateway_factory(**keys(fake_gemini, fake_replicate, fake_fal))
    assert served_by(generate(gw)) == "gemini"
    fake_gemini.enqueue(GeminiError(500, "INTERNAL", "boom"))
    assert served_by(generate(gw)) == "replicate"
    fake_gemini.enqueue(GeminiError(503, "UNAVAILABLE", "busy"))
    fake_replicate.enqueue(ReplicateError(500, "oops"))
    assert served_by(generate(gw)) == "fal"
    card = httpx.get(f"{gw.url}/v1/models/{MODEL}", headers=AUTH).json()
    assert [p["id"] for p in card["providers"] if p["configured"]] == ["gemini", "replicate", "fal"]


def test_replicate_and_fal_serve_the_spec_parameters(
    gateway_factory: Any, fake_replicate: FakeReplicate, fake_fal: FakeFal
) -> None:
    gw = gateway_factory(**keys(replicate=fake_replicate))
    response = generate(
        gw, aspect_ratio="16:9", resolution="2K", safety_filter_level="block_low_and_above", output_format="png"
    )
    assert served_by(response) == "replicate"
    sent = fake_replicate.creates[-1].json["input"]
    assert (sent["aspect_ratio"], sent["resolution"], sent["safety_filter_level"], sent["output_format"]) == (
        "16:9",
        "2K",
        "block_low_and_above",
        "png",
    )
    assert response.json()["effective"]["width"] == 2731

    gw = gateway_factory(**keys(fal=fake_fal))
    response = generate(gw, n=3, seed=7, safety_tolerance="2", enable_web_search=True, aspect_ratio="4:3")
    assert served_by(response) == "fal"
    assert len(response.json()["data"]) == 3
    sent = fake_fal.submits[-1].json
    assert (sent["num_images"], sent["seed"], sent["safety_tolerance"], sent["enable_web_search"]) == (3, 7, "2", True)
    assert len(fake_fal.submits) == 1  # n=3 in one fal request (up to 4 per call)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"safety_tolerance": "2"}, "fal"),  # fal-only
        ({"enable_web_search": True}, "fal"),  # fal-only
        ({"seed": 5}, "fal"),  # Replicate's nano-banana-pro has no seed
        ({"safety_filter_level": "block_only_high"}, "replicate"),  # Replicate-only
        ({}, "replicate"),  # nothing special: priority order
    ],
)
def test_provider_only_parameters_pick_a_provider_that_honours_them(
    gateway_factory: Any, fake_replicate: FakeReplicate, fake_fal: FakeFal, body: dict[str, Any], expected: str
) -> None:
    gw = gateway_factory(**keys(replicate=fake_replicate, fal=fake_fal))
    response = generate(gw, **body)
    assert served_by(response) == expected
    assert "x-imagegate-adjusted" not in response.headers


def test_a_parameter_no_configured_provider_honours_is_400(gateway_factory: Any, fake_replicate: FakeReplicate) -> None:
    gw = gateway_factory(**keys(replicate=fake_replicate))
    response = generate(gw, safety_tolerance="2")
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("safety_tolerance", "unsupported_parameter")
    assert fake_replicate.requests == []


def test_failover_to_a_provider_lacking_a_parameter_says_it_was_not_applied(
    gateway_factory: Any, fake_replicate: FakeReplicate, fake_fal: FakeFal
) -> None:
    from ..fakes.fal import FalError

    gw = gateway_factory(**keys(replicate=fake_replicate, fal=fake_fal))
    fake_fal.enqueue(FalError(503, "overloaded"))
    response = generate(gw, safety_tolerance="2")
    assert served_by(response) == "replicate"
    assert "safety_tolerance=2->not applied (provider replicate lacks it)" in response.headers["x-imagegate-adjusted"]
    assert "safety_tolerance" not in fake_replicate.creates[-1].json["input"]


def test_two_conflicting_provider_parameters(
    gateway_factory: Any, fake_replicate: FakeReplicate, fake_fal: FakeFal
) -> None:
    gw = gateway_factory(**keys(replicate=fake_replicate, fal=fake_fal))
    response = generate(gw, safety_tolerance="2", safety_filter_level="block_only_high")
    assert served_by(response) == "replicate"  # each lacks one: priority decides, and it is said
    assert "safety_tolerance=2->not applied" in response.headers["x-imagegate-adjusted"]


def test_config_file_reorders_providers(
    gateway_factory: Any, fake_gemini: FakeGemini, fake_fal: FakeFal, tmp_path: Path
) -> None:
    config = tmp_path / "order.toml"
    config.write_text(f'[routing]\n"{MODEL}" = ["fal", "gemini"]\n')
    gw = gateway_factory(config=config, **keys(gemini=fake_gemini, fal=fake_fal))
    assert served_by(generate(gw)) == "fal"


def test_edits_through_replicate_and_fal(
    gateway_factory: Any, fake_replicate: FakeReplicate, fake_fal: FakeFal
) -> None:
    from ..fakes.images import solid_png

    image = solid_png(600, 800, (200, 10, 10))
    for settings in (keys(replicate=fake_replicate), keys(fal=fake_fal)):
        gw = gateway_factory(**settings)
        response = httpx.post(
            f"{gw.url}/v1/images/edits",
            headers=AUTH,
            timeout=30,
            data={"model": MODEL, "prompt": "edit", "response_format": "b64_json"},
            files=[("image[]", ("a.png", image, "image/png"))],
        )
        assert response.status_code == 200, response.text
        assert response.json()["effective"]["aspect_ratio"] == "3:4"
    assert fake_replicate.creates[-1].json["input"]["image_input"][0].startswith("data:image/png;base64,")
    assert fake_fal.submits[-1].path.endswith("/fal-ai/nano-banana-pro/edit")
