"""Shared fixtures: fake upstreams on loopback, a real gateway server, the openai SDK client.

The gateway gets its settings as an object, never from the developer's environment.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from imagegate.config import Settings
from imagegate.server import create_app
from imagegate.server.serving import build_config

from .fakes.fal import FakeFal
from .fakes.gemini import FakeGemini
from .fakes.openai_upstream import FakeOpenAI
from .fakes.replicate import FakeReplicate
from .fakes.server import LoopbackServer

API_KEY = "sk-test-gateway"
PROVIDER_ENV = (
    "GEMINI_API_KEY",
    "GEMINI_BASE_URL",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "GOOGLE_API_KEY",
    "REPLICATE_API_TOKEN",
    "REPLICATE_BASE_URL",
    "FAL_KEY",
    "FAL_BASE_URL",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "VERTEX_PROJECT",
    "VERTEX_LOCATION",
    "VERTEX_BASE_URL",
    "BFL_API_KEY",
    "BFL_BASE_URL",
)


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's keys or data directory (nor exports their traces, OTEL_*)."""
    for name in list(os.environ):
        if name.startswith(("IMAGEGATE_", "OTEL_", "PROMETHEUS_")) or name in PROVIDER_ENV:
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IMAGEGATE_DATA_DIR", str(tmp_path / "data"))


@pytest.fixture(scope="session")
def fake_gemini_server() -> Iterator[FakeGemini]:
    with FakeGemini() as fake:
        yield fake


@pytest.fixture
def fake_gemini(fake_gemini_server: FakeGemini) -> Iterator[FakeGemini]:
    fake_gemini_server.reset()
    fake_gemini_server.output_mime = "image/png"
    fake_gemini_server.images_per_response = 1
    yield fake_gemini_server
    fake_gemini_server.reset()


@pytest.fixture(scope="session")
def fake_openai_server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def fake_openai(fake_openai_server: FakeOpenAI) -> Iterator[FakeOpenAI]:
    fake_openai_server.reset()
    yield fake_openai_server
    fake_openai_server.reset()


@pytest.fixture(scope="session")
def fake_replicate_server() -> Iterator[FakeReplicate]:
    with FakeReplicate() as fake:
        yield fake


@pytest.fixture
def fake_replicate(fake_replicate_server: FakeReplicate) -> Iterator[FakeReplicate]:
    fake_replicate_server.reset()
    yield fake_replicate_server
    fake_replicate_server.reset()


@pytest.fixture(scope="session")
def fake_fal_server() -> Iterator[FakeFal]:
    with FakeFal() as fake:
        yield fake


@pytest.fixture
def fake_fal(fake_fal_server: FakeFal) -> Iterator[FakeFal]:
    fake_fal_server.reset()
    yield fake_fal_server
    fake_fal_server.reset()


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "api_keys": API_KEY,
        "allow_private_urls": True,  # the tests' image servers are on loopback
        # One attempt per provider, so a scripted upstream failure shows as the client sees it;
        # the resilience tests turn retries on explicitly.
        "retry_attempts": 1,
        "poll_interval_seconds": 0.01,  # Replicate and fal are polled; the fakes answer at once
        # Tests read the usage table right after each answer; tests/test_usage_writer.py covers the
        # default background writer.
        "usage_writer": "inline",
    }
    values.update(overrides)
    return Settings(**values)


class RunningGateway:
    def __init__(self, server: LoopbackServer, settings: Settings) -> None:
        self.server = server
        self.settings = settings
        self.url = server.url
        self._clients: list[OpenAI] = []

    def client(self, api_key: str = API_KEY, **kwargs: Any) -> OpenAI:
        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", 60)
        client = OpenAI(api_key=api_key, base_url=f"{self.url}/v1", **kwargs)
        self._clients.append(client)
        return client

    def close_clients(self) -> None:
        """Close the SDK clients a test made: an open one's sockets, collected during a later
        test, would fail that test with a ResourceWarning."""
        for client in self._clients:
            client.close()
        self._clients.clear()


def start_gateway(settings: Settings) -> LoopbackServer:
    """Run the real app on a loopback port, served as `imagegate serve` serves it (the
    hardened protocol, loop and limits of imagegate.server.serving); public URL points at it."""
    server = LoopbackServer(
        create_app(settings),
        lifespan="on",
        config_factory=lambda app, **options: build_config(app, settings, **options),
    )
    server.start()
    return server


@pytest.fixture
def gateway_factory(tmp_path: Path) -> Iterator[Any]:
    """gateway_factory(**settings) -> RunningGateway; all are stopped after the test."""
    servers: list[LoopbackServer] = []
    gateways: list[RunningGateway] = []

    def factory(**overrides: Any) -> RunningGateway:
        settings = make_settings(tmp_path, **overrides)
        # The port is only known once listening: serve first, then fix the public URL.
        holder: dict[str, str] = {}
        if settings.public_url is None:
            settings.public_url = "http://placeholder"
        server = start_gateway(settings)
        servers.append(server)
        holder["url"] = server.url
        if settings.public_url == "http://placeholder":
            settings.public_url = server.url
        gateways.append(RunningGateway(server, settings))
        return gateways[-1]

    yield factory
    for gateway in gateways:
        gateway.close_clients()
    for server in servers:
        server.stop()


@pytest.fixture
def gateway(gateway_factory: Any, fake_gemini: FakeGemini) -> RunningGateway:
    """A gateway whose Gemini provider is the fake."""
    result: RunningGateway = gateway_factory(gemini_api_key=fake_gemini.api_key, gemini_base_url=fake_gemini.base_url)
    return result


@pytest.fixture
def client(gateway: RunningGateway) -> OpenAI:
    return gateway.client()


# --- the local engine: tiny diffusers checkpoints built by the tests (nothing is downloaded) ------


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """tiny_checkpoints(kind="text2image", name=None) -> the directory of a tiny random
    checkpoint in diffusers format, built once per session. The directory's name becomes the
    model id (`local/<name>`); a name containing "turbo" gets the turbo presets."""
    from .engine.tiny_models import build_tiny_pipeline

    root = tmp_path_factory.mktemp("checkpoints")
    built: dict[tuple[str, str], Path] = {}

    def get(kind: str = "text2image", name: str | None = None) -> Path:
        name = name or {"text2image": "tiny-sd", "inpaint": "tiny-inpaint", "instruct": "tiny-pix2pix"}[kind]
        if (kind, name) not in built:
            built[(kind, name)] = build_tiny_pipeline(root / name, kind=kind)
        return built[(kind, name)]

    return get


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine torch's
    spinning worker threads make each run several times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Real PostgreSQL, Redis and S3 (moto) on loopback, for the shared-backend tests (tests/backends.py).
from .backends import (  # noqa: E402,F401
    postgres_server,
    postgres_url,
    redis_server,
    redis_url,
    s3_bucket,
    s3_env,
    s3_server,
)
