"""Wires settings into the long-lived services: database, stores, providers, router, service.

The server opens one `Gateway` in its lifespan; the CLI opens one per command.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from types import TracebackType

import httpx
from pydantic import ValidationError

from . import readiness
from .catalog import (
    Catalog,
    add_binding,
    builtin_data,
    check,
    load_builtin_catalog,
    override_binding,
    parse_entries,
    with_binding_defaults,
)
from .config import FileConfig, Settings
from .db import open_database
from .engine.describe import (
    LOCAL_MODEL_ENV,
    Checkpoint,
    LocalModelError,
    catalog_entry,
    local_model_id,
    read_checkpoint,
)
from .errors import ConfigurationError
from .fetch import ImageFetcher
from .idempotency import IdempotencyStore
from .jobs import Job, JobRunner, JobStore, JobUsage
from .jobsignals import open_job_signals
from .keys import STATIC_ID_PREFIX, KeyStore
from .limits import Limits, LocalLimitState, RedisLimitState, SharedBreaker, ledger_seed, redis_client, upstream_budgets
from .plugins import ProviderRegistry, catalog_contributions, configured_providers, load_registry
from .policy import KeyPolicy
from .providers import ImageProvider, aio
from .resilience import CircuitBreaker
from .router import Router
from .service import ImageService
from .storage import open_result_store
from .usage import UsageLog
from .webhooks import WebhookSender, event_body


def read_local_models(file_config: FileConfig, local_model: str | None = None) -> list[Checkpoint]:
    """The config file's `local_models` and IMAGEGATE_LOCAL_MODEL, each read once, except those the
    file already describes with a full `models` entry of the same id."""
    described = {m.get("id") for m in file_config.models}
    sources = dict.fromkeys([*file_config.local_models, *([local_model] if local_model else [])])
    return [read_checkpoint(s) for s in sources if local_model_id(s) not in described]


def build_catalog(
    file_config: FileConfig, local_checkpoints: Iterable[Checkpoint] = (), registry: ProviderRegistry | None = None
) -> Catalog:
    """Built-in models, then what provider plugins bring (models, and bindings to models already
    there), then the config file's, then one entry per local checkpoint; then the file's
    `model_overrides` (upstream ids, prices) on top."""
    catalog = load_builtin_catalog()
    add_plugin_catalogs(catalog, registry or load_registry())
    raw_entries = [*file_config.models, *(catalog_entry(c) for c in local_checkpoints)]
    try:
        entries = parse_entries({"models": raw_entries}, builtin_data().get("default_parameters"))
    except ValidationError as exc:  # one clear line at startup, not a traceback
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigurationError(f"A model of the config file is invalid: {problems}") from exc
    for entry in entries:
        catalog.add(entry)
    for model_id, override in file_config.model_overrides.items():
        for provider_id, changes in override.providers.items():
            override_binding(catalog, model_id, provider_id, changes.model_dump(exclude_none=True))
    return catalog


def add_plugin_catalogs(catalog: Catalog, registry: ProviderRegistry) -> None:
    """Each provider's catalog data: its models, and its bindings appended to existing models
    (after their own providers, so it comes last in their default order)."""
    defaults = builtin_data().get("default_parameters")
    for spec, data in catalog_contributions(registry):
        try:
            binding_defaults = data.get("binding_defaults", {})  # as in data/models.json
            for entry in parse_entries(
                {"models": data.get("models", []), "binding_defaults": binding_defaults}, defaults
            ):
                catalog.add(entry)
            for model_id, raw_binding in data.get("bindings", {}).items():
                add_binding(
                    catalog, model_id, spec.id, with_binding_defaults(raw_binding, binding_defaults.get(spec.id))
                )
        except (ValidationError, ConfigurationError) as exc:
            raise ConfigurationError(f"Provider {spec.id} (plugin {spec.plugin}): bad catalog data: {exc}") from exc


def local_sources(catalog: Catalog) -> list[str]:
    """The weights every local model of the catalog is served from."""
    return list(dict.fromkeys(m.providers["local"].upstream_model for m in catalog if "local" in m.providers))


def build_local_provider(settings: Settings, sources: list[str], checkpoints: list[Checkpoint]) -> ImageProvider:
    try:
        from .providers.local import LocalEngineSettings, LocalProvider
    except ImportError as exc:  # torch or diffusers missing
        raise LocalModelError(
            f"A local model is configured but the local engine cannot be imported ({exc}). "
            "Install it with: pip install -e '.[local]'"
        ) from exc
    return LocalProvider(
        sources,
        LocalEngineSettings(
            device=settings.local_device,
            dtype=settings.local_dtype,
            max_batch_images=settings.local_max_batch_images,
            max_queued_images=settings.local_max_queued_images,
        ),
        checkpoints={c.source: c for c in checkpoints},
    )


log = logging.getLogger("imagegate")


class Gateway:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # The catalog and the local engine first: a local model that cannot be read, or an engine
        # that cannot be imported, fails before anything is opened.
        file_config = settings.file_config()
        checkpoints = read_local_models(file_config, settings.local_model)
        self.catalog = build_catalog(file_config, checkpoints)
        check(self.catalog, known_providers=[*(s.id for s in load_registry()), "local"])  # stops a bad start
        sources = local_sources(self.catalog)
        local = build_local_provider(settings, sources, checkpoints) if sources else None
        self.db = open_database(settings)
        self.keys = KeyStore(self.db, settings.static_keys, settings.static_admin_keys)
        self.store = open_result_store(settings, self.db)  # the local directory, or S3 (IMAGEGATE_RESULTS_URL)
        self.usage = UsageLog(self.db, background=settings.usage_writer == "background")
        self.idempotency = IdempotencyStore(self.db, settings.idempotency_ttl_seconds)
        # One pooled client for all upstream traffic; per-call timeouts are set by each request.
        self.client = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=128), timeout=30.0
        )
        # Image URLs that users send get their own pool, behind the SSRF guard: a tenant's slow
        # URLs cannot take the connections the upstream calls need.
        self.fetcher = ImageFetcher(
            allow_private=settings.allow_private_urls,
            timeout_seconds=settings.fetch_timeout_seconds,
            concurrency_per_key=settings.fetch_concurrency_per_key,
        )
        # Job webhooks, behind the same SSRF guard; started with the server (server/app.py).
        self.webhooks = WebhookSender(
            self.db,
            allow_private=settings.allow_private_urls,
            timeout_seconds=settings.webhook_timeout_seconds,
            max_age_seconds=settings.webhook_max_age_seconds,
            base_delay_seconds=settings.webhook_base_delay_seconds,
        )
        # Upstream calls on it go over aiohttp (a third of httpx's CPU on 2 MB answers; providers/aio.py).
        self.aiohttp = aio.attach(self.client, max_connections=512) if settings.upstream_client == "aiohttp" else None
        self.providers = configured_providers(settings, file_config, self.client)
        if local is not None:
            self.providers["local"] = local
        # Rate limits, budgets, upstream budgets and the breaker: shared through Redis when
        # IMAGEGATE_REDIS_URL is set, else in this process (limits.py).
        self.redis = redis_client(settings.redis_url) if settings.redis_url else None
        self.limits = Limits(
            RedisLimitState(self.redis) if self.redis is not None else LocalLimitState(),
            ledger_seed(self.db),
            upstream_budgets(file_config.providers),
        )
        self.breaker = (
            SharedBreaker(settings.breaker_failures, settings.breaker_cooldown_seconds, self.redis, self.providers)
            if self.redis is not None
            else CircuitBreaker(settings.breaker_failures, settings.breaker_cooldown_seconds)
        )
        self.router = Router(self.catalog, self.providers, file_config.routing, self.breaker)
        # The service records usage through JobUsage: a re-run job is not counted twice (jobs.py).
        self.job_usage = JobUsage(self.usage)
        self.service = ImageService(
            settings,
            self.router,
            self.store,
            self.job_usage,
            self.fetcher,
            default_model=self._default_model(),
            limits=self.limits,
            policy_for=self.key_policy,
        )
        # Async jobs: run by the server (its lifespan starts and stops the runner), not by the CLI.
        # All in the database; `<data dir>/jobs` only holds an older version's job files.
        self.jobs = JobRunner(
            JobStore(self.db, settings.data_dir / "jobs"),
            self.service,
            self.store,
            self.job_usage,
            settings,
            on_finished=self.job_finished,
            signals=open_job_signals(settings.redis_url),  # wake-ups between instances via Redis pub/sub
        )

    def job_finished(self, job: Job) -> None:
        """Called once on the event loop when an async job reaches a final status (succeeded,
        failed, cancelled), with the job as stored: its webhook, if it asked for one, is recorded
        and delivered in the background (signed with the secret of the key that made it, looked
        up now: a key revoked meanwhile gets none). It must not block."""
        if not job.webhook_url:
            return
        secret = self.webhook_secret(job.key_id)
        if secret is None:
            log.warning("job %s: no webhook secret for its key any more; webhook not sent", job.id)
            return
        self.webhooks.enqueue_soon(job.id, job.webhook_url, secret, event_body(job.to_object()))

    def key_policy(self, key_id: str | None) -> KeyPolicy | None:
        """What a caller's key may do (None: a gateway without keys, or a key without limits)."""
        return self.keys.policy(key_id) if key_id is not None else None

    def _default_model(self) -> str | None:
        """The first model some configured provider serves (a local model when there is no
        cloud key), else the catalog's first."""
        return next((m.id for m in self.catalog if self.router.available_providers(m)), None)

    def webhook_secret(self, key_id: str | None) -> str | None:
        """The secret that signs a caller's webhooks: a stored key's own, else IMAGEGATE_WEBHOOK_SECRET
        (static keys, and every caller of a gateway without keys); None: no webhooks for it."""
        if key_id is None or key_id.startswith(STATIC_ID_PREFIX):
            return self.settings.webhook_secret
        return self.keys.webhook_secret(key_id)

    def notice(self) -> str | None:
        """What an operator must know before the gateway can serve anything (None when it can)."""
        if self.providers:
            return None
        clouds = ", ".join(spec.enabling_variables() for spec in load_registry())
        return (
            f"No provider is configured, so every image request fails. Set a cloud key ({clouds}) or "
            f"serve a local model with {LOCAL_MODEL_ENV}=<diffusers directory or hub id> "
            "(after pip install -e '.[local]')."
        )

    async def readiness(self) -> dict[str, str]:
        """Each dependency's answer, "ok" or "error: ..." (readiness.CHECKS; /health/ready)."""
        return await readiness.run(self)

    async def start(self) -> None:
        """Server start: providers get ready (the local engine loads its weights), and the shared
        breaker starts following the other instances."""
        if isinstance(self.breaker, SharedBreaker):
            self.breaker.start()
        for provider in self.providers.values():
            await provider.start()

    async def __aenter__(self) -> Gateway:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for provider in self.providers.values():
            await provider.aclose()
        await self.client.aclose()
        if self.aiohttp is not None:
            await self.aiohttp.aclose()
        await self.fetcher.aclose()
        await self.webhooks.aclose()
        if isinstance(self.breaker, SharedBreaker):
            await self.breaker.aclose()
        await self.limits.aclose()  # the settles in flight, then the Redis connections
        self.usage.close()  # the background writer's last flush: every journalled row into the table
        self.db.close()
