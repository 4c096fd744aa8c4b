"""The provider contract: every shared situation, run over every provider against its fake upstream.

Each provider is a `ProviderCase` (cases.py): its fake, its settings, a model it serves, and each
situation scripted in its upstream's own wire format. The adapter is built by the plugin
registry's factory from a `ProviderContext`, as the gateway builds it; requests are planned by
`params.provider_views`, as the pipeline plans them, so the adapter gets the real `WirePlan`.
What is specific to one upstream stays in its own `test_<provider>.py`.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from imagegate.catalog import Catalog, ModelEntry
from imagegate.errors import (
    ContentPolicyViolation,
    ImagegateError,
    UnsupportedParameter,
    UpstreamAuthFailed,
    UpstreamBadResponse,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejectedRequest,
    UpstreamResponseTooLarge,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from imagegate.normalize import resolve_layout
from imagegate.params import NOT_SENT, ProviderView, normalize_params, provider_views
from imagegate.plugins import ProviderContext, load_registry
from imagegate.providers import ImageProvider, InputImage, ProviderRequest, ProviderResult, transport
from tests.fakes.bfl import FakeBfl
from tests.fakes.images import detect_mime, image_size
from tests.fakes.openai_upstream import FakeOpenAI
from tests.fakes.vertex import FakeGoogleOAuth, FakeVertex, new_service_account, write_key_file

from .cases import CASES, CATALOG, ProviderCase, VertexUpstream, body_of, images_at, leaves, lookup, wire_of
from .inputs import JPEG, MASK, PNG

POLL_INTERVAL = 0.01  # the fakes answer at once
TIMEOUT = 30.0
MAX_BYTES = 64 * 1024 * 1024
SMALL_CAP = 5000  # a job's JSON answers fit; a 1K image (about 15 KB as PNG) does not
SHORT_TIMEOUT = 0.3  # a job is submitted well within it (on a busy machine too), then never finishes
HANG_TIMEOUT = 0.2  # the first call hangs: any deadline passes during it


# --- fakes the shared conftest does not start ---------------------------------------------------


@pytest.fixture(scope="module")
def vertex_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VertexUpstream]:
    account = new_service_account(project_id="contract-project")
    root = tmp_path_factory.mktemp("vertex-keys")
    with FakeGoogleOAuth() as oauth, FakeVertex(oauth=oauth, project="contract-project") as vertex:
        oauth.register(account)
        stranger = new_service_account("who@elsewhere.iam.gserviceaccount.com", "elsewhere")
        yield VertexUpstream(
            oauth,
            vertex,
            write_key_file(root / "key.json", account, oauth.token_uri),
            write_key_file(root / "stranger.json", stranger, oauth.token_uri),
            "contract-project",
        )


@pytest.fixture
def vertex_upstream(vertex_servers: VertexUpstream) -> Iterator[VertexUpstream]:
    vertex_servers.reset()
    yield vertex_servers
    vertex_servers.reset()


@pytest.fixture(scope="module")
def fake_bfl_server() -> Iterator[FakeBfl]:
    with FakeBfl() as fake:
        yield fake


@pytest.fixture
def fake_bfl(fake_bfl_server: FakeBfl) -> Iterator[FakeBfl]:
    fake_bfl_server.reset()
    yield fake_bfl_server
    fake_bfl_server.reset()


@pytest.fixture
def fake_openai_gpt(fake_openai: FakeOpenAI) -> FakeOpenAI:
    """The OpenAI fake refusing what the real API refuses per GPT image model (reset after the test)."""
    return fake_openai.with_gpt_image_rules()


# --- the harness ---------------------------------------------------------------------------------


@dataclass
class Harness:
    """One case, its running fake and the adapters a test builds."""

    case: ProviderCase
    upstream: Any
    http: httpx.AsyncClient
    adapters: list[ImageProvider] = field(default_factory=list)

    @property
    def model(self) -> ModelEntry:
        entry = CATALOG.get(self.case.model_id)
        assert entry is not None
        return entry

    def adapter(
        self, settings: dict[str, str] | None = None, *, timeout: float = TIMEOUT, max_bytes: int = MAX_BYTES
    ) -> ImageProvider:
        """The adapter as the gateway builds it: the registry's factory, given a ProviderContext."""
        spec = load_registry().get(self.case.id)
        assert spec is not None, f"no plugin registers {self.case.id}"
        values = self.case.settings(self.upstream) if settings is None else settings
        adapter = spec.factory(ProviderContext(self.case.id, values, self.http, timeout, max_bytes, POLL_INTERVAL))
        self.adapters.append(adapter)
        return adapter

    def view(self, mode: str = "t2i", **fields: Any) -> ProviderView:
        """The provider's view of a request, planned as the pipeline plans it with every provider of
        the model configured (so a parameter only this one lacks is served without, not refused)."""
        raw = {"prompt": "a red fox in snow", **fields}
        params = normalize_params(raw, model=self.model, mode=mode)  # type: ignore[arg-type]
        return provider_views(params, self.model, self.model.providers, strict=False)[self.case.id]

    def request(
        self, mode: str = "t2i", *, images: tuple[InputImage, ...] = (), mask: InputImage | None = None, **fields: Any
    ) -> ProviderRequest:
        """What the dispatcher hands the adapter for one call (dispatch.Dispatcher._request)."""
        view = self.view(mode, **fields)
        layout = resolve_layout(
            self.model,
            size=view.get("size"),
            aspect_ratio=view.get("aspect_ratio"),
            resolution=view.get("resolution"),
            input_shape=(images[0].width, images[0].height) if images else None,
        )
        return ProviderRequest(
            mode=mode,
            prompt=view.get("prompt"),
            layout=layout,
            plan=view.plan,
            n=int(view.get("n", 1)),
            seed=view.get("seed"),
            images=images,
            mask=mask,
            output_format=view.native_output_format,
            output_compression=view.get("output_compression"),
            options=view.options,
            extra=view.extra,
        )

    def edit_request(self, **fields: Any) -> ProviderRequest:
        return self.request("edit", images=(PNG,), **fields)

    async def run(self, request: ProviderRequest | None = None, adapter: ImageProvider | None = None) -> ProviderResult:
        return await (adapter or self.adapter()).run(request or self.request())

    async def raised(
        self,
        request: ProviderRequest | None = None,
        adapter: ImageProvider | None = None,
    ) -> ImagegateError:
        with pytest.raises(ImagegateError) as info:
            await self.run(request, adapter)
        return info.value

    def enqueue(self, *behaviours: Any) -> None:
        self.case.enqueue(self.upstream, *behaviours)

    @property
    def calls(self) -> list[Any]:
        return self.case.calls(self.upstream)

    @property
    def cancels(self) -> int:
        return self.case.cancels(self.upstream)

    async def until(self, what: str, check: Any, timeout: float = 5.0) -> None:
        """Wait (never a timing assertion) for the fake's server thread to record something."""
        for _ in range(int(timeout / 0.01)):
            if check():
                return
            await asyncio.sleep(0.01)
        pytest.fail(f"{self.case.id}: {what} did not happen within {timeout:g} s")


@pytest.fixture(params=CASES, ids=[case.id for case in CASES])
async def harness(request: pytest.FixtureRequest, http: httpx.AsyncClient) -> AsyncIterator[Harness]:
    case: ProviderCase = request.param
    harness = Harness(case, request.getfixturevalue(case.fixture), http)
    yield harness
    await asyncio.wait_for(transport.drain_cancels(), 5)
    for adapter in harness.adapters:
        await adapter.aclose()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- success ---------------------------------------------------------------------------------------


async def test_text_to_image_success(harness: Harness) -> None:
    request = harness.request()
    result = await harness.run(request)
    assert len(result.images) == 1
    image = result.images[0]
    assert image_size(image.data) == (request.layout.width, request.layout.height)
    assert image.mime_type == detect_mime(image.data)  # told by the bytes, not by the upstream
    assert len(harness.calls) == 1
    assert harness.cancels == 0  # a job that finished is not cancelled


async def test_edit_success(harness: Harness) -> None:
    request = harness.edit_request(prompt="make it blue")
    result = await harness.run(request)
    assert len(result.images) == 1
    assert image_size(result.images[0].data) == (request.layout.width, request.layout.height)
    assert len(harness.calls) == 1


# --- errors, each as its upstream sends it -----------------------------------------------------------


async def test_rejected_key_is_upstream_auth_failed(harness: Harness) -> None:
    adapter = harness.adapter(harness.case.rejected_key_settings(harness.upstream))
    error = await harness.raised(adapter=adapter)
    assert type(error) is UpstreamAuthFailed
    assert (error.status_code, error.code) == (502, "upstream_auth_failed")
    assert not error.retryable  # the operator's key: no retry at the same provider helps
    assert harness.case.words["rejected_key"] in error.message


async def test_rate_limited_carries_retry_after(harness: Harness) -> None:
    harness.enqueue(harness.case.rate_limited(7))
    error = await harness.raised()
    assert type(error) is UpstreamRateLimited
    assert (error.status_code, error.code) == (503, "upstream_rate_limited")
    assert error.retry_after == 7 and error.headers() == {"retry-after": "7"}
    assert error.retryable and error.capacity
    assert error.upstream_status == 429
    assert harness.case.words["rate_limited"] in error.message


async def test_overloaded_is_unavailable(harness: Harness) -> None:
    harness.enqueue(harness.case.overloaded())
    error = await harness.raised()
    assert type(error) is UpstreamUnavailable
    assert (error.status_code, error.code) == (503, "upstream_unavailable")
    assert error.retryable and error.upstream_status == 503


async def test_server_error_is_a_retryable_502(harness: Harness) -> None:
    harness.enqueue(harness.case.server_error())
    error = await harness.raised()
    assert type(error) is UpstreamError
    assert (error.status_code, error.code) == (502, "upstream_error")
    assert error.retryable and error.upstream_status == 500
    assert harness.case.words["server_error"] in error.message


async def test_rejected_input_is_upstream_rejected_request(harness: Harness) -> None:
    harness.enqueue(harness.case.rejects_input())
    error = await harness.raised()
    assert type(error) is UpstreamRejectedRequest
    assert (error.status_code, error.code) == (400, "upstream_rejected_request")
    assert error.client_fault and not error.upstream_failure  # another provider would refuse it too
    assert error.upstream_status in (400, 422)
    assert harness.case.words["rejects_input"] in error.message  # the upstream's own words reach the client


async def test_content_policy_is_a_violation(harness: Harness) -> None:
    harness.enqueue(harness.case.content_policy())
    error = await harness.raised()
    assert type(error) is ContentPolicyViolation
    assert (error.status_code, error.code, error.param) == (400, "content_policy_violation", "prompt")
    assert error.client_fault


async def test_malformed_json_is_a_bad_response(harness: Harness) -> None:
    harness.enqueue(harness.case.malformed_json())
    error = await harness.raised()
    assert type(error) is UpstreamBadResponse
    assert (error.status_code, error.code) == (502, "upstream_bad_response")


async def test_html_error_page_is_mapped_by_status(harness: Harness) -> None:
    harness.enqueue(harness.case.html_page(502))
    error = await harness.raised()
    assert type(error) is UpstreamError and error.status_code == 502 and error.upstream_status == 502


async def test_html_503_page_carries_retry_after(harness: Harness) -> None:
    harness.enqueue(harness.case.html_page(503, {"Retry-After": "9"}))
    error = await harness.raised()
    assert type(error) is UpstreamUnavailable
    assert error.status_code == 503 and error.retry_after == 9


async def test_a_body_over_the_cap_is_too_large(harness: Harness) -> None:
    error = await harness.raised(adapter=harness.adapter(max_bytes=SMALL_CAP))
    assert type(error) is UpstreamResponseTooLarge
    assert (error.status_code, error.code) == (502, "upstream_response_too_large")
    assert not error.retryable


async def test_connection_refused_is_a_connection_error(harness: Harness) -> None:
    settings = {**harness.case.settings(harness.upstream), "base_url": f"http://127.0.0.1:{closed_port()}"}
    error = await harness.raised(adapter=harness.adapter(settings))
    assert type(error) is UpstreamConnectionError
    assert (error.status_code, error.code) == (503, "upstream_connection_error")


async def test_a_hang_past_the_timeout_is_upstream_timeout(harness: Harness) -> None:
    harness.enqueue(harness.case.hang(10))
    error = await harness.raised(adapter=harness.adapter(timeout=HANG_TIMEOUT))
    assert type(error) is UpstreamTimeout
    assert (error.status_code, error.code) == (504, "upstream_timeout")
    # The connection is dropped, so the upstream sees the client go away.
    await harness.until("the disconnect", lambda: harness.case.disconnects(harness.upstream) == 1)
    assert len(harness.calls) == 1


async def assert_the_upstream_was_stopped(harness: Harness) -> None:
    """What stopping waiting does upstream: a polling upstream's job is cancelled (so it stops
    working on, and billing for, it); one without a cancel (the case says why) is polled no more;
    a one-call upstream sees its connection dropped, which is all the cancel there is."""
    case = harness.case
    if case.polling and case.no_cancel is None:
        await asyncio.wait_for(transport.drain_cancels(), 5)  # a caller's cancel goes from a background task
        await harness.until("the cancel", lambda: harness.cancels == 1)
    elif case.polling:
        sent = len(case.requests(harness.upstream))
        await asyncio.sleep(10 * POLL_INTERVAL)  # ten polls' time: none comes
        assert len(case.requests(harness.upstream)) == sent and harness.cancels == 0
    else:
        await harness.until("the disconnect", lambda: case.disconnects(harness.upstream) == 1)


async def test_a_job_past_the_timeout_is_cancelled(harness: Harness) -> None:
    harness.enqueue(harness.case.stuck())
    timeout = SHORT_TIMEOUT if harness.case.polling else HANG_TIMEOUT
    error = await harness.raised(adapter=harness.adapter(timeout=timeout))
    assert type(error) is UpstreamTimeout and error.status_code == 504
    assert len(harness.calls) == 1
    await assert_the_upstream_was_stopped(harness)


async def test_the_caller_going_away_stops_the_upstream(harness: Harness) -> None:
    harness.enqueue(harness.case.stuck())
    task = asyncio.create_task(harness.run())
    polling = harness.case.polling
    await harness.until(
        "the first call" + (" and poll" if polling else ""),
        lambda: len(harness.case.requests(harness.upstream)) >= 2 if polling else len(harness.calls) == 1,
    )
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await assert_the_upstream_was_stopped(harness)


async def test_the_adapter_recovers_after_errors(harness: Harness) -> None:
    """A failure does not poison the shared client or the adapter: the next call succeeds."""
    harness.enqueue(harness.case.overloaded(), harness.case.malformed_json())
    adapter = harness.adapter()
    for _ in range(2):
        await harness.raised(adapter=adapter)
    result = await harness.run(adapter=adapter)
    assert len(result.images) == 1
    assert len(harness.calls) == 3


# --- the wire call ---------------------------------------------------------------------------------


async def test_a_trailing_slash_on_the_base_url_is_harmless(harness: Harness) -> None:
    await harness.run()
    settings = harness.case.settings(harness.upstream)
    await harness.run(adapter=harness.adapter({**settings, "base_url": settings["base_url"] + "/"}))
    first, second = harness.calls
    assert second.path == first.path and "//" not in second.path


async def test_building_the_request_does_not_mutate_it(harness: Harness) -> None:
    seed = {} if harness.case.no_seed else {"seed": 5}
    request = harness.request("edit", images=(PNG,), mask=MASK, **seed, **harness.case.option_fields)
    before = copy.deepcopy(request)
    adapter = harness.adapter()
    await harness.run(request, adapter)
    await harness.run(request, adapter)
    assert request == before
    first, second = harness.calls
    assert wire_of(first) == wire_of(second)


def assert_no_seed(harness: Harness) -> None:
    """A model without a seed: asking for one is a 400 naming it, before anything is sent."""
    assert harness.model.parameters["seed"].availability("t2i") == "not_available", harness.case.no_seed
    with pytest.raises(UnsupportedParameter) as info:
        harness.request(seed=4242)
    assert info.value.param == "seed" and info.value.status_code == 400


async def test_the_seed_reaches_the_wire_where_the_plan_says(harness: Harness) -> None:
    if harness.case.no_seed:
        return assert_no_seed(harness)
    request = harness.request(seed=4242)
    await harness.run(request)
    body = body_of(harness.calls[0])
    target = request.plan.target("seed")
    if target is None:  # the binding does not send it: the request is served without it, and says so
        assert harness.view(seed=4242).fates["seed"].fate == "not_applied"
        assert request.seed is None and 4242 not in leaves(body)
    else:
        assert lookup(body, target) == [4242]


async def test_seed_zero_is_a_seed(harness: Harness) -> None:
    if harness.case.no_seed:
        return assert_no_seed(harness)
    request = harness.request(seed=0)
    await harness.run(request)
    target = request.plan.target("seed")
    if target is not None:
        assert lookup(body_of(harness.calls[0]), target) == [0]
    else:
        assert request.seed is None


async def test_the_layout_reaches_the_wire_where_the_plan_says(harness: Harness) -> None:
    request = harness.request(**harness.case.layout_fields)
    result = await harness.run(request)
    layout, plan = request.layout, request.plan
    body = body_of(harness.calls[0])
    checked = 0
    for param, value in (("aspect_ratio", layout.aspect_ratio), ("resolution", layout.resolution)):
        target = plan.target(param)
        if target is not None:
            assert lookup(body, target) == [value], f"{param} is not at {target}"
            checked += 1
    handling = plan.handling("size")
    if handling is not None and handling not in NOT_SENT:
        expected = harness.case.size_on_wire(layout)
        assert set(expected) == set(plan.paths("size") or ("size",))  # the plan says where
        for path, value in expected.items():
            assert lookup(body, path) == [value], f"size is not at {path}"
            checked += 1
    assert checked, "the plan sends the layout nowhere"
    # And the upstream made what the layout asked for.
    assert image_size(result.images[0].data) == (layout.width, layout.height)


async def test_input_images_reach_the_wire_where_the_plan_says(harness: Harness) -> None:
    request = harness.request("edit", images=(PNG, JPEG), prompt="combine")
    await harness.run(request)
    paths = request.plan.paths("image") or ("image",)
    assert images_at(harness.calls[0], paths) == [PNG.data, JPEG.data]


async def test_the_adapter_reads_the_plan_not_the_catalog(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Given a plan the catalog never made (an upstream model it does not know), the adapter calls
    what the plan says, and never looks anything up in a catalog."""
    request = harness.request()
    probe = dataclasses.replace(
        request, plan=dataclasses.replace(request.plan, upstream_model=harness.case.probe_model)
    )

    def no_catalog(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the adapter consulted the catalog")

    for name in ("get", "alias_of", "__iter__", "__len__"):
        monkeypatch.setattr(Catalog, name, no_catalog)
    monkeypatch.setattr("imagegate.catalog.load_builtin_catalog", no_catalog)
    monkeypatch.setattr("imagegate.gateway.build_catalog", no_catalog)
    result = await harness.run(probe)
    assert result.images
    assert harness.case.upstream_model_on_wire(harness.calls[0]) == harness.case.probe_model
