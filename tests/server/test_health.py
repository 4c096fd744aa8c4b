"""`/health/live` and `/health/ready` on a real gateway; Redis is a real server on loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from ..conftest import RunningGateway
from .serve_process import free_port


def test_live_answers_while_the_process_serves(gateway: RunningGateway) -> None:
    response = httpx.get(f"{gateway.url}/health/live")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})
    assert httpx.get(f"{gateway.url}/health").json()["providers"] == ["gemini"]  # the old route stays


def test_ready_checks_the_database_and_the_result_store(gateway: RunningGateway) -> None:
    response = httpx.get(f"{gateway.url}/health/ready")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "results": "ok"}}  # no Redis set


def test_ready_with_redis_up(gateway_factory: Any, redis_url: str) -> None:
    gateway = gateway_factory(redis_url=redis_url)
    response = httpx.get(f"{gateway.url}/health/ready")
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "redis": "ok", "results": "ok"}


def test_not_ready_when_redis_does_not_answer(gateway_factory: Any) -> None:
    gateway = gateway_factory(redis_url=f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    response = httpx.get(f"{gateway.url}/health/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"] == "ok" and body["checks"]["results"] == "ok"
    assert body["checks"]["redis"].startswith("error: ")


def test_not_ready_when_the_result_directory_is_gone(gateway: RunningGateway, tmp_path: Path) -> None:
    results = gateway.settings.data_dir / "results"
    results.rename(tmp_path / "moved-away")
    try:
        response = httpx.get(f"{gateway.url}/health/ready")
        assert response.status_code == 503
        assert response.json()["checks"]["results"].startswith("error: ")
    finally:
        (tmp_path / "moved-away").rename(results)


def test_ready_needs_no_api_key(gateway: RunningGateway) -> None:
    assert httpx.get(f"{gateway.url}/v1/models").status_code == 401  # the API does
    assert httpx.get(f"{gateway.url}/health/ready").status_code == 200
