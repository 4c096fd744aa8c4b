"""Contract tests of the Vertex AI provider against a fake token endpoint and a fake Vertex (real HTTP).

The token endpoint is the `token_uri` of a service-account key file the tests write, with a freshly
generated RSA key; it verifies google-auth's signed JWT-bearer grant. The fake Vertex checks the
path (project, location, model) and the bearer token, and answers like Gemini, errors included.
First the adapter called directly, then the gateway through the openai SDK.

What every provider shares (auth, rate limits, 5xx, rejected input, policy blocks, garbled answers,
size cap, timeouts and cancels, trailing slash, no mutation, seed/layout/images where the plan says)
is in test_contract.py; this file keeps what is specific to this upstream.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from imagegate.catalog import ModelEntry
from imagegate.config import FileConfig
from imagegate.errors import (
    ConfigurationError,
    ContentPolicyViolation,
    ImagegateError,
    UpstreamError,
)
from imagegate.gateway import build_catalog
from imagegate.normalize import resolve_layout
from imagegate.plugins import ProviderContext
from imagegate.providers import ProviderImage, ProviderRequest, ProviderResult
from imagegate.providers.vertex import VertexProvider, default_base_url
from tests.fakes.common import Delay
from tests.fakes.gemini import FLASH_SIZES, PRO_SIZES, FinishBlocked, GeminiError, PromptBlocked, thought_color
from tests.fakes.images import detect_mime, image_size, pixel_at
from tests.fakes.vertex import (
    CLOUD_PLATFORM_SCOPE,
    GOOGLE_TOKEN_AUDIENCE,
    FakeGoogleOAuth,
    FakeVertex,
    ServiceAccount,
    TokenError,
    new_service_account,
    write_key_file,
)

from ..conftest import API_KEY
from .inputs import PNG

PRO = "gemini-3-pro-image-preview"
FLASH = "gemini-2.5-flash-image"
PROJECT = "test-project"


def vertex_path(model: str, location: str = "global", project: str = PROJECT) -> str:
    return f"/v1/projects/{project}/locations/{location}/publishers/google/models/{model}:generateContent"


# --- fakes and keys ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def account() -> ServiceAccount:
    return new_service_account(project_id=PROJECT)


@pytest.fixture(scope="module")
def oauth_server(account: ServiceAccount) -> Iterator[FakeGoogleOAuth]:
    with FakeGoogleOAuth() as fake:
        fake.register(account)
        yield fake


@pytest.fixture(scope="module")
def vertex_server(oauth_server: FakeGoogleOAuth) -> Iterator[FakeVertex]:
    with FakeVertex(oauth=oauth_server, project=PROJECT) as fake:
        yield fake


@pytest.fixture
def oauth(oauth_server: FakeGoogleOAuth) -> Iterator[FakeGoogleOAuth]:
    oauth_server.reset()
    yield oauth_server
    oauth_server.reset()


@pytest.fixture
def vertex(vertex_server: FakeVertex, oauth: FakeGoogleOAuth) -> Iterator[FakeVertex]:
    vertex_server.reset()
    yield vertex_server
    vertex_server.reset()


@pytest.fixture
def key_file(tmp_path: Path, account: ServiceAccount, oauth: FakeGoogleOAuth) -> Path:
    return write_key_file(tmp_path / "service-account.json", account, oauth.token_uri)


CATALOG = build_catalog(FileConfig())  # the gateway's: built-in models plus the plugins' catalog data


def catalog_model(model_id: str) -> ModelEntry:
    entry = CATALOG.get(model_id)
    assert entry is not None
    return entry


def vertex_adapter(http: httpx.AsyncClient, **values: str) -> VertexProvider:
    """The adapter as the gateway builds it, from the plugin's setting values."""
    return VertexProvider.from_context(ProviderContext("vertex", values, http, 30.0, 64 * 1024 * 1024))


def make_request(model_id: str = PRO, prompt: str = "a red fox in snow", **kwargs: Any) -> ProviderRequest:
    model = catalog_model(model_id)
    layout = kwargs.pop("layout", None) or resolve_layout(model)
    mode = "edit" if kwargs.get("images") else "t2i"
    return ProviderRequest(mode=mode, prompt=prompt, layout=layout, binding=model.providers["vertex"], **kwargs)


@pytest.fixture
async def provider(vertex: FakeVertex, key_file: Path, http: httpx.AsyncClient) -> AsyncIterator[VertexProvider]:
    adapter = vertex_adapter(
        http,
        **{"project": PROJECT, "location": "global", "base_url": vertex.base_url, "credentials_file": str(key_file)},
    )
    yield adapter
    await adapter.aclose()


async def raised(provider: VertexProvider, request: ProviderRequest | None = None) -> ImagegateError:
    with pytest.raises(ImagegateError) as info:
        await provider.run(request or make_request())
    return info.value


def bearer(recorded: Any) -> str:
    scheme, _, token = recorded.headers["authorization"].partition(" ")
    assert scheme == "Bearer"
    return token


# --- the wire call ----------------------------------------------------------------------------


async def test_url_bearer_token_and_gemini_body(
    provider: VertexProvider, vertex: FakeVertex, oauth: FakeGoogleOAuth
) -> None:
    layout = resolve_layout(catalog_model(PRO), aspect_ratio="16:9", resolution="2K")
    result = await provider.run(make_request(prompt="a lighthouse at dusk", layout=layout, seed=7))
    assert isinstance(result, ProviderResult)
    [sent] = vertex.requests
    # The binding calls Vertex's GA id (see the catalog data's notes).
    assert sent.path == vertex_path("gemini-3-pro-image")
    assert bearer(sent) == oauth.issued[0]
    assert "x-goog-api-key" not in sent.headers and "key" not in sent.query
    body = sent.json
    assert body["contents"][0]["parts"][0] == {"text": "a lighthouse at dusk"}
    assert body["generationConfig"]["imageConfig"] == {"aspectRatio": "16:9", "imageSize": "2K"}
    assert body["generationConfig"]["seed"] == 7
    assert image_size(result.images[0].data) == PRO_SIZES[("16:9", "2K")]
    assert result.input_tokens > 0 and result.output_tokens > 0


async def test_the_token_grant_is_a_signed_jwt_for_the_cloud_platform_scope(
    provider: VertexProvider, vertex: FakeVertex, oauth: FakeGoogleOAuth, account: ServiceAccount
) -> None:
    await provider.run(make_request())
    [grant] = oauth.requests
    assert grant.path == "/token"  # the key file's token_uri, not Google's
    claims = grant.json  # verified against the account's public key by the fake
    assert claims["iss"] == account.client_email
    assert claims["aud"] == GOOGLE_TOKEN_AUDIENCE
    assert CLOUD_PLATFORM_SCOPE in claims["scope"].split()


async def test_nano_banana_calls_its_own_model_without_an_image_size(
    provider: VertexProvider, vertex: FakeVertex
) -> None:
    layout = resolve_layout(catalog_model(FLASH), aspect_ratio="3:2")
    result = await provider.run(make_request(FLASH, layout=layout))
    [sent] = vertex.requests
    assert sent.path == vertex_path(FLASH)
    assert sent.json["generationConfig"]["imageConfig"] == {"aspectRatio": "3:2"}
    assert image_size(result.images[0].data) == FLASH_SIZES["3:2"]


@pytest.mark.parametrize(
    ("location", "host"),
    [
        ("global", "https://aiplatform.googleapis.com"),
        ("us-central1", "https://us-central1-aiplatform.googleapis.com"),
        ("europe-west4", "https://europe-west4-aiplatform.googleapis.com"),
        ("eu", "https://aiplatform.eu.rep.googleapis.com"),
    ],
)
def test_default_host_follows_the_location(location: str, host: str, http: httpx.AsyncClient) -> None:
    assert default_base_url(location) == host
    adapter = vertex_adapter(http, **{"project": "p", "location": location})
    assert (
        adapter.url_for("m") == f"{host}/v1/projects/p/locations/{location}/publishers/google/models/m:generateContent"
    )


async def test_the_location_is_in_the_url(vertex: FakeVertex, key_file: Path, http: httpx.AsyncClient) -> None:
    vertex.location = "us-central1"
    adapter = vertex_adapter(
        http,
        **{
            "project": PROJECT,
            "location": "us-central1",
            "base_url": vertex.base_url,
            "credentials_file": str(key_file),
        },
    )
    await adapter.run(make_request())
    assert vertex.requests[0].path == vertex_path("gemini-3-pro-image", "us-central1")
    await adapter.aclose()


async def test_a_wrong_project_is_refused_upstream(vertex: FakeVertex, key_file: Path, http: httpx.AsyncClient) -> None:
    adapter = vertex_adapter(
        http, **{"project": "someone-else", "base_url": vertex.base_url, "credentials_file": str(key_file)}
    )
    error = await raised(adapter)
    assert isinstance(error, UpstreamError) and error.code == "upstream_auth_failed"  # Google's 403
    assert error.upstream_status == 403 and "PERMISSION_DENIED" in error.message
    await adapter.aclose()


# --- native output formats ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "compression", "options"),
    [
        ("jpeg", 70, {"mimeType": "image/jpeg", "compressionQuality": 70}),
        ("jpeg", None, {"mimeType": "image/jpeg"}),
        ("png", 70, {"mimeType": "image/png"}),  # compression is a JPEG option
    ],
)
async def test_native_output_format_is_asked_of_vertex(
    provider: VertexProvider, vertex: FakeVertex, fmt: str, compression: int | None, options: dict[str, Any]
) -> None:
    result = await provider.run(make_request(output_format=fmt, output_compression=compression))
    assert vertex.requests[0].json["generationConfig"]["imageConfig"]["imageOutputOptions"] == options
    assert detect_mime(result.images[0].data) == f"image/{fmt}"
    assert result.images[0].mime_type == f"image/{fmt}"


async def test_no_output_format_no_output_options(provider: VertexProvider, vertex: FakeVertex) -> None:
    await provider.run(make_request(output_compression=50))
    assert "imageOutputOptions" not in vertex.requests[0].json["generationConfig"]["imageConfig"]


def test_binding_declares_png_and_jpeg_native() -> None:
    for model_id in (PRO, FLASH):
        binding = catalog_model(model_id).providers["vertex"]
        assert binding.native_output_formats == ["png", "jpeg"]
        handling = binding.handling("output_format")
        assert handling is not None and handling.to == "generationConfig.imageConfig.imageOutputOptions.mimeType"


# --- tokens ------------------------------------------------------------------------------------


async def test_the_token_is_reused_while_fresh(
    provider: VertexProvider, vertex: FakeVertex, oauth: FakeGoogleOAuth
) -> None:
    await provider.run(make_request())
    await provider.run(make_request())
    assert len(oauth.requests) == 1
    assert bearer(vertex.requests[0]) == bearer(vertex.requests[1]) == oauth.issued[0]


async def test_a_token_near_its_expiry_is_refreshed(
    provider: VertexProvider, vertex: FakeVertex, oauth: FakeGoogleOAuth
) -> None:
    # 60 s is inside google-auth's refresh margin (3 min 45 s): the token is stale at once.
    oauth.expires_in = 60
    await provider.run(make_request())
    await provider.run(make_request())
    assert len(oauth.requests) == 2
    assert [bearer(r) for r in vertex.requests] == oauth.issued
    assert oauth.issued[0] != oauth.issued[1]


async def test_concurrent_requests_share_one_refresh(
    provider: VertexProvider, vertex: FakeVertex, oauth: FakeGoogleOAuth
) -> None:
    oauth.enqueue(Delay(0.3))  # the first grant is slow: the others must wait for it, not ask again
    results = await asyncio.gather(*(provider.run(make_request(prompt=f"p{i}")) for i in range(5)))
    assert len(results) == 5
    assert len(oauth.requests) == 1
    assert {bearer(r) for r in vertex.requests} == {oauth.issued[0]}


async def test_a_401_gets_one_new_token_and_one_retry(
    provider: VertexProvider, vertex: FakeVertex, oauth: FakeGoogleOAuth
) -> None:
    await provider.run(make_request())
    oauth.revoke(oauth.issued[0])  # still fresh by its expiry, but Vertex no longer takes it
    result = await provider.run(make_request())
    assert result.images
    assert len(oauth.requests) == 2
    assert [bearer(r) for r in vertex.requests] == [oauth.issued[0], oauth.issued[0], oauth.issued[1]]


async def test_a_second_401_is_an_upstream_auth_error(
    provider: VertexProvider, vertex: FakeVertex, oauth: FakeGoogleOAuth
) -> None:
    unauthenticated = GeminiError(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
    vertex.enqueue(unauthenticated, unauthenticated)
    error = await raised(provider)
    assert isinstance(error, UpstreamError) and error.status_code == 502
    assert error.code == "upstream_auth_failed"
    assert len(vertex.requests) == 2 and len(oauth.requests) == 2  # one refresh, no loop


@pytest.mark.parametrize(
    "refusal",
    [
        TokenError(),
        TokenError(401, "invalid_client", "The OAuth client was not found."),
    ],
)
async def test_token_endpoint_refusal_is_upstream_auth_failed(
    provider: VertexProvider, vertex: FakeVertex, oauth: FakeGoogleOAuth, refusal: TokenError
) -> None:
    oauth.enqueue(refusal)
    error = await raised(provider)
    assert isinstance(error, UpstreamError) and error.status_code == 502
    assert error.code == "upstream_auth_failed"
    assert refusal.description in error.message
    assert vertex.requests == []  # no call without a token


@pytest.mark.parametrize("content", [None, "{not json", json.dumps({"type": "service_account"})])
def test_an_unreadable_key_file_fails_at_start(tmp_path: Path, http: httpx.AsyncClient, content: str | None) -> None:
    path = tmp_path / "key.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigurationError, match="GOOGLE_APPLICATION_CREDENTIALS"):
        vertex_adapter(http, **{"project": PROJECT, "credentials_file": str(path)})


async def test_application_default_credentials_without_a_key_file(
    vertex: FakeVertex,
    oauth: FakeGoogleOAuth,
    account: ServiceAccount,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    http: httpx.AsyncClient,
) -> None:
    # gcloud's ADC file (`gcloud auth application-default login` writes it here; a key may stand in).
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    (tmp_path / "gcloud").mkdir()
    write_key_file(tmp_path / "gcloud" / "application_default_credentials.json", account, oauth.token_uri)
    adapter = vertex_adapter(http, **{"project": PROJECT, "base_url": vertex.base_url})
    assert (await adapter.run(make_request())).images
    assert len(oauth.requests) == 1 and bearer(vertex.requests[0]) == oauth.issued[0]
    await adapter.aclose()


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    # PromptBlocked("PROHIBITED_CONTENT") is in test_contract.py (test_content_policy_is_a_violation[vertex]).
    "blocked",
    [FinishBlocked("IMAGE_SAFETY"), PromptBlocked("MODEL_ARMOR")],
)
async def test_safety_blocks_are_content_policy_violations(
    provider: VertexProvider, vertex: FakeVertex, blocked: Any
) -> None:
    vertex.enqueue(blocked)
    error = await raised(provider)
    assert isinstance(error, ContentPolicyViolation)
    assert error.status_code == 400 and error.code == "content_policy_violation"


# --- through the gateway, with the openai SDK ----------------------------------------------------


@pytest.fixture
def vertex_env(monkeypatch: pytest.MonkeyPatch, key_file: Path, vertex: FakeVertex) -> FakeVertex:
    """Only the Vertex variables: no config file, no other provider."""
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    monkeypatch.setenv("VERTEX_PROJECT", PROJECT)
    monkeypatch.setenv("VERTEX_BASE_URL", vertex.base_url)
    return vertex


def test_sdk_generation_is_served_by_vertex_with_only_its_variables(
    gateway_factory: Any, vertex_env: FakeVertex, oauth: FakeGoogleOAuth
) -> None:
    gw = gateway_factory()
    response = gw.client().images.with_raw_response.generate(
        model=PRO, prompt="a lighthouse", response_format="b64_json", extra_body={"aspect_ratio": "16:9"}
    )
    assert response.headers["x-imagegate-provider"] == "vertex"
    result = response.parse()
    assert image_size(base64.b64decode(result.data[0].b64_json or "")) == PRO_SIZES[("16:9", "1K")]
    usage = response.http_response.json()["usage"]
    assert (usage["provider"], usage["cost"]) == ("vertex", 0.134)
    [sent] = vertex_env.requests
    assert sent.path == vertex_path("gemini-3-pro-image")
    assert bearer(sent) == oauth.issued[0]


def test_sdk_edit_is_served_by_vertex(gateway_factory: Any, vertex_env: FakeVertex) -> None:
    gw = gateway_factory()
    response = gw.client().images.with_raw_response.edit(
        model=PRO, prompt="make it blue", image=("in.png", PNG.data, "image/png"), response_format="b64_json"
    )
    assert response.headers["x-imagegate-provider"] == "vertex"
    assert response.parse().data[0].b64_json
    parts = vertex_env.requests[0].json["contents"][0]["parts"]
    assert base64.b64decode(parts[1]["inline_data"]["data"]) == PNG.data


def test_sdk_jpeg_is_made_by_vertex_not_converted(gateway_factory: Any, vertex_env: FakeVertex) -> None:
    gw = gateway_factory()
    result = gw.client().images.generate(
        model=PRO, prompt="p", output_format="jpeg", output_compression=60, response_format="b64_json"
    )
    options = vertex_env.requests[0].json["generationConfig"]["imageConfig"]["imageOutputOptions"]
    assert options == {"mimeType": "image/jpeg", "compressionQuality": 60}
    assert detect_mime(base64.b64decode(result.data[0].b64_json or "")) == "image/jpeg"
    assert result.output_format == "jpeg"


def test_vertex_location_is_in_the_url(
    gateway_factory: Any, vertex_env: FakeVertex, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VERTEX_LOCATION", "europe-west4")
    vertex_env.location = "europe-west4"
    gateway_factory().client().images.generate(model=FLASH, prompt="p")
    assert vertex_env.requests[0].path == vertex_path(FLASH, "europe-west4")


def test_vertex_comes_after_the_existing_providers_and_takes_over_on_503(
    gateway_factory: Any, vertex_env: FakeVertex, fake_gemini: Any
) -> None:
    gw = gateway_factory(gemini_api_key=fake_gemini.api_key, gemini_base_url=fake_gemini.base_url)
    first = gw.client().images.with_raw_response.generate(model=PRO, prompt="p")
    assert first.headers["x-imagegate-provider"] == "gemini"
    assert vertex_env.requests == []
    fake_gemini.enqueue(GeminiError(503, "UNAVAILABLE", "The model is overloaded."))
    second = gw.client().images.with_raw_response.generate(model=PRO, prompt="p")
    assert second.headers["x-imagegate-provider"] == "vertex"
    assert len(vertex_env.requests) == 1


def test_a_429_from_vertex_is_retried(gateway_factory: Any, vertex_env: FakeVertex) -> None:
    gw = gateway_factory(retry_attempts=2, retry_backoff_seconds=0.01)
    vertex_env.enqueue(GeminiError(429, "RESOURCE_EXHAUSTED", "Quota exceeded.", retry_after_s=0.01))
    response = gw.client().images.with_raw_response.generate(model=PRO, prompt="p")
    assert response.headers["x-imagegate-provider"] == "vertex"
    assert len(vertex_env.requests) == 2


def test_a_token_endpoint_failure_is_502_upstream_auth_failed(
    gateway_factory: Any, vertex_env: FakeVertex, oauth: FakeGoogleOAuth
) -> None:
    import openai

    oauth.enqueue(TokenError())
    with gateway_factory().client() as client, pytest.raises(openai.APIStatusError) as info:
        client.images.generate(model=PRO, prompt="p")
    assert info.value.status_code == 502
    assert info.value.body["code"] == "upstream_auth_failed"  # type: ignore[index]
    assert vertex_env.requests == []


def test_a_safety_block_is_400_content_policy_violation(gateway_factory: Any, vertex_env: FakeVertex) -> None:
    import openai

    vertex_env.enqueue(PromptBlocked("PROHIBITED_CONTENT"))
    with gateway_factory().client() as client, pytest.raises(openai.BadRequestError) as info:
        client.images.generate(model=PRO, prompt="p")
    assert info.value.body["code"] == "content_policy_violation"  # type: ignore[index]


@pytest.mark.parametrize(
    ("model_id", "upstream", "per_image", "by_resolution"),
    [
        (PRO, "gemini-3-pro-image", 0.134, {"1K": 0.134, "2K": 0.134, "4K": 0.24}),
        (FLASH, FLASH, 0.039, {}),
    ],
)
def test_models_list_vertex_last_with_its_price(
    gateway_factory: Any,
    vertex_env: FakeVertex,
    model_id: str,
    upstream: str,
    per_image: float,
    by_resolution: dict[str, float],
) -> None:
    gw = gateway_factory()
    card = httpx.get(f"{gw.url}/v1/models/{model_id}", headers={"authorization": f"Bearer {API_KEY}"}).json()
    assert card["available"] is True
    assert [p["id"] for p in card["providers"]][-1] == "vertex"
    vertex_card = card["providers"][-1]
    assert vertex_card["configured"] is True and vertex_card["upstream_model"] == upstream
    price = vertex_card["price"]
    assert (price["per_image"], price["by_resolution"], price["estimated"]) == (per_image, by_resolution, False)
    assert vertex_card["parameters"]["output_format"]["handling"] == "converted"


def test_a_503_from_vertex_fails_over_to_the_next_provider(
    gateway_factory: Any, vertex_env: FakeVertex, fake_gemini: Any, tmp_path: Path
) -> None:
    config = tmp_path / "imagegate.toml"
    config.write_text(f'[routing]\n"{PRO}" = ["vertex", "gemini"]\n')
    gw = gateway_factory(config=config, gemini_api_key=fake_gemini.api_key, gemini_base_url=fake_gemini.base_url)
    vertex_env.enqueue(GeminiError(503, "UNAVAILABLE", "The model is overloaded."))
    response = gw.client().images.with_raw_response.generate(model=PRO, prompt="p")
    assert response.headers["x-imagegate-provider"] == "gemini"
    assert len(vertex_env.requests) == 1 and len(fake_gemini.requests) == 1


async def test_no_credentials_at_all_fails_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, http: httpx.AsyncClient
) -> None:
    from google.auth.compute_engine import _metadata

    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "no-gcloud"))  # no gcloud ADC file
    # What NO_GCE_CHECK=true does (google-auth reads it at import): no metadata-server probe, which
    # would leave loopback.
    monkeypatch.setattr(_metadata, "_NO_GCE_CHECK", True)
    adapter = vertex_adapter(http, project=PROJECT)
    with pytest.raises(ConfigurationError, match="GOOGLE_APPLICATION_CREDENTIALS"):
        await adapter.start()
    error = await raised(adapter)  # without a start (a CLI run): each request says why
    assert error.code == "upstream_auth_failed" and "no Google credentials" in error.message
    await adapter.aclose()


# --- streamed partial images -------------------------------------------------------------------


async def test_partial_images_stream_from_vertex_s_stream_url_with_the_bearer_token(
    provider: VertexProvider, vertex: FakeVertex, oauth: FakeGoogleOAuth
) -> None:
    partials: list[ProviderImage] = []
    result = await provider.run(make_request(output_format="jpeg", on_partial=partials.append))
    [sent] = vertex.requests
    assert sent.path == vertex_path("gemini-3-pro-image").replace(":generateContent", ":streamGenerateContent")
    assert sent.query == {"alt": "sse"}
    assert bearer(sent) == oauth.issued[0]
    config = sent.json["generationConfig"]
    assert config["thinkingConfig"] == {"includeThoughts": True}
    assert config["imageConfig"]["imageOutputOptions"] == {"mimeType": "image/jpeg"}  # Vertex's body, streamed
    assert [pixel_at(image.data) for image in partials] == [thought_color(0), thought_color(1)]
    assert detect_mime(result.images[0].data) == "image/jpeg"


async def test_a_401_on_the_stream_gets_one_new_token_and_one_retry(
    provider: VertexProvider, vertex: FakeVertex, oauth: FakeGoogleOAuth
) -> None:
    await provider.run(make_request())
    oauth.revoke(oauth.issued[0])
    partials: list[ProviderImage] = []
    result = await provider.run(make_request(on_partial=partials.append))
    assert result.images and len(partials) == 2
    assert [bearer(r) for r in vertex.requests] == [oauth.issued[0], oauth.issued[0], oauth.issued[1]]


async def test_a_streamed_error_maps_as_the_plain_call_s(provider: VertexProvider, vertex: FakeVertex) -> None:
    vertex.enqueue(*[GeminiError(429, "RESOURCE_EXHAUSTED", "Quota exceeded.", retry_after_s=9)] * 2)
    plain = await raised(provider)
    stream = await raised(provider, make_request(on_partial=lambda image: None))
    assert type(stream) is type(plain)
    assert (stream.message, stream.code, stream.retry_after) == (plain.message, plain.code, plain.retry_after)
