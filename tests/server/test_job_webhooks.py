"""A job's webhook end to end: a job made with `webhook_url` is POSTed, signed per Standard Webhooks,
to a real loopback receiver when it ends; the signature is checked with the independent
`standardwebhooks` package, and the job object shows the delivery."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from standardwebhooks import Webhook

from ..conftest import RunningGateway
from ..fakes.gemini import FakeGemini, GeminiError, Hang
from ..fakes.webhook_receiver import WebhookReceiver
from .test_jobs import MODEL, auth, get_job, submit, wait_job, wait_until

SECRET = "whsec_" + base64.b64encode(bytes(range(7, 39))).decode()


@pytest.fixture
def receiver() -> Any:
    with WebhookReceiver() as running:
        yield running


@pytest.fixture
def hooked(gateway_factory: Any, fake_gemini: FakeGemini) -> Callable[..., RunningGateway]:
    def make(**overrides: Any) -> RunningGateway:
        gateway: RunningGateway = gateway_factory(
            gemini_api_key=fake_gemini.api_key,
            gemini_base_url=fake_gemini.base_url,
            webhook_secret=SECRET,
            webhook_base_delay_seconds=0.05,
            **overrides,
        )
        return gateway

    return make


def verified(received: Any) -> dict[str, Any]:
    payload = Webhook(SECRET).verify(received.body, received.headers)
    assert isinstance(payload, dict)
    return payload


def test_a_finished_job_posts_its_signed_event_and_shows_the_delivery(
    hooked: Callable[..., RunningGateway], receiver: WebhookReceiver
) -> None:
    gateway = hooked()
    job_id = submit(gateway, {"model": MODEL, "prompt": "p", "webhook_url": receiver.url}).json()["id"]
    job = wait_job(gateway, job_id)
    [hook] = receiver.wait_for(1)
    payload = verified(hook)
    assert payload["type"] == "image.job.succeeded"
    assert payload["data"]["id"] == job_id and payload["data"]["status"] == "succeeded"
    assert payload["data"]["result"]["data"] == job["result"]["data"]
    assert hook.headers["webhook-id"] and hook.headers["content-type"] == "application/json"

    def delivered() -> bool:
        return get_job(gateway, job_id).json()["webhook"]["delivered_at"] is not None

    wait_until(delivered, "the job to show its delivery")
    shown = get_job(gateway, job_id).json()["webhook"]
    assert (shown["url"], shown["attempts"], shown["last_status"]) == (receiver.url, 1, 200)


def test_failed_and_cancelled_jobs_post_their_own_event_types(
    hooked: Callable[..., RunningGateway], receiver: WebhookReceiver, fake_gemini: FakeGemini
) -> None:
    gateway = hooked()
    fake_gemini.enqueue(GeminiError(400, "INVALID_ARGUMENT", "no"))
    failed = submit(gateway, {"model": MODEL, "prompt": "p", "webhook_url": receiver.url}).json()["id"]
    wait_job(gateway, failed)
    fake_gemini.enqueue(Hang(30))
    cancelled = submit(gateway, {"model": MODEL, "prompt": "p", "webhook_url": receiver.url}).json()["id"]
    wait_job(gateway, cancelled, statuses=("in_progress",))
    import httpx

    httpx.post(f"{gateway.url}/v1/images/jobs/{cancelled}/cancel", headers=auth(), timeout=30)
    hooks = receiver.wait_for(2)
    types = {verified(h)["data"]["id"]: verified(h)["type"] for h in hooks}
    assert types == {failed: "image.job.failed", cancelled: "image.job.cancelled"}


def test_a_failing_receiver_is_retried_and_the_attempts_are_shown(
    hooked: Callable[..., RunningGateway], receiver: WebhookReceiver
) -> None:
    receiver.script = [500, 503]
    gateway = hooked()
    job_id = submit(gateway, {"model": MODEL, "prompt": "p", "webhook_url": receiver.url}).json()["id"]
    hooks = receiver.wait_for(3)
    assert len({h.headers["webhook-id"] for h in hooks}) == 1  # one message, retried

    def delivered() -> bool:
        return get_job(gateway, job_id).json()["webhook"]["delivered_at"] is not None

    wait_until(delivered, "the delivery")
    assert get_job(gateway, job_id).json()["webhook"]["attempts"] == 3


def test_a_webhook_needs_a_secret(gateway: RunningGateway, receiver: WebhookReceiver) -> None:
    response = submit(gateway, {"model": MODEL, "prompt": "p", "webhook_url": receiver.url})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "webhook_secret_missing"


def test_a_private_webhook_target_is_refused_unless_allowed(
    hooked: Callable[..., RunningGateway], receiver: WebhookReceiver, fake_gemini: FakeGemini
) -> None:
    gateway = hooked(allow_private_urls=False)
    for url in (receiver.url, f"http://localhost:{receiver.port}/hook"):
        response = submit(gateway, {"model": MODEL, "prompt": "p", "webhook_url": url})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert (error["param"], error["code"]) == ("webhook_url", "url_not_allowed")
    assert fake_gemini.requests == [] and json.loads(receiver.received.__repr__() or "[]") == []


def test_a_webhook_url_on_a_synchronous_request_is_not_applied_and_said_so(
    hooked: Callable[..., RunningGateway], receiver: WebhookReceiver
) -> None:
    gateway = hooked()
    result = gateway.client().images.generate(model=MODEL, prompt="p", extra_body={"webhook_url": receiver.url})
    assert {
        "param": "webhook_url",
        "requested": receiver.url,
        "applied": "not applied (only with Prefer: respond-async)",
    } in (result.model_extra or {})["adjustments"]
    job_id = submit(gateway, {"model": MODEL, "prompt": "p", "webhook_url": receiver.url}).json()["id"]
    job = wait_job(gateway, job_id)
    assert all(a["param"] != "webhook_url" for a in job["result"]["adjustments"])  # the job acted on it
    assert len(receiver.wait_for(1)) == 1
