"""The key cache (keys.py): no database query per request, and revocation honoured within 1 s,
even when another process (`imagegate keys revoke`) revokes the key."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from imagegate.db import Database
from imagegate.keys import KeyStore


@pytest.fixture
def stores(tmp_path: Path) -> Any:
    """The gateway's store and a second one on the same database (another process's)."""
    gateway, cli = Database(tmp_path / "db.sqlite"), Database(tmp_path / "db.sqlite")
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
