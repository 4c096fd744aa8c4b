"""The key store (keys.py): policies kept with each key, and the cache: no database query per request,
revocation and policy changes honoured within 1 s, even when another process (`imagegate keys
revoke`) or instance makes them."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from imagegate.db import Database, PostgresDatabase, migrate
from imagegate.errors import AuthenticationFailed
from imagegate.keys import POLICY_COLUMNS, KeyStore, hash_key, parse_time
from imagegate.policy import Budget, KeyPolicy, RateLimits


@pytest.fixture(params=["sqlite", "postgresql"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """The gateway's store and a second one on the same database (another process's, or another
    instance's): SQLite in the data dir, or a real PostgreSQL server migrated by `imagegate migrate`."""
    if request.param == "sqlite":
        gateway, cli = Database(tmp_path / "db.sqlite"), Database(tmp_path / "db.sqlite")
    else:
        url: str = request.getfixturevalue("postgres_url")
        migrate(url)
        gateway, cli = PostgresDatabase(url, tmp_path / "a" / "db"), PostgresDatabase(url, tmp_path / "b" / "db")
    yield KeyStore(gateway), KeyStore(cli)
    gateway.close()
    cli.close()


def counting(store: KeyStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    queries: list[str] = []
    execute = store.db.execute

    def counted(sql: str, *args: Any) -> Any:
        queries.append(sql)
        return execute(sql, *args)

    monkeypatch.setattr(store.db, "execute", counted)
    return queries


def test_repeated_lookups_cost_no_query(stores: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    gateway, cli = stores
    record, plaintext = cli.create("ci")
    queries = counting(gateway, monkeypatch)
    for _ in range(50):
        assert gateway.auth_required()
        assert gateway.verify(plaintext) == record.id
        assert gateway.verify("wrong") is None
    assert len(queries) == 3  # auth_required once, each key once


def wait_until(condition: Any, limit: float) -> float:
    """Seconds until `condition()` holds, polling every 20 ms; fails after `limit`."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < limit, "not within the limit"
        time.sleep(0.02)
    return time.monotonic() - started


def test_a_key_revoked_by_another_process_stops_working_within_a_second(stores: Any) -> None:
    gateway, cli = stores
    record, plaintext = cli.create("ci")
    assert gateway.verify(plaintext) == record.id
    assert cli.revoke(record.id)
    wait_until(lambda: gateway.verify(plaintext) is None, 1.0)


def test_revoking_through_the_gateways_own_store_is_immediate(stores: Any) -> None:
    gateway, _ = stores
    record, plaintext = gateway.create("ci")
    assert gateway.verify(plaintext) == record.id
    assert gateway.revoke(record.id)
    assert gateway.verify(plaintext) is None


def test_a_key_created_elsewhere_works_within_a_second(stores: Any) -> None:
    gateway, cli = stores
    assert not gateway.auth_required()
    record, plaintext = cli.create("late")
    wait_until(gateway.auth_required, 1.0)
    wait_until(lambda: gateway.verify(plaintext) == record.id, 1.0)


def test_a_flood_of_wrong_keys_does_not_grow_the_cache(stores: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    gateway, _ = stores
    monkeypatch.setattr("imagegate.keys.MAX_CACHED", 100)
    for index in range(1000):
        assert gateway.verify(f"wrong-{index}") is None
    assert len(gateway._cache) <= 100


# --- policies: stored with each key, served cached -----------------------------------------------


def test_a_key_keeps_its_policy(stores: Any) -> None:
    gateway, cli = stores
    expires = time.time() + 3600
    record, plaintext = cli.create(
        "tenant",
        models=["gemini-3-pro-image-preview", "nano-banana-pro"],
        rate_limits=RateLimits(requests_per_minute=60, images_per_minute=120),
        budget=Budget(usd_per_day=5.0, usd_per_month=100.0),
        expires_at=expires,
        admin=True,
    )
    key_id = gateway.verify(plaintext)
    assert key_id == record.id
    assert gateway.policy(key_id) == KeyPolicy(
        key_id=record.id,
        name="tenant",
        models=("gemini-3-pro-image-preview", "nano-banana-pro"),
        rate_limits=RateLimits(60, 120),
        budget=Budget(5.0, 100.0),
        expires_at=expires,
        admin=True,
    )
    assert gateway.get(record.id) == record
    assert [r.id for r in gateway.list()] == [record.id]


def test_a_key_made_without_a_policy_is_unlimited(stores: Any) -> None:
    gateway, _ = stores
    record, _ = gateway.create("plain")
    assert gateway.policy(record.id) == KeyPolicy.unlimited(record.id, "plain")
    assert record.updated_at == record.created_at


def test_update_changes_only_the_fields_given_and_none_clears(stores: Any) -> None:
    gateway, _ = stores
    record, _ = gateway.create("t", models=["gpt-image-1"], rate_limits=RateLimits(10, 20), budget=Budget(1.0, 2.0))
    updated = gateway.update(record.id, {"requests_per_minute": None, "usd_per_month": 50, "name": "renamed"})
    assert updated is not None
    assert updated.name == "renamed"
    assert updated.rate_limits == RateLimits(None, 20)
    assert updated.budget == Budget(1.0, 50.0)
    assert updated.models == ("gpt-image-1",)
    assert updated.updated_at is not None and updated.updated_at >= record.created_at
    cleared = gateway.update(record.id, {"models": None})
    assert cleared is not None and cleared.models is None
    assert gateway.update("key_doesnotexist", {"name": "x"}) is None


@pytest.mark.parametrize(
    "changes",
    [
        {"requests_per_minute": -1},
        {"requests_per_minute": 0},
        {"images_per_minute": 2.5},
        {"usd_per_day": -0.01},
        {"usd_per_month": float("inf")},
        {"models": []},
        {"name": " "},
        {"expires_at": "tomorrow"},
        {"key_hash": "x"},  # not a policy field
        {"revoked_at": None},
    ],
)
def test_update_refuses_values_no_key_may_have(stores: Any, changes: dict[str, Any]) -> None:
    gateway, _ = stores
    record, _ = gateway.create("t", rate_limits=RateLimits(5, 5))
    with pytest.raises(ValueError):
        gateway.update(record.id, changes)
    assert gateway.get(record.id) == record


def test_create_refuses_a_negative_limit(stores: Any) -> None:
    gateway, _ = stores
    with pytest.raises(ValueError):
        gateway.create("t", budget=Budget(usd_per_day=-1))
    assert gateway.list() == []


def test_the_policy_of_a_verified_key_costs_no_query(stores: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    gateway, cli = stores
    record, plaintext = cli.create("t", rate_limits=RateLimits(requests_per_minute=3))
    queries = counting(gateway, monkeypatch)
    for _ in range(50):
        key_id = gateway.verify(plaintext)
        assert key_id is not None
        policy = gateway.policy(key_id)
        assert policy is not None and policy.rate_limits.requests_per_minute == 3
    assert len(queries) == 1  # the lookup by hash filled the cache by id too


def test_a_policy_changed_by_another_instance_is_seen_within_a_second(stores: Any) -> None:
    gateway, cli = stores
    record, plaintext = cli.create("t", rate_limits=RateLimits(requests_per_minute=3))
    assert gateway.verify(plaintext) == record.id
    cli.update(record.id, {"requests_per_minute": 7, "models": ["gpt-image-1"]})

    def changed() -> bool:
        policy = gateway.policy(record.id)
        return policy is not None and policy.rate_limits.requests_per_minute == 7 and policy.models == ("gpt-image-1",)

    wait_until(changed, 1.0)


def test_a_key_revoked_elsewhere_loses_its_policy_within_a_second(stores: Any) -> None:
    gateway, cli = stores
    record, _ = cli.create("t")
    assert gateway.policy(record.id) is not None
    assert cli.revoke(record.id)
    wait_until(lambda: gateway.policy(record.id) is None, 1.0)
    assert gateway.policy("key_doesnotexist") is None


def test_an_expired_key_no_longer_verifies(stores: Any) -> None:
    gateway, cli = stores
    record, plaintext = cli.create("t", expires_at=time.time() + 3600)
    assert gateway.authenticate(plaintext) == record.id
    # Expired a moment ago (set through the store: no sleeping until a real expiry).
    past = time.time() - 1
    expired = cli.update(record.id, {"expires_at": past})
    assert expired is not None and expired.status == "expired" and not expired.active
    wait_until(lambda: gateway.verify(plaintext) is None, 1.0)
    with pytest.raises(AuthenticationFailed) as caught:
        gateway.authenticate(plaintext)
    assert caught.value.code == "api_key_expired"
    assert "expired" in caught.value.message
    assert gateway.policy(record.id) is None
    # Extending it makes it work again.
    cli.update(record.id, {"expires_at": None})
    wait_until(lambda: gateway.verify(plaintext) == record.id, 1.0)


def test_authenticate_says_why_a_key_is_refused(stores: Any) -> None:
    gateway, _ = stores
    record, plaintext = gateway.create("t")
    gateway.revoke(record.id)
    with pytest.raises(AuthenticationFailed, match="revoked") as revoked:
        gateway.authenticate(plaintext)
    assert revoked.value.code == "invalid_api_key"
    with pytest.raises(AuthenticationFailed, match="Incorrect") as wrong:
        gateway.authenticate("ig-wrong")
    assert wrong.value.code == "invalid_api_key"


def test_list_can_leave_out_revoked_keys(stores: Any) -> None:
    gateway, _ = stores
    kept, _ = gateway.create("kept")
    gone, _ = gateway.create("gone")
    gateway.revoke(gone.id)
    listed = {r.id: r for r in gateway.list()}
    assert set(listed) == {kept.id, gone.id}
    assert listed[gone.id].revoked_at is not None and listed[gone.id].status == "revoked"
    assert [r.id for r in gateway.list(include_revoked=False)] == [kept.id]


def test_static_keys_are_unlimited_and_static_admin_keys_are_admins(tmp_path: Path) -> None:
    db = Database(tmp_path / "db.sqlite")
    try:
        store = KeyStore(db, ["plain", "both"], ["root", "both"])
        assert store.auth_required()
        plain, root, both = store.verify("plain"), store.verify("root"), store.verify("both")
        assert plain == f"static-{hash_key('plain')[:12]}"
        assert root == f"static-admin-{hash_key('root')[:12]}"
        assert both == f"static-admin-{hash_key('both')[:12]}"  # named in both: an admin
        assert store.policy(plain) == KeyPolicy.unlimited(plain, "static")
        assert store.policy(root) == KeyPolicy.unlimited(root, "static admin", admin=True)
        assert store.verify("other") is None
        assert store.list() == []  # configuration, not stored keys
    finally:
        db.close()


def test_admin_keys_alone_turn_auth_on(tmp_path: Path) -> None:
    db = Database(tmp_path / "db.sqlite")
    try:
        assert not KeyStore(db).auth_required()
        assert KeyStore(db, admin_keys=["root"]).auth_required()
    finally:
        db.close()


def test_keys_made_before_policies_read_as_unlimited(tmp_path: Path) -> None:
    """A database from before this change gets the policy columns at open (ADDED_COLUMNS)."""
    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE api_keys (id TEXT PRIMARY KEY, name TEXT NOT NULL, prefix TEXT NOT NULL, "
        "key_hash TEXT NOT NULL UNIQUE, created_at REAL NOT NULL, revoked_at REAL)"
    )
    old.execute("INSERT INTO api_keys VALUES ('key_old', 'old', 'ig-abc', ?, 1000.0, NULL)", (hash_key("ig-abc"),))
    old.commit()
    old.close()
    db = Database(path)
    try:
        store = KeyStore(db)
        assert store.verify("ig-abc") == "key_old"
        assert store.policy("key_old") == KeyPolicy.unlimited("key_old", "old")
        record = store.get("key_old")
        assert record is not None and record.updated_at == 1000.0 and not record.admin
    finally:
        db.close()


def test_the_key_object_never_shows_the_key(stores: Any) -> None:
    gateway, _ = stores
    record, plaintext = gateway.create("t", rate_limits=RateLimits(requests_per_minute=5), expires_at=2e9)
    body = record.to_object()
    assert body["expires_at"] == 2_000_000_000 and isinstance(body["created_at"], int)
    assert body["rate_limits"] == {"requests_per_minute": 5, "images_per_minute": None}
    assert body["budget"] == {"usd_per_day": None, "usd_per_month": None}
    assert plaintext not in json.dumps(body) and hash_key(plaintext) not in json.dumps(body)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1700000000", 1_700_000_000.0),
        (1_700_000_000, 1_700_000_000.0),
        ("2030-01-02T03:04:05Z", 1_893_553_445.0),
        ("2030-01-02T03:04:05", 1_893_553_445.0),  # no zone: UTC
        ("2030-01-02T05:04:05+02:00", 1_893_553_445.0),
        ("2030-01-02", 1_893_542_400.0),
    ],
)
def test_parse_time_reads_unix_seconds_and_iso_8601(text: str | int, seconds: float) -> None:
    assert parse_time(text) == seconds


@pytest.mark.parametrize("text", ["soon", "", "nan", "inf", "-5", True])
def test_parse_time_refuses_what_is_not_a_time(text: Any) -> None:
    with pytest.raises(ValueError):
        parse_time(text)


# --- PostgreSQL: migration 0003 gives api_keys the same columns ADDED_COLUMNS gives SQLite --------


def test_the_migrations_give_postgresql_the_policy_columns_sqlite_gets(postgres_url: str, tmp_path: Path) -> None:
    migrate(postgres_url)
    pg, lite = PostgresDatabase(postgres_url, tmp_path / "pg" / "db"), Database(tmp_path / "db.sqlite")
    try:
        query = "SELECT column_name FROM information_schema.columns WHERE table_name = 'api_keys'"
        on_postgres = {str(name) for (name, *_) in pg.execute(query)}
        on_sqlite = {str(row[1]) for row in lite.execute("PRAGMA table_info(api_keys)")}
    finally:
        pg.close()
        lite.close()
    assert set(POLICY_COLUMNS) | {"updated_at"} <= on_sqlite
    assert on_postgres == on_sqlite
