"""Wires settings into the long-lived services: database, stores, providers, router, service.

The server opens one `Gateway` in its lifespan; the CLI opens one per command.
"""

from __future__ import annotations

from types import TracebackType

import httpx

from .catalog import Catalog, builtin_data, load_builtin_catalog, parse_entries
from .config import FileConfig, Settings
from .db import Database
from .idempotency import IdempotencyStore
from .keys import KeyStore
from .providers import PROVIDER_CLASSES, ImageProvider
from .resilience import CircuitBreaker
from .router import Router
from .service import ImageService
from .storage import LocalResultStore
from .usage import UsageLog


def build_catalog(file_config: FileConfig) -> Catalog:
    catalog = load_builtin_catalog()
    for entry in parse_entries({"models": file_config.models}, builtin_data().get("default_parameters")):
        catalog.add(entry)
    return catalog


def build_providers(
    settings: Settings, file_config: FileConfig, client: httpx.AsyncClient
) -> dict[str, ImageProvider]:
    """Every provider whose key is set, in the environment or the config file."""
    providers: dict[str, ImageProvider] = {}
    for provider_id, cls in PROVIDER_CLASSES.items():
        conf = settings.provider_settings(provider_id, file_config)
        if not conf.api_key:
            continue
        provider = cls(api_key=conf.api_key, base_url=conf.base_url or cls.default_base_url, client=client)
        provider.timeout = conf.timeout or settings.upstream_timeout_seconds
        provider.max_response_bytes = settings.max_upstream_response_bytes
        if settings.poll_interval_seconds is not None and hasattr(provider, "poll_interval"):
            provider.poll_interval = settings.poll_interval_seconds
        providers[provider_id] = provider
    return providers


class Gateway:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = Database(settings.database_path)
        self.keys = KeyStore(self.db, settings.static_keys)
        self.store = LocalResultStore(self.db, settings.data_dir / "results", settings.result_ttl_seconds)
        self.usage = UsageLog(self.db)
        self.idempotency = IdempotencyStore(self.db, settings.idempotency_ttl_seconds)
        file_config = settings.file_config()
        self.catalog = build_catalog(file_config)
        # One pooled client for all upstream traffic; per-call timeouts are set by each request.
        self.client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=128), timeout=30.0
        )
        self.providers = build_providers(settings, file_config, self.client)
        breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_cooldown_seconds)
        self.router = Router(self.catalog, self.providers, file_config.routing, breaker)
        self.service = ImageService(settings, self.router, self.store, self.usage, self.client)

    async def __aenter__(self) -> Gateway:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.client.aclose()
        self.db.close()
