"""OpenAI wire compatibility, end to end through the official openai SDK (and raw HTTP where a
browser or a hand-written client sends what the SDK cannot): usage token details, OpenAI's
standard request fields, strict prompts, both url and b64_json by default, result URLs on the
host the client called, and CORS for browser apps.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai.types.images_response import Usage, UsageInputTokensDetails, UsageOutputTokensDetails

from imagegate import imaging

from ..conftest import API_KEY, RunningGateway, make_settings, start_gateway
from ..fakes.fal import FakeFal
from ..fakes.gemini import IMAGE_OUTPUT_TOKENS, INPUT_IMAGE_TOKENS, PROMPT_TOKENS, FakeGemini
from ..fakes.images import image_size, solid_png
from ..fakes.openai_upstream import INPUT_TOKENS_PER_IMAGE, OUTPUT_TOKENS_PER_IMAGE, FakeOpenAI
from ..fakes.replicate import FakeReplicate
from ..fakes.server import LoopbackServer

PRO = "gemini-3-pro-image-preview"
GPT = "gpt-image-1"
AUTH = {"authorization": f"Bearer {API_KEY}"}
INPUT = ("in.png", solid_png(64, 48, (10, 200, 30)), "image/png")


def gemini_gateway(factory: Any, fake: FakeGemini, **settings: Any) -> RunningGateway:
    gw: RunningGateway = factory(gemini_api_key=fake.api_key, gemini_base_url=fake.base_url, **settings)
    return gw


def post(url: str, body: Any, path: str = "/v1/images/generations", **kw: Any) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, headers={**AUTH, **kw.pop("headers", {})}, timeout=30, **kw)


def usage_rows(gw: RunningGateway) -> list[tuple[Any, ...]]:
    with sqlite3.connect(gw.settings.database_path) as db:
        return db.execute("SELECT user, safety_identifier FROM usage ORDER BY id").fetchall()


# --- 1: usage carries OpenAI's token details ---------------------------------------------------


def test_usage_token_details_parse_in_the_sdk_from_gemini(gateway: RunningGateway, fake_gemini: FakeGemini) -> None:
    client = gateway.client()
    result = client.images.generate(model=PRO, prompt="a fox", response_format="b64_json")
    assert isinstance(result.usage, Usage)
    assert isinstance(result.usage.input_tokens_details, UsageInputTokensDetails)
    assert result.usage.input_tokens_details.text_tokens == PROMPT_TOKENS
    assert result.usage.input_tokens_details.image_tokens == 0
    assert isinstance(result.usage.output_tokens_details, UsageOutputTokensDetails)
    assert result.usage.output_tokens_details.image_tokens == IMAGE_OUTPUT_TOKENS
    assert result.usage.output_tokens_details.text_tokens == 0
    # imagegate's own usage fields stay beside OpenAI's.
    extra = result.usage.model_extra or {}
    assert (extra["model"], extra["provider"], extra["images"], extra["currency"]) == (PRO, "gemini", 1, "USD")

    # An edit: Gemini counts its input images, and the split says so (two uploads, one call).
    edited = client.images.edit(model=PRO, prompt="add a hat", image=[INPUT, INPUT], response_format="b64_json")
    assert edited.usage is not None
    assert edited.usage.input_tokens_details.image_tokens == 2 * INPUT_IMAGE_TOKENS
    assert edited.usage.input_tokens_details.text_tokens == PROMPT_TOKENS
    assert edited.usage.input_tokens == PROMPT_TOKENS + 2 * INPUT_IMAGE_TOKENS


def test_usage_token_details_from_an_openai_upstream_are_summed_over_calls(
    gateway_factory: Any, fake_openai: FakeOpenAI
) -> None:
    gw = gateway_factory(openai_api_key=fake_openai.api_key, openai_base_url=fake_openai.base_url)
    result = gw.client().images.edit(
        model=GPT, prompt="add a hat", image=[INPUT, INPUT], n=2, response_format="b64_json"
    )
    assert result.usage is not None
    assert result.usage.input_tokens_details.image_tokens == 2 * INPUT_TOKENS_PER_IMAGE
    assert result.usage.input_tokens_details.text_tokens == len("add a hat".split())
    assert result.usage.output_tokens_details is not None
    assert result.usage.output_tokens_details.image_tokens == 2 * OUTPUT_TOKENS_PER_IMAGE


def test_usage_token_details_without_an_upstream_split(gateway_factory: Any, fake_replicate: FakeReplicate) -> None:
    """Replicate reports no tokens: the details are there (the SDK requires them), all zero."""
    gw = gateway_factory(replicate_api_key=fake_replicate.api_key, replicate_base_url=fake_replicate.base_url)
    result = gw.client().images.generate(model=PRO, prompt="p", response_format="b64_json")
    assert result.usage is not None
    details = result.usage.input_tokens_details
    assert (details.text_tokens, details.image_tokens) == (0, 0)


# --- 2: OpenAI's standard request fields --------------------------------------------------------


def test_what_langchain_and_librechat_send_is_served_and_reported(
    gateway: RunningGateway, fake_gemini: FakeGemini
) -> None:
    response = gateway.client().images.with_raw_response.generate(
        model=PRO,
        prompt="a lighthouse",
        quality="hd",
        style="natural",
        background="transparent",
        moderation="low",
        partial_images=2,
        response_format="b64_json",
    )
    result = response.parse()
    assert result.data and result.data[0].b64_json
    applied = {a["param"]: a["applied"] for a in (result.model_extra or {})["adjustments"]}
    for param in ("quality", "style", "background", "moderation"):
        assert applied[param] == f"not applied (model {PRO} lacks it)"
        assert f"{param}=" in response.headers["x-imagegate-adjusted"]
    assert applied["partial_images"] == "not applied (only with stream: true)"
    sent = fake_gemini.requests[-1].body
    assert b"quality" not in sent and b"natural" not in sent and b"transparent" not in sent


def test_stream_true_gets_an_event_stream_with_the_image(gateway: RunningGateway, fake_gemini: FakeGemini) -> None:
    """A client sending stream: true (as Open WebUI and the SDK can) reads OpenAI's event stream
    (tests/server/test_streaming.py covers it in full)."""
    response = post(gateway.url, {"model": PRO, "prompt": "p", "stream": True, "response_format": "b64_json"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    event, data = response.text.split("\n")[:2]
    assert event == "event: image_generation.completed"
    assert json.loads(data.removeprefix("data: "))["b64_json"]


@pytest.mark.parametrize(
    "body,param",
    [
        ({"quality": "ultra"}, "quality"),
        ({"style": "cartoon"}, "style"),
        ({"background": "green"}, "background"),
        ({"moderation": "high"}, "moderation"),
        ({"input_fidelity": "medium"}, "input_fidelity"),
        ({"partial_images": 4}, "partial_images"),
        ({"partial_images": "two"}, "partial_images"),
        ({"stream": "maybe"}, "stream"),
    ],
)
def test_standard_fields_outside_openais_types_stay_400(
    gateway: RunningGateway, fake_gemini: FakeGemini, body: dict[str, Any], param: str
) -> None:
    response = post(gateway.url, {"model": PRO, "prompt": "p", **body})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param
    assert fake_gemini.requests == []


def test_gpt_image_1_passes_its_standard_fields_on(gateway_factory: Any, fake_openai: FakeOpenAI) -> None:
    gw = gateway_factory(openai_api_key=fake_openai.api_key, openai_base_url=fake_openai.base_url)
    result = gw.client().images.generate(
        model=GPT, prompt="p", quality="low", background="transparent", style="vivid", response_format="b64_json"
    )
    sent = fake_openai.requests[-1].json
    assert (sent["quality"], sent["background"]) == ("low", "transparent")
    assert "style" not in sent  # gpt-image-1 has no style: not applied, not forwarded
    assert {"param": "style", "requested": "vivid", "applied": f"not applied (model {GPT} lacks it)"} in (
        result.model_extra or {}
    )["adjustments"]


def _only(provider: str, fakes: dict[str, Any]) -> dict[str, Any]:
    fake = fakes[provider]
    return {f"{provider}_api_key": fake.api_key, f"{provider}_base_url": fake.base_url}


@pytest.mark.parametrize("provider", ["gemini", "replicate", "fal", "openai"])
def test_user_and_safety_identifier_are_recorded_and_never_sent_upstream(
    gateway_factory: Any,
    fake_gemini: FakeGemini,
    fake_replicate: FakeReplicate,
    fake_fal: FakeFal,
    fake_openai: FakeOpenAI,
    provider: str,
) -> None:
    fakes: dict[str, Any] = {"gemini": fake_gemini, "replicate": fake_replicate, "fal": fake_fal, "openai": fake_openai}
    gw = gateway_factory(**_only(provider, fakes))
    client = gw.client()
    client.images.generate(
        model=PRO, prompt="p", user="user-marker-41", safety_identifier="safety-marker-42", response_format="b64_json"
    )
    client.images.edit(
        model=PRO,
        prompt="p",
        image=INPUT,
        user="user-marker-43",
        safety_identifier="safety-marker-44",
        response_format="b64_json",
    )
    assert usage_rows(gw) == [("user-marker-41", "safety-marker-42"), ("user-marker-43", "safety-marker-44")]
    sent = fakes[provider].requests
    assert sent
    assert not any(b"marker" in r.body or b"safety_identifier" in r.body for r in sent)


# --- 3: the prompt is text ----------------------------------------------------------------------


@pytest.mark.parametrize("prompt", [12, 1.5, True, ["a", "cat"], {"text": "a cat"}])
def test_a_prompt_that_is_not_a_string_is_400_naming_prompt(
    gateway: RunningGateway, fake_gemini: FakeGemini, prompt: Any
) -> None:
    for path in ("/v1/images/generations", "/v1/images/edits"):
        body = {"model": PRO, "prompt": prompt}
        if path.endswith("edits"):
            body["images"] = [{"image_url": "data:image/png;base64," + base64.b64encode(INPUT[1]).decode()}]
        response = post(gateway.url, body, path)
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["param"] == "prompt" and "string" in error["message"]
    assert fake_gemini.requests == []


@pytest.mark.parametrize("prompt", ["", "   \n\t"])
def test_an_empty_prompt_is_400_saying_it_must_not_be_empty(
    gateway: RunningGateway, fake_gemini: FakeGemini, prompt: str
) -> None:
    response = post(gateway.url, {"model": PRO, "prompt": prompt})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "prompt" and "must not be empty" in error["message"]
    multipart = httpx.post(
        f"{gateway.url}/v1/images/edits",
        headers=AUTH,
        timeout=30,
        data={"model": PRO, "prompt": prompt},
        files={"image": INPUT},
    )
    assert multipart.status_code == 400 and "must not be empty" in multipart.json()["error"]["message"]
    assert fake_gemini.requests == []


# --- 4: response_format left out ----------------------------------------------------------------


def test_without_response_format_edits_carry_both_url_and_b64_json(
    gateway: RunningGateway, fake_gemini: FakeGemini
) -> None:
    result = gateway.client().images.edit(model=PRO, prompt="add a hat", image=INPUT)
    item = result.data[0] if result.data else None
    assert item is not None and item.url and item.b64_json
    assert httpx.get(item.url).content == base64.b64decode(item.b64_json)
    assert (result.model_extra or {})["effective"]["response_format"] == "both"


def test_both_forms_reuse_the_upstreams_base64(
    gateway: RunningGateway, fake_gemini: FakeGemini, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Gemini sends base64: an image passed through as is answers with that very text as b64_json
    (decoded once for the hosted file, never encoded again)."""
    encoded: list[int] = []

    def b64encode(data: bytes) -> bytes:
        encoded.append(len(data))
        return base64.b64encode(data)

    monkeypatch.setattr(imaging.pybase64, "b64encode", b64encode)
    result = gateway.client().images.generate(model=PRO, prompt="as is")
    item = result.data[0] if result.data else None
    assert item is not None and item.url and item.b64_json
    assert httpx.get(item.url).content == base64.b64decode(item.b64_json)
    assert encoded == []


@pytest.mark.parametrize("default,has_url,has_b64", [("url", True, False), ("b64_json", False, True)])
def test_the_operator_chooses_the_default_response_format(
    gateway_factory: Any, fake_gemini: FakeGemini, default: str, has_url: bool, has_b64: bool
) -> None:
    gw = gemini_gateway(gateway_factory, fake_gemini, default_response_format=default)
    result = gw.client().images.generate(model=PRO, prompt="p")
    item = result.data[0] if result.data else None
    assert item is not None and (item.url is not None, item.b64_json is not None) == (has_url, has_b64)
    assert (result.model_extra or {})["effective"]["response_format"] == default
    card = httpx.get(f"{gw.url}/v1/models/{PRO}", headers=AUTH).json()
    assert card["parameters"]["response_format"]["default"] == default
    # An explicit value still wins.
    explicit = gw.client().images.generate(model=PRO, prompt="p", response_format="url" if has_b64 else "b64_json")
    assert explicit.data is not None and (explicit.data[0].url is None) == has_url


def test_a_bad_default_response_format_fails_at_settings_load(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="IMAGEGATE_DEFAULT_RESPONSE_FORMAT"):
        make_settings(tmp_path, default_response_format="json")


def test_sync_mode_without_response_format_stores_nothing(gateway: RunningGateway, fake_gemini: FakeGemini) -> None:
    result = gateway.client().images.generate(model=PRO, prompt="p", extra_body={"sync_mode": True})
    item = result.data[0] if result.data else None
    assert item is not None and (item.url or "").startswith("data:image/png;base64,") and item.b64_json
    assert image_size(base64.b64decode(item.b64_json)) == (1024, 1024)
    results_dir = gateway.settings.data_dir / "results"
    assert not results_dir.exists() or not any(results_dir.iterdir())


# --- 5: result URLs on the host the client called ------------------------------------------------


@pytest.fixture
def unset_public_url(tmp_path: Path, fake_gemini: FakeGemini) -> Iterator[Any]:
    """start(**settings) -> (server, settings): a gateway with IMAGEGATE_PUBLIC_URL unset."""
    servers: list[LoopbackServer] = []

    def start(**overrides: Any) -> tuple[LoopbackServer, Any]:
        settings = make_settings(
            tmp_path, gemini_api_key=fake_gemini.api_key, gemini_base_url=fake_gemini.base_url, **overrides
        )
        servers.append(start_gateway(settings))
        return servers[-1], settings

    yield start
    for server in servers:
        server.stop()


def result_url(server: LoopbackServer, headers: dict[str, Any]) -> str:
    response = post(server.url, {"model": PRO, "prompt": "p", "response_format": "url"}, headers=headers)
    assert response.status_code == 200, response.text
    return str(response.json()["data"][0]["url"])


def test_result_urls_use_the_host_the_client_called(unset_public_url: Any) -> None:
    server, _ = unset_public_url()
    url = result_url(server, {"host": f"localhost:{server.port}"})
    assert url.startswith(f"http://localhost:{server.port}/v1/results/")
    # The URL works (localhost is this server).
    assert httpx.get(url.replace("localhost", "127.0.0.1")).status_code == 200
    assert result_url(server, {"host": "[::1]:9"}).startswith("http://[::1]:9/v1/results/")


@pytest.mark.parametrize(
    "host",
    [
        'evil.example/"><script>',
        "a b",
        "exämple.com",
        "host:99999",
        "[zz::1]",
        "user@host",
        "host:80/path",
        "-bad-.com",
    ],
)
def test_a_hostile_host_header_falls_back_to_the_configured_address(unset_public_url: Any, host: str) -> None:
    server, settings = unset_public_url()
    url = result_url(server, {"host": host.encode("utf-8")})  # bytes: sent as they are, UTF-8 included
    assert url.startswith(f"{settings.base_public_url}/v1/results/")


def test_forwarded_headers_count_only_from_trusted_proxies(unset_public_url: Any) -> None:
    untrusted, _ = unset_public_url()
    forwarded = {
        "host": f"127.0.0.1:{untrusted.port}",
        "x-forwarded-host": "images.example.com",
        "x-forwarded-proto": "https",
    }
    assert result_url(untrusted, forwarded).startswith(f"http://127.0.0.1:{untrusted.port}/v1/results/")
    assert result_url(untrusted, {**forwarded, "forwarded": "host=evil.example;proto=https"}).startswith(
        f"http://127.0.0.1:{untrusted.port}/"
    )

    trusted, _ = unset_public_url(trusted_proxies="10.0.0.0/8, 127.0.0.1")
    forwarded["host"] = f"127.0.0.1:{trusted.port}"
    assert result_url(trusted, forwarded).startswith("https://images.example.com/v1/results/")
    # RFC 7239 wins over X-Forwarded-*; of a list, the element the trusted proxy added (the last).
    rfc = {**forwarded, "forwarded": 'for=1.2.3.4;host=spoofed.example, for=5.6.7.8;host="cdn.example:8443";proto=http'}
    assert result_url(trusted, rfc).startswith("http://cdn.example:8443/v1/results/")
    # A trusted proxy's invalid host still cannot inject anything.
    hostile = {**forwarded, "x-forwarded-host": "evil/<x>"}
    assert "evil" not in result_url(trusted, hostile)


def test_a_bad_trusted_proxy_list_fails_at_settings_load(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="IMAGEGATE_TRUSTED_PROXIES"):
        make_settings(tmp_path, trusted_proxies="10.0.0.0/8, not-an-ip")


def test_public_url_still_wins(gateway: RunningGateway) -> None:
    url = str(
        post(
            gateway.url, {"model": PRO, "prompt": "p", "response_format": "url"}, headers={"host": "elsewhere.example"}
        ).json()["data"][0]["url"]
    )
    assert url.startswith(f"{gateway.settings.public_url}/v1/results/")


# --- 6: CORS --------------------------------------------------------------------------------


ORIGIN = "https://app.example"
BROWSER_HEADERS = "authorization, content-type, idempotency-key, x-request-id, x-stainless-os, x-stainless-retry-count"


def preflight(url: str, origin: str = ORIGIN, headers: str = BROWSER_HEADERS) -> httpx.Response:
    return httpx.options(
        f"{url}/v1/images/generations",
        timeout=30,
        headers={"origin": origin, "access-control-request-method": "POST", "access-control-request-headers": headers},
    )


def test_cors_preflight_is_answered_without_a_key(gateway_factory: Any, fake_gemini: FakeGemini) -> None:
    gw = gemini_gateway(gateway_factory, fake_gemini, cors_origins=f"{ORIGIN}, https://other.example")
    response = preflight(gw.url)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    allowed = {h.strip() for h in response.headers["access-control-allow-headers"].lower().split(",")}
    assert {h.strip() for h in BROWSER_HEADERS.split(",")} <= allowed
    assert "POST" in response.headers["access-control-allow-methods"]
    refused = preflight(gw.url, origin="https://evil.example")
    assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers

    # The real request: the browser may read imagegate's headers.
    answer = post(
        gw.url,
        {"model": PRO, "prompt": "p", "size": "1920x1080", "response_format": "b64_json"},
        headers={"origin": ORIGIN},
    )
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == ORIGIN
    exposed = {h.strip() for h in answer.headers["access-control-expose-headers"].lower().split(",")}
    assert {
        "x-request-id",
        "x-imagegate-request-id",
        "x-imagegate-provider",
        "x-imagegate-model",
        "x-imagegate-adjusted",
    } <= exposed
    # Errors reach the browser too (a 401 it can read instead of an opaque network error).
    unauthorized = httpx.get(f"{gw.url}/v1/models", headers={"origin": ORIGIN}, timeout=30)
    assert unauthorized.status_code == 401 and unauthorized.headers["access-control-allow-origin"] == ORIGIN


def test_cors_wildcard(gateway_factory: Any, fake_gemini: FakeGemini) -> None:
    gw = gemini_gateway(gateway_factory, fake_gemini, cors_origins="*")
    assert preflight(gw.url, origin="https://anything.example").headers["access-control-allow-origin"] == "*"
    models = httpx.get(f"{gw.url}/v1/models", headers={**AUTH, "origin": "https://anything.example"}, timeout=30)
    assert models.headers["access-control-allow-origin"] == "*"


@pytest.mark.parametrize("origins", ["app.example.com", "https://app.example.com/path", "https://"])
def test_a_bad_cors_origin_fails_at_settings_load(tmp_path: Path, origins: str) -> None:
    with pytest.raises(ValueError, match="IMAGEGATE_CORS_ORIGINS"):
        make_settings(tmp_path, cors_origins=origins)


def test_no_cors_origins_no_cors_headers(gateway: RunningGateway) -> None:
    response = preflight(gateway.url)
    assert not any(name.startswith("access-control-") for name in response.headers)
    models = httpx.get(f"{gateway.url}/v1/models", headers={**AUTH, "origin": ORIGIN}, timeout=30)
    assert models.status_code == 200
    assert not any(name.startswith("access-control-") for name in models.headers)
