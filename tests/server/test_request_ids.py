"""Request ids: a client's `x-request-id` is echoed back, but usage rows are keyed by the
gateway's own id (unique per request, also in `x-imagegate-request-id`); the client's is kept
beside it as `client_request_id`."""

from __future__ import annotations

import sqlite3

import httpx

from ..conftest import API_KEY, RunningGateway
from ..fakes.gemini import FakeGemini

MODEL = "gemini-3-pro-image-preview"


def usage_ids(gw: RunningGateway) -> list[tuple[str, str | None]]:
    with sqlite3.connect(gw.settings.database_path) as db:
        return [(str(r[0]), r[1]) for r in db.execute("SELECT request_id, client_request_id FROM usage ORDER BY id")]


def test_a_reused_client_id_is_echoed_but_usage_rows_get_distinct_ids(
    gateway: RunningGateway, fake_gemini: FakeGemini
) -> None:
    client = gateway.client()
    answers = [
        client.images.with_raw_response.generate(
            model=MODEL, prompt=f"p{i}", response_format="b64_json", extra_headers={"x-request-id": "client-run-7"}
        )
        for i in range(2)
    ]
    assert [a.headers["x-request-id"] for a in answers] == ["client-run-7", "client-run-7"]
    gateway_ids = [a.headers["x-imagegate-request-id"] for a in answers]
    assert len(set(gateway_ids)) == 2 and all(i.startswith("req_") for i in gateway_ids)
    assert usage_ids(gateway) == [(gateway_ids[0], "client-run-7"), (gateway_ids[1], "client-run-7")]


def test_without_a_client_id_both_headers_carry_the_gateways(gateway: RunningGateway, fake_gemini: FakeGemini) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/images/generations",
        headers={"authorization": f"Bearer {API_KEY}"},
        json={"model": MODEL, "prompt": "p", "response_format": "b64_json"},
        timeout=30,
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == response.headers["x-imagegate-request-id"]
    assert usage_ids(gateway) == [(response.headers["x-request-id"], None)]


def test_an_error_echoes_the_client_id_too(gateway: RunningGateway) -> None:
    response = httpx.post(
        f"{gateway.url}/v1/images/generations",
        headers={"authorization": f"Bearer {API_KEY}", "x-request-id": "bad-one"},
        json={"model": MODEL, "prompt": "p", "size": "banana"},
        timeout=30,
    )
    assert response.status_code == 400
    assert response.headers["x-request-id"] == "bad-one"
    assert response.headers["x-imagegate-request-id"].startswith("req_")
