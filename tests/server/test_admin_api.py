"""The admin API (server/admin_routes.py) against a real gateway server, over httpx (the openai SDK
has no admin calls); the keys it makes are then used through the SDK, as clients would."""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from imagegate.db import Database, migrate
from imagegate.keys import KeyStore, parse_time

from ..conftest import API_KEY, RunningGateway
from ..fakes.gemini import FakeGemini

MODEL = "gemini-3-pro-image-preview"
ADMIN_KEY = "sk-test-admin"
PREFIXES = ("/v1", "/openai/v1")


@pytest.fixture
def admin_gateway(gateway_factory: Any, fake_gemini: FakeGemini) -> RunningGateway:
    gw: RunningGateway = gateway_factory(
        admin_keys=ADMIN_KEY, gemini_api_key=fake_gemini.api_key, gemini_base_url=fake_gemini.base_url
    )
    return gw


class Admin:
    """httpx calls to one gateway's admin API with one key."""

    def __init__(self, gw: RunningGateway, key: str | None = ADMIN_KEY, prefix: str = "/v1") -> None:
        self.base = f"{gw.url}{prefix}/admin/keys"
        self.headers = {"authorization": f"Bearer {key}"} if key else {}

    def call(self, method: str, path: str = "", **kwargs: Any) -> httpx.Response:
        return httpx.request(method, self.base + path, headers=self.headers, timeout=30, **kwargs)

    def create(self, **body: Any) -> dict[str, Any]:
        response = self.call("POST", json={"name": "tenant", **body})
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


@contextlib.contextmanager
def store_of(gw: RunningGateway) -> Iterator[KeyStore]:
    """The gateway's key store as another process (or instance) opens it."""
    db = Database(gw.settings.database_path)
    try:
        yield KeyStore(db)
    finally:
        db.close()


def generate(gw: RunningGateway, key: str) -> int:
    return len(gw.client(api_key=key).images.generate(model=MODEL, prompt="p", response_format="b64_json").data)


# --- who may call it ----------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", PREFIXES)
def test_no_key_or_a_wrong_key_is_401(admin_gateway: RunningGateway, prefix: str) -> None:
    for key in (None, "wrong"):
        for method in ("GET", "POST"):
            error = error_of(Admin(admin_gateway, key, prefix).call(method, json={"name": "x"}), 401)
            assert error["type"] == "authentication_error"


@pytest.mark.parametrize("prefix", PREFIXES)
def test_a_key_that_is_not_an_admin_key_is_403(admin_gateway: RunningGateway, prefix: str) -> None:
    tenant = Admin(admin_gateway).create()
    for key in (API_KEY, tenant["key"]):  # a static key and a stored one, both valid
        for method, path in (("GET", ""), ("POST", ""), ("GET", f"/{tenant['id']}"), ("DELETE", f"/{tenant['id']}")):
            error = error_of(Admin(admin_gateway, key, prefix).call(method, path, json={"name": "x"}), 403)
            assert (error["type"], error["code"]) == ("permission_error", "admin_key_required")
    assert Admin(admin_gateway).call("GET", f"/{tenant['id']}").json()["revoked_at"] is None  # nothing done


def test_a_gateway_without_keys_has_no_admin_api(gateway_factory: Any) -> None:
    gw = gateway_factory(api_keys="")
    error = error_of(Admin(gw, None).call("POST", json={"name": "x"}), 401)
    assert "IMAGEGATE_ADMIN_KEYS" in error["message"]
    with store_of(gw) as store:
        assert store.list() == []


def test_admin_keys_alone_turn_auth_on(gateway_factory: Any, fake_gemini: FakeGemini) -> None:
    gw = gateway_factory(
        api_keys="", admin_keys=ADMIN_KEY, gemini_api_key=fake_gemini.api_key, gemini_base_url=fake_gemini.base_url
    )
    assert httpx.post(gw.url + "/v1/images/generations", json={"prompt": "p"}).status_code == 401
    assert generate(gw, ADMIN_KEY) == 1  # an admin key is a key for the images API too


def test_a_stored_admin_key_may_call_it(admin_gateway: RunningGateway) -> None:
    root = Admin(admin_gateway).create(name="ops", admin=True)
    assert root["admin"] is True
    ops = Admin(admin_gateway, root["key"])
    made = ops.create(name="made-by-ops")
    assert ops.call("GET", f"/{made['id']}").status_code == 200


# --- create -------------------------------------------------------------------------------------


def test_create_answers_the_key_once_and_it_works(admin_gateway: RunningGateway) -> None:
    expires = int(time.time()) + 3600
    created = Admin(admin_gateway).create(
        name="tenant",
        models=[MODEL, "nano-banana-pro"],  # an alias is allowed
        rate_limits={"requests_per_minute": 60, "images_per_minute": 100},
        budget={"usd_per_day": 5, "usd_per_month": 100.5},
        expires_at=expires,
    )
    assert created["key"].startswith("ig-") and created["webhook_secret"].startswith("whsec_")
    assert created["object"] == "api_key" and created["id"].startswith("key_")
    assert created["prefix"] == created["key"][:10]
    assert created["models"] == [MODEL, "nano-banana-pro"]
    assert created["rate_limits"] == {"requests_per_minute": 60, "images_per_minute": 100}
    assert created["budget"] == {"usd_per_day": 5.0, "usd_per_month": 100.5}
    assert (created["expires_at"], created["revoked_at"], created["admin"]) == (expires, None, False)
    assert isinstance(created["created_at"], int) and created["updated_at"] == created["created_at"]

    shown = Admin(admin_gateway).call("GET", f"/{created['id']}").json()
    assert shown == {k: v for k, v in created.items() if k not in ("key", "webhook_secret")}
    assert created["key"] not in str(Admin(admin_gateway).call("GET").json())
    assert generate(admin_gateway, created["key"]) == 1

    with store_of(admin_gateway) as store:
        policy = store.policy(created["id"])
    assert policy is not None and policy.rate_limits.requests_per_minute == 60 and policy.budget.usd_per_day == 5.0


def test_create_with_only_a_name_is_unlimited(admin_gateway: RunningGateway) -> None:
    created = Admin(admin_gateway, prefix="/openai/v1").create(name="plain")
    assert created["models"] is None and created["expires_at"] is None and created["admin"] is False
    assert created["rate_limits"] == {"requests_per_minute": None, "images_per_minute": None}
    assert created["budget"] == {"usd_per_day": None, "usd_per_month": None}


def test_expires_at_may_be_iso_8601(admin_gateway: RunningGateway) -> None:
    created = Admin(admin_gateway).create(expires_at="2099-01-02T03:04:05Z")
    assert created["expires_at"] == int(datetime(2099, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp())


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"colour": "red"}, "colour"),
        ({"rate_limits": {"burst": 5}}, "rate_limits.burst"),
        ({"rate_limits": {"requests_per_minute": -1}}, "rate_limits.requests_per_minute"),
        ({"rate_limits": {"images_per_minute": 0}}, "rate_limits.images_per_minute"),
        ({"rate_limits": {"requests_per_minute": "5"}}, "rate_limits.requests_per_minute"),
        ({"rate_limits": {"requests_per_minute": 1.5}}, "rate_limits.requests_per_minute"),
        # Past 64 bits (SQLite's INTEGER): schemathesis found these were a 500 OverflowError.
        ({"rate_limits": {"requests_per_minute": 2**63}}, "rate_limits.requests_per_minute"),
        ({"rate_limits": {"images_per_minute": 67934977627273929162752}}, "rate_limits.images_per_minute"),
        ({"budget": {"usd_per_day": -0.5}}, "budget.usd_per_day"),
        ({"budget": {"usd_per_month": True}}, "budget.usd_per_month"),
        ({"budget": 5}, "budget"),
        ({"models": ["no-such-model"]}, "models"),
        ({"models": [MODEL, "dall-e-9"]}, "models"),
        ({"models": []}, "models"),
        ({"models": MODEL}, "models"),
        ({"expires_at": 1_000_000}, "expires_at"),  # 1970
        ({"expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"expires_at": "next week"}, "expires_at"),
        ({"expires_at": True}, "expires_at"),
        ({"expires_at": 1.6917203297840415e244}, "expires_at"),  # after year 9999: no date (schemathesis)
        ({"expires_at": 253402300800}, "expires_at"),  # 10000-01-01
        ({"admin": "yes"}, "admin"),
        ({"name": ""}, "name"),
        ({"name": "\u001d"}, "name"),  # whitespace to Python, not to pydantic: was a 500 (schemathesis)
        ({"name": " \u001f\u2028 "}, "name"),
        ({"name": None}, "name"),
        ({"name": 5}, "name"),
    ],
)
def test_create_refuses_bad_bodies_with_400_naming_the_field(
    admin_gateway: RunningGateway, body: dict[str, Any], param: str
) -> None:
    error = error_of(Admin(admin_gateway).call("POST", json={"name": "tenant", **body}), 400)
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert Admin(admin_gateway).call("GET").json()["data"] == []  # nothing was made


def test_create_without_a_name_or_a_json_body_is_400(admin_gateway: RunningGateway) -> None:
    missing = error_of(Admin(admin_gateway).call("POST", json={"admin": True}), 400)
    assert (missing["param"], missing["code"]) == ("name", "missing_required_parameter")
    assert error_of(Admin(admin_gateway).call("POST", content=b"{nope"), 400)["code"] == "invalid_json"
    assert error_of(Admin(admin_gateway).call("POST", json=["x"]), 400)["code"] == "invalid_json"
    unknown = error_of(Admin(admin_gateway).call("POST", json={"name": "x", "colour": 1}), 400)
    assert unknown["code"] == "unknown_parameter"


# --- list, get, update, delete ------------------------------------------------------------------


def test_list_shows_stored_keys_with_revoked_ones_unless_asked_not_to(admin_gateway: RunningGateway) -> None:
    admin = Admin(admin_gateway)
    kept, gone = admin.create(name="kept"), admin.create(name="gone")
    assert admin.call("DELETE", f"/{gone['id']}").status_code == 200
    listed = admin.call("GET").json()
    assert listed["object"] == "list"
    by_id = {key["id"]: key for key in listed["data"]}
    assert set(by_id) == {kept["id"], gone["id"]}  # never the static keys (configuration)
    assert by_id[kept["id"]]["revoked_at"] is None and isinstance(by_id[gone["id"]]["revoked_at"], int)
    assert "key" not in by_id[kept["id"]] and "webhook_secret" not in by_id[kept["id"]]
    hidden = admin.call("GET", params={"include_revoked": "false"}).json()["data"]
    assert [key["id"] for key in hidden] == [kept["id"]]
    assert error_of(admin.call("GET", params={"include_revoked": "maybe"}), 400)["param"] == "include_revoked"


def test_unknown_ids_are_404_key_not_found(admin_gateway: RunningGateway) -> None:
    admin = Admin(admin_gateway)
    static_id = f"static-{'0' * 12}"
    for method, key_id in (("GET", "key_nope"), ("PATCH", "key_nope"), ("DELETE", "key_nope"), ("GET", static_id)):
        error = error_of(admin.call(method, f"/{key_id}", json={"name": "x"}), 404)
        assert error["code"] == "key_not_found"


def test_patch_merges_sub_objects_and_null_clears(admin_gateway: RunningGateway) -> None:
    admin = Admin(admin_gateway)
    created = admin.create(
        models=[MODEL],
        rate_limits={"requests_per_minute": 10, "images_per_minute": 20},
        budget={"usd_per_day": 1, "usd_per_month": 2},
        expires_at=int(time.time()) + 600,
    )
    response = admin.call(
        "PATCH",
        f"/{created['id']}",
        json={"name": "renamed", "rate_limits": {"requests_per_minute": None}, "budget": {"usd_per_month": 30}},
    )
    assert response.status_code == 200, response.text
    patched = response.json()
    assert patched["name"] == "renamed"
    assert patched["rate_limits"] == {"requests_per_minute": None, "images_per_minute": 20}
    assert patched["budget"] == {"usd_per_day": 1.0, "usd_per_month": 30.0}
    assert patched["models"] == [MODEL] and patched["expires_at"] == created["expires_at"]  # not sent: kept
    assert patched["updated_at"] >= created["updated_at"]

    cleared = admin.call(
        "PATCH", f"/{created['id']}", json={"models": None, "expires_at": None, "budget": None, "admin": True}
    ).json()
    assert (cleared["models"], cleared["expires_at"], cleared["admin"]) == (None, None, True)
    assert cleared["budget"] == {"usd_per_day": None, "usd_per_month": None}
    assert cleared["rate_limits"] == {"requests_per_minute": None, "images_per_minute": 20}
    assert admin.call("GET", f"/{created['id']}").json() == cleared


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"name": None}, "name"),
        ({"admin": None}, "admin"),
        ({"name": "\u001c"}, "name"),
        ({"expires_at": 5}, "expires_at"),
        ({"rate_limits": {"requests_per_minute": -3}}, "rate_limits.requests_per_minute"),
        ({"rate_limits": {"images_per_minute": 2**64}}, "rate_limits.images_per_minute"),
        ({"expires_at": 1e300}, "expires_at"),
        ({"models": ["no-such-model"]}, "models"),
        ({"key": "ig-mine"}, "key"),  # the key itself is never set by the caller
        ({"revoked_at": None}, "revoked_at"),
    ],
)
def test_patch_refuses_bad_changes(admin_gateway: RunningGateway, body: dict[str, Any], param: str) -> None:
    admin = Admin(admin_gateway)
    created = admin.create(rate_limits={"requests_per_minute": 10})
    error = error_of(admin.call("PATCH", f"/{created['id']}", json=body), 400)
    assert error["param"] == param
    shown = admin.call("GET", f"/{created['id']}").json()
    assert shown["name"] == "tenant" and shown["rate_limits"]["requests_per_minute"] == 10


def test_delete_revokes_at_once_and_again_is_the_same(admin_gateway: RunningGateway) -> None:
    admin = Admin(admin_gateway)
    created = admin.create()
    assert generate(admin_gateway, created["key"]) == 1
    response = admin.call("DELETE", f"/{created['id']}")
    assert response.status_code == 200
    assert response.json() == {"id": created["id"], "object": "api_key", "deleted": True}
    with pytest.raises(openai.AuthenticationError, match="revoked"):
        generate(admin_gateway, created["key"])
    assert admin.call("DELETE", f"/{created['id']}").json()["deleted"] is True
    assert isinstance(admin.call("GET", f"/{created['id']}").json()["revoked_at"], int)


def test_an_expired_key_gets_401_saying_so(admin_gateway: RunningGateway) -> None:
    created = Admin(admin_gateway).create(expires_at=int(time.time()) + 3600)
    assert generate(admin_gateway, created["key"]) == 1
    # Expired a moment ago through the store (as another instance or the CLI would): no sleeping.
    with store_of(admin_gateway) as store:
        store.update(created["id"], {"expires_at": time.time() - 1})
    deadline = time.monotonic() + 2.0
    while True:
        response = httpx.post(
            f"{admin_gateway.url}/v1/images/generations",
            json={"model": MODEL, "prompt": "p"},
            headers={"authorization": f"Bearer {created['key']}"},
            timeout=30,
        )
        if response.status_code == 401 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    error = error_of(response, 401)
    assert error["code"] == "api_key_expired" and "expired" in error["message"]


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_changes_reach_another_instance_within_the_cache_time(
    gateway_factory: Any, fake_gemini: FakeGemini, database: str, request: pytest.FixtureRequest
) -> None:
    """Two gateways on one database (as two instances; SQLite in one data dir, or PostgreSQL): a
    key made, limited and revoked through one is honoured by the other within a second."""
    shared: dict[str, Any] = {"gemini_api_key": fake_gemini.api_key, "gemini_base_url": fake_gemini.base_url}
    if database == "postgresql":
        shared["database_url"] = request.getfixturevalue("postgres_url")
        migrate(shared["database_url"])
    first = gateway_factory(admin_keys=ADMIN_KEY, **shared)
    second = gateway_factory(admin_keys=ADMIN_KEY, **shared)
    created = Admin(first).create(rate_limits={"requests_per_minute": 10})
    assert Admin(second).call("GET", f"/{created['id']}").json()["name"] == "tenant"
    assert generate(second, created["key"]) == 1
    Admin(first).call("PATCH", f"/{created['id']}", json={"rate_limits": {"requests_per_minute": 20}})
    assert Admin(second).call("GET", f"/{created['id']}").json()["rate_limits"]["requests_per_minute"] == 20
    Admin(first).call("DELETE", f"/{created['id']}")
    deadline = time.monotonic() + 1.0
    with pytest.raises(openai.AuthenticationError):
        while time.monotonic() < deadline:
            generate(second, created["key"])
            time.sleep(0.05)


def test_the_readme_example_creates_a_key(admin_gateway: RunningGateway) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Admin API", 1)[1]
    body = json.loads(re.search(r"-d '(.*?)'", section, flags=re.S)[1])  # type: ignore[index]
    if parse_time(body["expires_at"]) <= time.time():  # the example's date has passed: any future one
        body["expires_at"] = int(time.time()) + 3600
    created = Admin(admin_gateway).create(**body)
    assert created["name"] == "team-a" and created["rate_limits"]["requests_per_minute"] == 60
