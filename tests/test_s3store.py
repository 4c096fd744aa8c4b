"""S3ResultStore against a real S3 wire API (moto's server on loopback, tests/backends.py): objects
under the prefix with their Content-Type, the index and its expiry in the database, batch purges,
the size budget, presigned URLs (their expiry and recognising them again), and a failed put that
is a 503 with nothing left behind."""

from __future__ import annotations

import base64
import secrets
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import httpx
import pytest

from imagegate import db as dbm
from imagegate.config import Settings
from imagegate.db import Database
from imagegate.errors import ConfigurationError, StorageFull, StorageUnavailable
from imagegate.imaging import ImageBytes
from imagegate.s3store import MAX_PRESIGN_SECONDS, S3ResultStore, parse_results_url
from imagegate.storage import CHUNK_BYTES, LocalResultStore, iter_body, open_result_store

from .backends import free_port
from .fakes.images import solid_png

PNG = solid_png(32, 32, (10, 200, 30))


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    yield Database(tmp_path / "index.db")


@pytest.fixture
def s3(s3_env: dict[str, str]) -> Any:
    return boto3.client("s3", endpoint_url=s3_env["IMAGEGATE_S3_ENDPOINT_URL"], region_name="us-east-1")


@pytest.fixture
def make_store(db: Database, s3_bucket: str, s3_env: dict[str, str]) -> Any:
    def make(**overrides: Any) -> S3ResultStore:
        options: dict[str, Any] = {"endpoint_url": s3_env["IMAGEGATE_S3_ENDPOINT_URL"]} | overrides
        ttl = options.pop("ttl_seconds", 3600.0)
        prefix = options.pop("prefix", "results")
        return S3ResultStore(db, s3_bucket, prefix, ttl, **options)

    return make


def keys_in(s3: Any, bucket: str) -> list[str]:
    return sorted(item["Key"] for item in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


def row_count(db: Database) -> int:
    return int(db.execute("SELECT COUNT(*) FROM results")[0][0])


def test_put_stores_an_object_under_the_prefix_and_get_reads_it(make_store: Any, s3: Any, s3_bucket: str) -> None:
    store = make_store()
    name = store.put(PNG, "image/png")
    assert name.endswith(".png")
    assert keys_in(s3, s3_bucket) == [f"results/{name}"]
    head = s3.head_object(Bucket=s3_bucket, Key=f"results/{name}")
    assert head["ContentType"] == "image/png" and head["ContentLength"] == len(PNG)
    stored = store.get(name)
    assert stored is not None and stored.path is None
    assert stored.content_type == "image/png" and stored.size == len(PNG)
    assert stored.read() == PNG


def test_base64_image_bytes_are_stored_decoded_and_no_prefix_means_the_bucket_root(
    make_store: Any, s3: Any, s3_bucket: str
) -> None:
    store = make_store(prefix="")
    name = store.put(ImageBytes(b64=base64.b64encode(PNG).decode()), "image/png")
    assert keys_in(s3, s3_bucket) == [name]
    stored = store.get(name)
    assert stored is not None and stored.read() == PNG


def test_delete_removes_the_row_and_the_object(make_store: Any, s3: Any, s3_bucket: str, db: Database) -> None:
    store = make_store()
    name = store.put(PNG, "image/png")
    store.delete(name)
    assert store.get(name) is None and row_count(db) == 0
    assert keys_in(s3, s3_bucket) == []


def test_an_expired_result_is_never_served_and_purge_deletes_its_objects(
    make_store: Any, s3: Any, s3_bucket: str
) -> None:
    store = make_store()
    names = [store.put(PNG, "image/png") for _ in range(3)]
    store.expire_at(names[:2], time.time() - 1)
    assert store.get(names[0]) is None and store.get(names[1]) is None
    assert store.get(names[2]) is not None
    assert store.purge_expired() == 2
    assert keys_in(s3, s3_bucket) == [f"results/{names[2]}"]


def test_an_object_gone_from_the_bucket_reads_as_file_not_found(make_store: Any, s3: Any, s3_bucket: str) -> None:
    store = make_store()
    name = store.put(PNG, "image/png")
    stored = store.get(name)
    s3.delete_object(Bucket=s3_bucket, Key=f"results/{name}")  # a lifecycle rule, an operator
    assert stored is not None
    with pytest.raises(FileNotFoundError):
        stored.read()


def test_the_size_budget_evicts_the_oldest_objects(make_store: Any, s3: Any, s3_bucket: str) -> None:
    store = make_store(max_bytes=2 * len(PNG))
    names = [store.put(PNG, "image/png") for _ in range(3)]
    assert store.get(names[0]) is None  # evicted to make room for the third
    assert keys_in(s3, s3_bucket) == sorted(f"results/{n}" for n in names[1:])
    assert store.stored_bytes() == 2 * len(PNG)
    with pytest.raises(StorageFull):
        store.put(PNG + PNG + PNG, "image/png")  # larger than the whole budget


def test_from_settings_has_no_budget_unless_one_is_set(db: Database, s3_bucket: str, s3_env: dict[str, str]) -> None:
    endpoint = s3_env["IMAGEGATE_S3_ENDPOINT_URL"]
    settings = Settings(results_url=f"s3://{s3_bucket}/a/b/", s3_endpoint_url=endpoint)
    store = open_result_store(settings, db)
    assert isinstance(store, S3ResultStore)
    assert (store.bucket, store.prefix, store.max_bytes, store.presign) == (s3_bucket, "a/b", 0, False)
    budgeted = open_result_store(
        Settings(results_url=f"s3://{s3_bucket}", s3_endpoint_url=endpoint, results_max_bytes=1000), db
    )
    assert isinstance(budgeted, S3ResultStore) and budgeted.max_bytes == 1000 and budgeted.prefix == ""
    # The local directory stays the default, with its disk-derived budget.
    local = open_result_store(Settings(data_dir=db.path.parent / "data"), db)
    assert isinstance(local, LocalResultStore) and local.max_bytes > 0


@pytest.mark.parametrize("url", ["http://bucket/prefix", "s3:///prefix", "s3://bucket/p?x=1", "bucket/prefix"])
def test_a_malformed_results_url_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError):
        parse_results_url(url)


def test_presigned_urls_expire_with_the_result_and_are_recognised_again(
    make_store: Any, s3_env: dict[str, str]
) -> None:
    store = make_store(presign=True, ttl_seconds=600)
    name = store.put(PNG, "image/png")
    url = store.public_url(name)
    assert url is not None and url.startswith(s3_env["IMAGEGATE_S3_ENDPOINT_URL"])
    expires = int(parse_qs(urlsplit(url).query)["X-Amz-Expires"][0])
    assert 590 <= expires <= 600  # the remaining TTL
    fetched = httpx.get(url)
    assert fetched.status_code == 200 and fetched.content == PNG
    assert fetched.headers["content-type"] == "image/png"
    assert store.name_of(url) == name
    assert store.name_of(f"http://gateway.example/v1/results/{name}") is None
    assert store.name_of(url.replace(name, "../other.png")) is None
    store.expire_at([name], time.time() - 1)
    assert store.public_url(name) is None  # an expired result gets no new URL


def test_presigned_urls_live_at_most_seven_days(make_store: Any) -> None:
    store = make_store(presign=True, ttl_seconds=30 * 86400.0)
    url = store.public_url(store.put(PNG, "image/png"))
    assert url is not None
    assert int(parse_qs(urlsplit(url).query)["X-Amz-Expires"][0]) == MAX_PRESIGN_SECONDS


def test_without_presign_the_gateway_url_is_used(make_store: Any) -> None:
    store = make_store()
    assert store.public_url(store.put(PNG, "image/png")) is None


def test_an_unreachable_endpoint_is_a_503_with_nothing_stored(make_store: Any, db: Database) -> None:
    store = make_store(endpoint_url=f"http://127.0.0.1:{free_port()}", max_bytes=10 * len(PNG))
    with pytest.raises(StorageUnavailable) as caught:
        store.put(PNG, "image/png")
    assert caught.value.status_code == 503 and caught.value.code == "storage_unavailable"
    assert row_count(db) == 0
    assert db.execute("SELECT COUNT(*) FROM result_reservations")[0][0] == 0  # the space claim released
    with pytest.raises(StorageUnavailable):
        store.check()


def test_a_missing_bucket_is_a_503(db: Database, s3_env: dict[str, str]) -> None:
    store = S3ResultStore(db, "no-such-bucket-here", "r", 60, endpoint_url=s3_env["IMAGEGATE_S3_ENDPOINT_URL"])
    with pytest.raises(StorageUnavailable):
        store.put(PNG, "image/png")
    assert row_count(db) == 0


def test_an_index_that_cannot_be_written_leaves_no_object(
    make_store: Any, s3: Any, s3_bucket: str, db: Database
) -> None:
    store = make_store()
    db.execute("DROP TABLE results_total")  # the insert trigger now fails: a broken database
    with pytest.raises(sqlite3.OperationalError):
        store.put(PNG, "image/png")
    assert keys_in(s3, s3_bucket) == []


def test_a_large_object_is_streamed_in_chunks(make_store: Any) -> None:
    store = make_store()
    data = secrets.token_bytes(3 * CHUNK_BYTES + 5)
    stored = store.get(store.put(data, "image/png"))
    assert stored is not None
    chunks = list(iter_body(stored.open()))
    assert len(chunks) == 4 and b"".join(chunks) == data


def test_two_instances_sharing_postgresql_serve_each_others_results(
    postgres_url: str, tmp_path: Path, s3_bucket: str, s3_env: dict[str, str]
) -> None:
    """The index is in the shared database: a result one instance stored is served by the other at once,
    and the budget and expiry hold across both."""
    dbm.migrate(postgres_url)
    databases = [dbm.PostgresDatabase(postgres_url, tmp_path / f"i{i}" / "imagegate.db") for i in range(2)]
    try:
        endpoint = s3_env["IMAGEGATE_S3_ENDPOINT_URL"]
        one, two = (
            S3ResultStore(d, s3_bucket, "shared", 3600, endpoint_url=endpoint, max_bytes=2 * len(PNG), presign=True)
            for d in databases
        )
        name = one.put(PNG, "image/png")
        stored = two.get(name)
        assert stored is not None and stored.read() == PNG
        url = one.public_url(name)
        assert url is not None and two.name_of(url) == name
        two.put(PNG, "image/png")
        one.put(PNG, "image/png")  # the shared budget: the first result is evicted
        assert two.get(name) is None
        assert one.stored_bytes() == two.stored_bytes() == 2 * len(PNG)
        one.expire_at([n for (n,) in databases[0].execute("SELECT token FROM results")], time.time() - 1)
        assert two.purge_expired() == 2
        assert databases[0].execute("SELECT COUNT(*) FROM results")[0][0] == 0
    finally:
        for database in databases:
            database.close()


def test_the_local_store_checks_its_directory(tmp_path: Path, db: Database) -> None:
    store = LocalResultStore(db, tmp_path / "results", 60)
    store.check()
    (tmp_path / "results").rmdir()  # a volume unmounted, a directory removed
    with pytest.raises(StorageUnavailable):
        store.check()
