"""Create the results bucket named by IMAGEGATE_RESULTS_URL, once the S3 endpoint answers.

compose.yaml runs this as a one-shot service (in the imagegate image, which has boto3) before
the gateways start: moto's server, the compose file's S3 stand-in, starts with no bucket.
It is idempotent (an existing bucket of ours is success) and waits for the endpoint, so it needs
no health check on the S3 service. With a real S3 store, make the bucket with your usual tooling
instead (lifecycle rules, encryption and access policy are yours to choose).

Credentials and region come from the standard AWS_* variables (boto3's default chain), the
endpoint from IMAGEGATE_S3_ENDPOINT_URL, as for the gateway itself.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.exceptions import ClientError, EndpointConnectionError

WAIT_SECONDS = 60.0
# Errors that mean "the bucket is there already"; any other error is real.
EXISTS_CODES = {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}


def bucket_of(results_url: str) -> str:
    """`s3://bucket/prefix` -> `bucket`; ValueError for anything else."""
    parts = urlsplit(results_url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"IMAGEGATE_RESULTS_URL must look like s3://bucket/prefix, not {results_url!r}")
    return parts.netloc


def bucket_exists(client: Any, bucket: str) -> bool:
    """HEAD the bucket: asking first, because S3 in us-east-1 (and moto) answers a second
    CreateBucket by its owner with a plain 200."""
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket", "NotFound"):
            return False
        raise
    return True


def create_bucket(bucket: str, endpoint_url: str | None, wait_seconds: float = WAIT_SECONDS) -> bool:
    """Make `bucket` (True) or find it made (False), retrying while the endpoint is not up yet."""
    client = boto3.client("s3", endpoint_url=endpoint_url)
    region = client.meta.region_name
    # us-east-1 is S3's default location and must not be named; every other region must be.
    config = {} if region in (None, "us-east-1") else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            if bucket_exists(client, bucket):
                return False
            client.create_bucket(Bucket=bucket, **config)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in EXISTS_CODES:
                return False
            raise
        except EndpointConnectionError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(1.0)


def main() -> int:
    bucket = bucket_of(os.environ.get("IMAGEGATE_RESULTS_URL", ""))
    created = create_bucket(bucket, os.environ.get("IMAGEGATE_S3_ENDPOINT_URL") or None)
    print(f"bucket {bucket}: {'created' if created else 'already there'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
