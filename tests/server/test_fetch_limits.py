"""Image URLs in edits, end to end through the openai SDK: slow URLs are bounded (a total cap per
fetch, one request deadline over fetching and upstream calls, a per-key limit on a pool of their
own), IPv4-in-IPv6 literals are refused, and the gateway's own result URLs are read from its
result store instead of over the network.

The slow URLs come from a loopback host that sends a PNG header, then one byte per second.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from openai.types import ImagesResponse

from ..conftest import RunningGateway
from ..fakes.gemini import FakeGemini
from ..fakes.image_host import ImageHost

MODEL = "gemini-3-pro-image-preview"  # takes up to 14 input images
EDIT_PATH = "/images/edits"


@pytest.fixture
def image_host() -> Iterator[ImageHost]:
    with ImageHost(drip_interval=1.0) as host:
        yield host


def gemini_gateway(gateway_factory: Any, fake: FakeGemini, **overrides: Any) -> RunningGateway:
    gw: RunningGateway = gateway_factory(gemini_api_key=fake.api_key, gemini_base_url=fake.base_url, **overrides)
    return gw


def json_edit(client: OpenAI, urls: list[str]) -> ImagesResponse:
    body = {
        "model": MODEL,
        "prompt": "edit it",
        "response_format": "b64_json",
        "images": [{"image_url": url} for url in urls],
    }
    return client.post(EDIT_PATH, body=body, cast_to=ImagesResponse)


def error_of(exc: openai.APIStatusError) -> dict[str, Any]:
    error: dict[str, Any] = exc.response.json()["error"]
    return error


def inline_images(fake: FakeGemini) -> list[bytes]:
    parts = fake.requests[-1].json["contents"][0]["parts"]
    return [
        base64.b64decode((p.get("inline_data") or p["inlineData"])["data"])
        for p in parts
        if "inline_data" in p or "inlineData" in p
    ]


# --- slow URLs ------------------------------------------------------------------------------------


async def test_one_tenants_dripping_urls_do_not_time_out_another_tenants_generation(
    gateway_factory: Any, fake_gemini: FakeGemini, image_host: ImageHost
) -> None:
    """Tenant A holds 40 edits x 14 dripping URLs (more than the upstream pool's 512 connections);
    tenant B's plain generation still succeeds inside a 5 s request deadline, and A never has
    more than IMAGEGATE_FETCH_CONCURRENCY_PER_KEY fetches open."""
    gw = gemini_gateway(
        gateway_factory,
        fake_gemini,
        api_keys="tenant-a,tenant-b",
        request_timeout_seconds=5.0,
        fetch_timeout_seconds=3.0,
        fetch_concurrency_per_key=8,
    )
    tenant_a = AsyncOpenAI(api_key="tenant-a", base_url=f"{gw.url}/v1", max_retries=0, timeout=30)
    tenant_b = AsyncOpenAI(api_key="tenant-b", base_url=f"{gw.url}/v1", max_retries=0, timeout=30)
    body = {
        "model": MODEL,
        "prompt": "edit it",
        "images": [{"image_url": f"{image_host.url}/drip?i={i}"} for i in range(14)],
    }
    edits = [asyncio.ensure_future(tenant_a.post(EDIT_PATH, body=body, cast_to=ImagesResponse)) for _ in range(40)]
    try:
        async with asyncio.timeout(10):
            while image_host.open_drips < 8:  # A's fetches are in flight
                await asyncio.sleep(0.05)
        generated = await tenant_b.images.generate(model=MODEL, prompt="a plain one", response_format="b64_json")
        assert generated.data and generated.data[0].b64_json
        outcomes = await asyncio.gather(*edits, return_exceptions=True)
    finally:
        for task in edits:
            task.cancel()
        await tenant_a.close()
        await tenant_b.close()
    codes = {error_of(o)["code"] for o in outcomes if isinstance(o, openai.APIStatusError)}
    assert all(isinstance(o, openai.APIStatusError) for o in outcomes), outcomes
    assert codes <= {"image_fetch_timeout", "request_timeout"}, codes
    assert image_host.peak_drips <= 8
    async with asyncio.timeout(5):  # every abandoned fetch closed its connection (the host notices soon)
        while image_host.open_drips:
            await asyncio.sleep(0.05)


def test_url_dripping_past_the_fetch_cap_is_a_400_within_the_cap(
    gateway_factory: Any, fake_gemini: FakeGemini, image_host: ImageHost
) -> None:
    gw = gemini_gateway(gateway_factory, fake_gemini, fetch_timeout_seconds=1.0)
    started = time.monotonic()
    with pytest.raises(openai.BadRequestError) as info:
        json_edit(gw.client(timeout=20), [f"{image_host.url}/drip"])
    error = error_of(info.value)
    assert (error["code"], error["param"]) == ("image_fetch_timeout", "images")
    assert time.monotonic() - started < 15  # cut at the 1 s cap, not kept alive by each byte
    assert fake_gemini.requests == []


def test_request_deadline_covers_fetching(gateway_factory: Any, fake_gemini: FakeGemini, image_host: ImageHost) -> None:
    """A request deadline shorter than the fetch cap ends the request with 504 request_timeout."""
    gw = gemini_gateway(gateway_factory, fake_gemini, request_timeout_seconds=1.0, fetch_timeout_seconds=30.0)
    with pytest.raises(openai.APIStatusError) as info:
        json_edit(gw.client(timeout=20), [f"{image_host.url}/drip"])
    assert info.value.status_code == 504
    assert error_of(info.value)["code"] == "request_timeout"
    assert fake_gemini.requests == []


# --- IPv4 embedded in IPv6 --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "[::127.0.0.1]",  # IPv4-compatible
        "[64:ff9b::127.0.0.1]",  # NAT64
        "[64:ff9b::a9fe:a9fe]",  # NAT64 of the cloud metadata address
        "[2002:7f00:1::1]",  # 6to4
        "[2001:0:4136:e378:8000:63bf:3fff:fdd2]",  # Teredo
        "[::ffff:10.0.0.1]",  # IPv4-mapped
    ],
)
def test_ipv4_embedded_in_ipv6_is_judged_by_its_ipv4(gateway_factory: Any, fake_gemini: FakeGemini, host: str) -> None:
    gw = gemini_gateway(gateway_factory, fake_gemini, allow_private_urls=False)
    with pytest.raises(openai.BadRequestError) as info:
        json_edit(gw.client(), [f"http://{host}/a.png"])
    error = error_of(info.value)
    assert (error["code"], error["param"]) == ("url_not_allowed", "images")
    assert fake_gemini.requests == []


# --- the gateway's own result URLs -------------------------------------------------------------------


def generate_url(client: OpenAI) -> str:
    url = client.images.generate(model=MODEL, prompt="something to edit", response_format="url").data[0].url
    assert url is not None
    return url


def stored_bytes(gw: RunningGateway, url: str) -> bytes:
    return (gw.settings.data_dir / "results" / url.rsplit("/", 1)[1]).read_bytes()


@pytest.mark.parametrize("prefix", ["/v1/results/", "/openai/v1/results/"])
def test_own_result_url_is_read_from_the_store(gateway_factory: Any, fake_gemini: FakeGemini, prefix: str) -> None:
    """Private URLs are refused (the default), and the gateway is on 127.0.0.1: a network fetch
    would be a url_not_allowed. The edit succeeds because the result is read from the store."""
    gw = gemini_gateway(gateway_factory, fake_gemini, allow_private_urls=False)
    client = gw.client()
    url = generate_url(client).replace("/v1/results/", prefix)
    result = json_edit(client, [url])
    assert result.data[0].b64_json
    assert inline_images(fake_gemini) == [stored_bytes(gw, url)]


def test_own_result_url_on_the_configured_or_the_called_host(gateway_factory: Any, fake_gemini: FakeGemini) -> None:
    """With IMAGEGATE_PUBLIC_URL set, both its URLs and the host the client called are ours."""
    gw = gemini_gateway(gateway_factory, fake_gemini, allow_private_urls=False, public_url="https://images.example.com")
    client = gw.client()
    public = generate_url(client)
    assert public.startswith("https://images.example.com/v1/results/")
    called = gw.url + "/v1/results/" + public.rsplit("/", 1)[1]
    for url in (public, called):
        assert json_edit(client, [url]).data[0].b64_json
        assert inline_images(fake_gemini) == [stored_bytes(gw, public)]


def test_unknown_or_expired_own_result_is_a_400(gateway_factory: Any, fake_gemini: FakeGemini) -> None:
    gw = gemini_gateway(gateway_factory, fake_gemini, allow_private_urls=False, result_ttl_seconds=0.5)
    client = gw.client()
    expired = generate_url(client)
    time.sleep(1.0)
    for url in (f"{gw.url}/v1/results/no-such-result.png", expired):
        with pytest.raises(openai.BadRequestError) as info:
            json_edit(client, [url])
        error = error_of(info.value)
        assert (error["code"], error["param"]) == ("result_not_found", "images")
        assert "does not exist or has expired" in error["message"]
    assert len(fake_gemini.requests) == 1  # only the generation


def test_result_shaped_url_on_another_origin_keeps_the_ssrf_rules(
    gateway_factory: Any, fake_gemini: FakeGemini
) -> None:
    gw = gemini_gateway(gateway_factory, fake_gemini, allow_private_urls=False)
    client = gw.client()
    url = generate_url(client).replace("127.0.0.1", "127.0.0.2")
    with pytest.raises(openai.BadRequestError) as info:
        json_edit(client, [url])
    assert error_of(info.value)["code"] == "url_not_allowed"
