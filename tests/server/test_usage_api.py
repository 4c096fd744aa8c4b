"""GET /v1/usage end to end: a real gateway, requests made through the openai SDK with stored,
static and admin keys, plus rows recorded at chosen times for the period and day boundaries."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from imagegate.db import Database
from imagegate.keys import KeyStore
from imagegate.usage import UsageLog, UsageRecord

from ..conftest import API_KEY, RunningGateway
from ..fakes.gemini import FakeGemini

MODEL = "gemini-3-pro-image-preview"
ADMIN_KEY = "sk-test-admin"
ROW_FIELDS = {"requests", "images", "undelivered_images", "cost", "currency"}


def at(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def get_usage(gateway: RunningGateway, key: str = ADMIN_KEY, prefix: str = "/v1", **params: Any) -> httpx.Response:
    return httpx.get(
        f"{gateway.url}{prefix}/usage", params=params, headers={"authorization": f"Bearer {key}"}, timeout=30
    )


def usage(gateway: RunningGateway, key: str = ADMIN_KEY, **params: Any) -> dict[str, Any]:
    response = get_usage(gateway, key, **params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def recorded(gateway: RunningGateway, rows: list[tuple[str, str | None, str, str, int, float]]) -> None:
    """Usage rows at chosen times (ISO time, key id, model, provider, images, cost), never delivered."""
    db = Database(gateway.settings.database_path)
    try:
        log = UsageLog(db)
        for index, (when, key_id, model, provider, images, cost) in enumerate(rows):
            log.record(
                UsageRecord(f"hand_{index}", key_id, None, model, provider, "t2i", images, cost, 0, 0), at=at(when)
            )
    finally:
        db.close()


@pytest.fixture
def served(gateway_factory: Any, fake_gemini: FakeGemini) -> tuple[RunningGateway, dict[str, str]]:
    """A gateway with two stored keys (alice, bob), the static test key and an admin key; alice made
    one request of 2 images, bob one of 1, the static key one of 1."""
    gateway: RunningGateway = gateway_factory(
        gemini_api_key=fake_gemini.api_key, gemini_base_url=fake_gemini.base_url, admin_keys=ADMIN_KEY
    )
    db = Database(gateway.settings.database_path)
    try:
        store = KeyStore(db)
        (alice, alice_key), (bob, bob_key) = store.create("alice"), store.create("bob")
        _, ops_key = store.create("ops", admin=True)
    finally:
        db.close()
    for key, n in ((alice_key, 2), (bob_key, 1), (API_KEY, 1)):
        gateway.client(api_key=key).images.generate(model=MODEL, prompt="counted", n=n, response_format="url")
    return gateway, {"alice": alice.id, "alice_key": alice_key, "bob": bob.id, "bob_key": bob_key, "ops_key": ops_key}


def test_without_group_by_only_the_total(served: tuple[RunningGateway, dict[str, str]]) -> None:
    gateway, _ = served
    body = usage(gateway)
    assert body["object"] == "list" and body["data"] == [] and body["group_by"] == []
    total = body["total"]
    assert set(total) == ROW_FIELDS
    assert (total["requests"], total["images"], total["currency"]) == (3, 4, "USD")
    assert total["cost"] == pytest.approx(4 * 0.134)


def test_group_by_key_names_each_key(served: tuple[RunningGateway, dict[str, str]]) -> None:
    gateway, keys = served
    rows = usage(gateway, group_by="key")["data"]
    got = {row["key_name"]: (row["key_id"], row["requests"], row["images"]) for row in rows}
    assert got["alice"] == (keys["alice"], 1, 2) and got["bob"] == (keys["bob"], 1, 1)
    assert got["static"][0].startswith("static-") and got["static"][1:] == (1, 1)
    assert all(set(row) == ROW_FIELDS | {"key_id", "key_name"} for row in rows)
    assert rows[0]["key_name"] == "alice"  # largest cost first


def test_group_by_model_and_provider_together(served: tuple[RunningGateway, dict[str, str]]) -> None:
    gateway, _ = served
    recorded(gateway, [("2026-01-02T00:00:00+00:00", None, "bytedance/seedream-4", "replicate", 3, 0.09)])
    rows = usage(gateway, start="2026-01-01", group_by="model,provider")["data"]
    got = {(row["model"], row["provider"]): (row["requests"], row["images"]) for row in rows}
    assert got == {(MODEL, "gemini"): (3, 4), ("bytedance/seedream-4", "replicate"): (1, 3)}
    same = usage(gateway, start="2026-01-01", group_by=["model", "provider"])["data"]  # repeated, not comma-separated
    assert same == rows


def test_group_by_day_in_utc_with_its_boundaries(served: tuple[RunningGateway, dict[str, str]]) -> None:
    """Fractions of a second at midnight: the last quarter second of a day stays in it (a
    rounding CAST would move it to the next)."""
    gateway, _ = served
    recorded(
        gateway,
        [
            ("2026-11-29T23:59:59.750+00:00", None, MODEL, "gemini", 1, 0.134),
            ("2026-11-30T00:00:00+00:00", None, MODEL, "gemini", 2, 0.268),
            ("2026-11-30T23:59:59.5+00:00", None, MODEL, "fal", 1, 0.15),
            ("2026-12-01T00:00:00.25+00:00", None, MODEL, "fal", 4, 0.6),
        ],
    )
    body = usage(gateway, start="2026-11-29", end="2026-12-01T00:00:00Z", group_by="day")
    days = {row["day"]: (row["requests"], row["images"], row["undelivered_images"]) for row in body["data"]}
    assert days == {"2026-11-29": (1, 1, 1), "2026-11-30": (2, 3, 3)}  # the Dec 1 row is at or after `end`
    assert [row["day"] for row in body["data"]] == ["2026-11-29", "2026-11-30"]
    by_day_and_provider = usage(gateway, start=at("2026-11-30T00:00:00+00:00"), end=at("2026-12-01T01:00:00+00:00"),
                                group_by="day,provider")["data"]  # fmt: skip
    got = {(row["day"], row["provider"]): row["images"] for row in by_day_and_provider}
    assert got == {("2026-11-30", "gemini"): 2, ("2026-11-30", "fal"): 1, ("2026-12-01", "fal"): 4}


def test_the_default_period_is_this_utc_month_up_to_now(served: tuple[RunningGateway, dict[str, str]]) -> None:
    gateway, _ = served
    month = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    recorded(
        gateway,
        [
            (month.replace(microsecond=0).isoformat(), None, MODEL, "gemini", 5, 0.5),  # the month's first second
            (datetime.fromtimestamp(month.timestamp() - 1, UTC).isoformat(), None, MODEL, "gemini", 7, 0.7),
            (datetime.fromtimestamp(time.time() + 3600, UTC).isoformat(), None, MODEL, "gemini", 9, 0.9),  # future
        ],
    )
    body = usage(gateway)
    assert body["total"]["images"] == 4 + 5
    assert body["start"] == month.timestamp() and body["end"] <= time.time()


def test_a_key_sees_only_its_own_usage(served: tuple[RunningGateway, dict[str, str]]) -> None:
    gateway, keys = served
    mine = usage(gateway, keys["alice_key"], group_by="key,model")
    assert [(row["key_id"], row["key_name"], row["images"]) for row in mine["data"]] == [(keys["alice"], "alice", 2)]
    assert mine["total"]["images"] == 2
    assert usage(gateway, keys["bob_key"])["total"]["images"] == 1
    static = usage(gateway, API_KEY, group_by="key")["data"]
    assert [(row["key_name"], row["images"]) for row in static] == [("static", 1)]


def test_a_stored_admin_key_sees_every_key(served: tuple[RunningGateway, dict[str, str]]) -> None:
    gateway, keys = served
    rows = usage(gateway, keys["ops_key"], group_by="key")["data"]
    assert sorted(row["key_name"] for row in rows) == ["alice", "bob", "static"]


def test_the_openai_sdk_and_the_openai_prefix_read_it(served: tuple[RunningGateway, dict[str, str]]) -> None:
    gateway, _ = served
    body = gateway.client(api_key=ADMIN_KEY).get("/usage", cast_to=object, options={"params": {"group_by": "model"}})
    assert isinstance(body, dict) and body["data"][0]["model"] == MODEL and body["total"]["images"] == 4
    assert get_usage(gateway, prefix="/openai/v1").json()["total"]["requests"] == 3


def test_delivered_answers_are_not_counted_undelivered(served: tuple[RunningGateway, dict[str, str]]) -> None:
    gateway, _ = served
    deadline = time.monotonic() + 20
    while (undelivered := usage(gateway)["total"]["undelivered_images"]) and time.monotonic() < deadline:
        time.sleep(0.05)  # the inline writer marks in a worker thread, just after the answer is out
    assert undelivered == 0


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"start": "yesterday"}, "start"),
        ({"end": "2026-13-01"}, "end"),
        ({"group_by": "user"}, "group_by"),
        ({"group_by": "model,,days"}, "group_by"),
        ({"start": "2026-12-02", "end": "2026-12-01"}, "start"),
        ({"start": "100", "end": "100"}, "start"),
    ],
)
def test_bad_parameters_are_400s_naming_the_parameter(
    served: tuple[RunningGateway, dict[str, str]], params: dict[str, str], param: str
) -> None:
    gateway, _ = served
    response = get_usage(gateway, **params)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["type"]) == (param, "invalid_request_error")


def test_no_key_or_a_wrong_one_is_a_401(served: tuple[RunningGateway, dict[str, str]]) -> None:
    gateway, _ = served
    assert httpx.get(f"{gateway.url}/v1/usage", timeout=30).status_code == 401
    assert get_usage(gateway, "sk-wrong").status_code == 401
