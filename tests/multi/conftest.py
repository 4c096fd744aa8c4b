"""The `cluster` fixture: two gateway instances over real PostgreSQL, Redis and S3 (cluster.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ..fakes.gemini import FakeGemini
from .cluster import Cluster, cluster_env, running_cluster


@pytest.fixture
def cluster(
    tmp_path: Path, postgres_url: str, redis_url: str, s3_bucket: str, s3_env: dict[str, str], fake_gemini: FakeGemini
) -> Iterator[Cluster]:
    env = cluster_env(postgres_url, redis_url, s3_env, s3_bucket, fake_gemini.api_key, fake_gemini.base_url)
    with running_cluster(tmp_path, env, postgres_url) as running:
        yield running
