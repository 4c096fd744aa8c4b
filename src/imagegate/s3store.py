"""Results in any S3-compatible bucket (IMAGEGATE_RESULTS_URL=s3://bucket/prefix).

The bytes are objects, `<prefix>/<token>.<ext>` with their Content-Type; the index stays in the
database (storage.IndexedResultStore: a `results` row whose `path` is the object key), so a lookup
and its expiry are one row read, and every instance sharing the database serves a result the
moment another stored it. Expiry is the index's: an expired row is never served, and
`purge_expired` deletes its objects in batches. The size budget applies only when
IMAGEGATE_RESULTS_MAX_BYTES is set (the bucket is not our disk).

The endpoint is IMAGEGATE_S3_ENDPOINT_URL (unset: AWS); credentials and region come from boto3's
default chain (the standard `AWS_*` variables, profiles, instance roles), never read here. boto3 is
synchronous: every call is made from a worker thread (result hosting, input reading and
idempotency checks already run there; the result route opens objects in one), on one thread-safe
client whose connection pool is sized for that concurrency.

With IMAGEGATE_RESULTS_PRESIGN=true an answer's `url` is a presigned GET URL of the object,
valid for the result's remaining life (at most 7 days, SigV4's limit); `name_of` recognises such
URLs again, so an edit or an idempotent replay that sends one back finds the result.

A put that fails (the endpoint down, access denied, no such bucket) is StorageUnavailable, a 503,
with no object or row left behind.
"""

from __future__ import annotations

import logging
import math
import re
import secrets
import time
from functools import partial
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit

import boto3  # type: ignore[import-untyped]  # no stubs installed (types-boto3 is not a dependency)
from botocore.config import Config  # type: ignore[import-untyped]
from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

from .db import Database, DatabaseError
from .errors import ConfigurationError, StorageUnavailable
from .imaging import FORMAT_BY_MIME, ImageBytes
from .storage import IndexedResultStore, StoredResult, _is_full, _storage_full

if TYPE_CHECKING:
    from .config import Settings

log = logging.getLogger("imagegate")

# SigV4 presigned URLs live at most 7 days (X-Amz-Expires <= 604800):
# https://docs.aws.amazon.com/AmazonS3/latest/userguide/using-presigned-url.html
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
# DeleteObjects takes at most 1000 keys a request:
# https://docs.aws.amazon.com/AmazonS3/latest/API/API_DeleteObjects.html
DELETE_BATCH = 1000
RETRY_AFTER_SECONDS = 10.0
# Puts come from the worker threads of every request in flight; more connections than threads
# would only sit idle, fewer would queue the threads on the pool.
MAX_POOL_CONNECTIONS = 64
CLIENT_CONFIG = Config(
    max_pool_connections=MAX_POOL_CONNECTIONS,
    connect_timeout=5,
    read_timeout=60,
    # botocore's standard mode: retries throttling and transient errors, with jittered backoff.
    retries={"mode": "standard", "max_attempts": 3},
    signature_version="s3v4",
    # No CRC32 of every body unless the operation requires one: it was 0.3 ms of the 2.5 ms CPU of a
    # 1.5 MB put (bench/shared_backends.py), TLS already guards the transfer, and several
    # S3-compatible stores reject the trailing checksums botocore >= 1.36 sends by default.
    request_checksum_calculation="when_required",
    response_checksum_validation="when_required",
)
_NAME = re.compile(r"[A-Za-z0-9_\-]+\.[A-Za-z0-9]+")  # a token (urlsafe base64) and its extension
MISSING_CODES = ("NoSuchKey", "404", "NotFound")


def parse_results_url(url: str) -> tuple[str, str]:
    """`s3://bucket/prefix` -> (bucket, prefix without slashes at either end; may be empty)."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ConfigurationError(f"IMAGEGATE_RESULTS_URL must look like s3://bucket/prefix, not {url!r}.")
    return parts.netloc, parts.path.strip("/")


def _unavailable(action: str, exc: Exception) -> StorageUnavailable:
    log.error("result store: S3 %s failed (%s); answering 503 storage_unavailable", action, exc)
    return StorageUnavailable(
        "The gateway cannot reach its result storage now. Try again later, or ask for response_format=b64_json.",
        retry_after=RETRY_AFTER_SECONDS,
    )


def _is_missing(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code")) in MISSING_CODES


class S3ResultStore(IndexedResultStore):
    def __init__(
        self,
        db: Database,
        bucket: str,
        prefix: str,
        ttl_seconds: float,
        *,
        endpoint_url: str | None = None,
        max_bytes: int = 0,
        presign: bool = False,
        client: Any = None,
    ) -> None:
        """`max_bytes`: the size budget, 0 for none. `client`: a boto3 S3 client (default: one made
        from the endpoint and boto3's default credential chain)."""
        super().__init__(db, ttl_seconds, max_bytes)
        self.bucket = bucket
        self.prefix = prefix
        self.presign = presign
        self.client = client or boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=CLIENT_CONFIG)
        self._object_url_base = self._object_url_of("x")[:-1]  # ".../<prefix>/": what name_of recognises

    @classmethod
    def from_settings(cls, settings: Settings, db: Database) -> S3ResultStore:
        assert settings.results_url is not None
        bucket, prefix = parse_results_url(settings.results_url)
        return cls(
            db,
            bucket,
            prefix,
            settings.result_ttl_seconds,
            endpoint_url=settings.s3_endpoint_url,
            max_bytes=settings.results_max_bytes or 0,  # unset: no budget (the local default is the disk's)
            presign=settings.results_presign,
        )

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def put(self, data: bytes | ImageBytes, content_type: str) -> str:
        """Upload the object, then index it; returns the result's name (token plus extension)."""
        name = f"{secrets.token_urlsafe(32)}.{FORMAT_BY_MIME.get(content_type, 'bin')}"
        key = self.key(name)
        size = data.size() if isinstance(data, ImageBytes) else len(data)
        claim = self._claim(size)
        try:
            body = data.data if isinstance(data, ImageBytes) else data  # broken base64 raises here, as locally
            # A PUT is atomic: on any failure no object exists.
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=content_type)
        except BaseException as exc:
            self._release(claim)
            if isinstance(exc, BotoCoreError | ClientError):
                raise _unavailable("put", exc) from exc
            raise
        try:
            self._index(name, key, content_type, size, claim)
        except BaseException as exc:
            self._remove([key])
            self._release(claim)
            if isinstance(exc, DatabaseError) and _is_full(exc):
                raise _storage_full("the database's disk is full") from exc
            raise
        return name

    def _open(self, key: str) -> IO[bytes]:
        try:
            body: IO[bytes] = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except ClientError as exc:
            if _is_missing(exc):
                raise FileNotFoundError(key) from exc
            raise _unavailable("get", exc) from exc
        except BotoCoreError as exc:
            raise _unavailable("get", exc) from exc
        return body

    def _result(self, path: str, content_type: str, size: int) -> StoredResult | None:
        # No HEAD: the row says it is live; an object gone meanwhile is FileNotFoundError on open.
        return StoredResult(None, content_type, size, opener=partial(self._open, path))

    def _remove(self, paths: list[str]) -> None:
        """Batch deletes; a failure only leaves objects behind (logged), never fails the caller."""
        for start in range(0, len(paths), DELETE_BATCH):
            batch = [{"Key": key} for key in paths[start : start + DELETE_BATCH]]
            try:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            except (BotoCoreError, ClientError) as exc:
                log.warning(
                    "result store: could not delete %d S3 objects (%s); they stay in the bucket", len(batch), exc
                )

    def check(self) -> None:
        """StorageUnavailable unless the bucket answers (for a readiness check)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise _unavailable("head_bucket", exc) from exc

    # -- presigned URLs --

    def _object_url_of(self, name: str) -> str:
        """The object's URL as presigned URLs spell it, without the query (the signature)."""
        url = self.client.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": self.key(name)})
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}{parts.path}"

    def public_url(self, name: str) -> str | None:
        """With presigning on, a presigned GET URL valid for the result's remaining life (at most
        SigV4's 7 days); None otherwise, or when the result is gone."""
        if not self.presign:
            return None
        rows = self.db.execute("SELECT expires_at FROM results WHERE token = ?", (name,))
        remaining = float(rows[0][0]) - time.time() if rows else 0.0
        if remaining <= 0:
            return None
        url: str = self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self.key(name)},
            ExpiresIn=min(math.ceil(remaining), MAX_PRESIGN_SECONDS),  # whole seconds, at least 1
        )
        return url

    def name_of(self, url: str) -> str | None:
        """The result name when `url` is one of this store's presigned URLs (its object URL plus a query)."""
        try:
            parts = urlsplit(url)
        except ValueError:
            return None
        bare = f"{parts.scheme}://{parts.netloc}{parts.path}"
        if not bare.startswith(self._object_url_base):
            return None
        name = bare[len(self._object_url_base) :]
        return name if _NAME.fullmatch(name) else None
