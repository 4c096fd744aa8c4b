"""Settings, built once from the environment (and an optional TOML file) and passed in.

Environment: IMAGEGATE_* for the gateway itself. Providers declare their own variables
(GEMINI_API_KEY, VERTEX_PROJECT, ...) as data in their plugins (plugins.py): this module names
none of them. It keeps a copy of the environment, and explicit `<provider>_<setting>=` values
(`Settings(gemini_api_key=...)`), for the plugins to read.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .memory import DEFAULT_KEEP_BYTES


class ProviderSettings(BaseModel):
    """A config file's [providers.<id>] table: the common fields, and any setting the provider
    declares (e.g. `project` for vertex)."""

    model_config = ConfigDict(extra="allow")

    api_key: str | None = None
    base_url: str | None = None
    timeout: float | None = None
    # Upstream budget (limits.py): at most this many calls / images a minute to this provider over
    # every instance together (e.g. Gemini's per-project limits); None: no limit of the gateway's.
    requests_per_minute: int | None = Field(default=None, ge=1)
    images_per_minute: int | None = Field(default=None, ge=1)


# [model_overrides."<model id>".providers.<provider id>]: change what one binding calls upstream
# or what it costs without redefining the model (validated against the catalog at startup).
class BindingOverride(BaseModel):
    model_config = ConfigDict(extra="forbid")

    upstream_model: str | None = None
    upstream_model_edit: str | None = None
    # A whole price (catalog.BindingPrice: per_image, by_resolution, per_input_image, extras,
    # estimated); it replaces the catalog's price for this binding.
    price: dict[str, Any] | None = None


class ModelOverride(BaseModel):
    model_config = ConfigDict(extra="forbid")

    providers: dict[str, BindingOverride] = Field(default_factory=dict)


class FileConfig(BaseModel):
    """What a TOML config file may hold (IMAGEGATE_CONFIG)."""

    providers: dict[str, ProviderSettings] = Field(default_factory=dict)
    # Extra catalog entries, in the same shape as data/models.json's "models" list.
    models: list[dict[str, Any]] = Field(default_factory=list)
    # model id -> provider ids in priority order.
    routing: dict[str, list[str]] = Field(default_factory=dict)
    # More local models (directories or hub ids), each described from its configs like
    # IMAGEGATE_LOCAL_MODEL's.
    local_models: list[str] = Field(default_factory=list)
    # model id (or alias) -> per-provider upstream id / price overrides.
    model_overrides: dict[str, ModelOverride] = Field(default_factory=dict)


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_ORIGIN = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s,]+")  # scheme://host[:port], as browsers send Origin


def _networks(text: str) -> list[IPNetwork]:
    """'127.0.0.1,10.0.0.0/8' -> networks (a bare address is a /32 or /128); ValueError if bad."""
    return [ipaddress.ip_network(part.strip(), strict=False) for part in text.split(",") if part.strip()]


class Settings(BaseSettings):
    # extra="allow": `Settings(gemini_api_key=...)` keeps values for provider settings (see
    # explicit_value), which are declared by the plugins, not here.
    model_config = SettingsConfigDict(env_prefix="IMAGEGATE_", extra="allow", populate_by_name=True)

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1  # IMAGEGATE_WORKERS: server processes; base64 and JSON work is CPU-bound
    api_keys: str = ""  # IMAGEGATE_API_KEYS, comma-separated static keys
    data_dir: Path = Path.home() / ".imagegate"
    public_url: str | None = None  # base of result URLs; default http://host:port
    config: Path | None = None  # IMAGEGATE_CONFIG, a TOML file
    result_ttl_seconds: float = 3600.0  # IMAGEGATE_RESULT_TTL_SECONDS
    upstream_timeout_seconds: float = 300.0  # 4K images can take a minute or more
    max_upload_bytes: int = 50 * 1024 * 1024  # per request body
    max_image_bytes: int = 20 * 1024 * 1024  # per image, uploaded or fetched
    max_image_pixels: int = 64_000_000
    max_upstream_response_bytes: int = 256 * 1024 * 1024
    allow_private_urls: bool = False  # IMAGEGATE_ALLOW_PRIVATE_URLS: lets image URLs reach private nets
    # Image URLs in edits: a total-time cap per fetch (not per read, so a URL that drips bytes is
    # cut), and at most this many fetches per API key at once; both inside the request deadline.
    fetch_timeout_seconds: float = Field(default=30.0, gt=0)  # IMAGEGATE_FETCH_TIMEOUT_SECONDS
    fetch_concurrency_per_key: int = Field(default=8, ge=1)  # IMAGEGATE_FETCH_CONCURRENCY_PER_KEY
    # When some of the parallel calls behind n > 1 fail: "partial" returns what succeeded
    # (and says so), "fail" turns any failure into an error.
    n_failure_policy: str = "partial"
    # Resilience: a request never runs past its deadline; each provider gets a few attempts with
    # exponential backoff and jitter before the next provider is tried; a provider that keeps
    # failing is skipped for a cool-down (circuit breaker).
    request_timeout_seconds: float = 600.0
    retry_attempts: int = 2  # per provider, per upstream call
    retry_backoff_seconds: float = 0.5  # first delay; doubles, with full jitter
    retry_max_delay_seconds: float = 8.0  # a longer Retry-After moves on to the next provider
    breaker_failures: int = 5  # consecutive failures that open a provider's circuit
    breaker_cooldown_seconds: float = 30.0
    idempotency_ttl_seconds: float = 86400.0
    # stream: true answers: an SSE comment goes out whenever nothing else has for this long, so
    # that proxies and clients do not cut a long generation (at most 10 s, as the interface says).
    stream_keepalive_seconds: float = Field(default=5.0, gt=0, le=10)  # IMAGEGATE_STREAM_KEEPALIVE_SECONDS
    poll_interval_seconds: float | None = None  # Replicate / fal status polling; None: each adapter's own
    # Slow connections (server/serving.py): a request head must be complete within the header
    # timeout; a connection that sends nothing for the idle timeout while the server waits on it
    # (head, body, keep-alive) is closed, and so is one whose body trickles in below the minimum
    # rate. max_connections None: the descriptor limit less a reserve.
    header_timeout_seconds: float = Field(default=10.0, gt=0, le=30)  # IMAGEGATE_HEADER_TIMEOUT_SECONDS
    idle_timeout_seconds: float = Field(default=10.0, gt=0)  # IMAGEGATE_IDLE_TIMEOUT_SECONDS
    max_connections: int | None = Field(default=None, ge=1)  # IMAGEGATE_MAX_CONNECTIONS, per process
    # A body may take one header timeout plus its size at this rate (0: no limit); IMAGEGATE_MIN_BODY_BYTES_PER_SECOND
    min_body_bytes_per_second: float = Field(default=1024.0, ge=0)
    # The hot path (bench/gateway_overhead.py): upstream API calls over aiohttp (or httpx, which
    # every other HTTP use keeps).
    upstream_client: Literal["aiohttp", "httpx"] = "aiohttp"  # IMAGEGATE_UPSTREAM_CLIENT
    # Usage rows: appended to a journal and written by a background thread (usage.py), or inserted
    # in the request (inline: a row is in the table before the answer goes out).
    usage_writer: Literal["background", "inline"] = "background"  # IMAGEGATE_USAGE_WRITER
    # Freed memory glibc keeps for the next request instead of returning it (memory.py); 0: glibc's
    # defaults. IMAGEGATE_MALLOC_KEEP_BYTES
    malloc_keep_bytes: int = Field(default=DEFAULT_KEEP_BYTES, ge=0)

    # OpenAI wire compatibility. Standard fields a model lacks (quality, style, ...) are served
    # without it and reported, unless strict_parameters makes them a 400. A request without
    # response_format gets default_response_format: url, b64_json or both. Result URLs follow the
    # Host the client called; X-Forwarded-*/Forwarded count only from trusted_proxies (comma-
    # separated IPs or CIDRs). cors_origins: comma-separated origins or "*"; none, no CORS headers.
    strict_parameters: bool = False  # IMAGEGATE_STRICT_PARAMETERS
    default_response_format: str = "both"  # IMAGEGATE_DEFAULT_RESPONSE_FORMAT
    trusted_proxies: str = ""  # IMAGEGATE_TRUSTED_PROXIES
    cors_origins: str = ""  # IMAGEGATE_CORS_ORIGINS
    playground: bool = (
        True  # IMAGEGATE_PLAYGROUND: the web pages (/, /models, /docs); false: API only (/openapi.json stays)
    )
    # Bounds on what results and conversions may take (see conversion.py and storage.py).
    # Image decoding/encoding: this many threads, and this much estimated peak memory at once
    # (None: 1.5 GiB or a quarter of physical memory; 0: no memory budget); a job that cannot start
    # within the wait (or the request's deadline) is a 503 conversion_busy.
    conversion_workers: int | None = Field(default=None, ge=1)  # None: os.cpu_count()
    conversion_memory_bytes: int | None = Field(default=None, ge=0)
    conversion_max_wait_seconds: float = Field(default=60.0, ge=0)
    # Hosted results: at most this many bytes on disk, evicting expired then oldest results
    # (None: half the data dir's free space at start, at most 50 GiB; 0: no budget).
    results_max_bytes: int | None = Field(default=None, ge=0)
    # Async jobs (Prefer: respond-async, jobs.py): at most this many run at once over the whole
    # gateway, at most this many per API key (so one key cannot take every slot), and at most this
    # many wait in the queue (then 429 job_queue_full with Retry-After).
    job_concurrency: int = Field(default=4, ge=1)  # IMAGEGATE_JOB_CONCURRENCY
    job_concurrency_per_key: int = Field(default=2, ge=1)  # IMAGEGATE_JOB_CONCURRENCY_PER_KEY
    job_queue_max: int = Field(default=1000, ge=1)  # IMAGEGATE_JOB_QUEUE_MAX

    # Webhooks (webhooks.py): the signing secret of static keys (whsec_<base64>, Standard Webhooks),
    # each attempt's time limit, how long a failing delivery is retried, and the first backoff delay.
    webhook_secret: str | None = None  # IMAGEGATE_WEBHOOK_SECRET
    webhook_timeout_seconds: float = Field(default=10.0, gt=0)  # IMAGEGATE_WEBHOOK_TIMEOUT_SECONDS
    webhook_max_age_seconds: float = Field(default=86400.0, gt=0)  # IMAGEGATE_WEBHOOK_MAX_AGE_SECONDS
    webhook_base_delay_seconds: float = Field(default=5.0, gt=0)  # IMAGEGATE_WEBHOOK_BASE_DELAY_SECONDS

    # Shared backends for several instances (issue 11). None: the embedded defaults (SQLite in the
    # data dir, results in <data dir>/results, limits and breaker state in-process).
    database_url: str | None = None  # IMAGEGATE_DATABASE_URL: postgresql://user:pass@host/db
    # PostgreSQL connections per process at most: instances x workers x this must stay under the
    # server's max_connections (100 by default).
    database_pool_size: int = Field(default=10, ge=1)  # IMAGEGATE_DATABASE_POOL_SIZE
    redis_url: str | None = None  # IMAGEGATE_REDIS_URL: redis://host:6379/0
    results_url: str | None = None  # IMAGEGATE_RESULTS_URL: s3://bucket/prefix
    s3_endpoint_url: str | None = None  # IMAGEGATE_S3_ENDPOINT_URL: any S3-compatible endpoint
    results_presign: bool = False  # IMAGEGATE_RESULTS_PRESIGN: result URLs are presigned S3 URLs
    admin_keys: str = ""  # IMAGEGATE_ADMIN_KEYS, comma-separated static admin keys
    log_format: Literal["text", "json"] = "text"  # IMAGEGATE_LOG_FORMAT
    metrics_token: str | None = None  # IMAGEGATE_METRICS_TOKEN: /metrics wants this bearer token (unset: open)
    # A job whose owner sent no heartbeat this long is taken back by another instance.
    job_heartbeat_stale_seconds: float = Field(default=30.0, gt=0)  # IMAGEGATE_JOB_HEARTBEAT_STALE_SECONDS

    # The local engine (pip install -e '.[local]'): a diffusers directory or a hub id, served as
    # model `local/<last path component>`; device and dtype "auto" pick CUDA, MPS, then CPU.
    local_model: str | None = None  # IMAGEGATE_LOCAL_MODEL
    local_device: str = "auto"  # IMAGEGATE_LOCAL_DEVICE: auto, cuda, cuda:1, mps, cpu
    local_dtype: str = "auto"  # IMAGEGATE_LOCAL_DTYPE: auto, float16, bfloat16, float32
    local_max_batch_images: int = Field(default=8, ge=1)  # images in one forward pass
    local_max_queued_images: int = Field(default=32, ge=1)  # beyond this, 503 with Retry-After

    # The environment when the settings were built: providers read their own variables from it.
    environ: dict[str, str] = Field(default_factory=lambda: dict(os.environ), exclude=True, repr=False)

    @field_validator("n_failure_policy")
    @classmethod
    def _policy(cls, value: str) -> str:
        if value not in ("partial", "fail"):
            raise ValueError("IMAGEGATE_N_FAILURE_POLICY must be 'partial' or 'fail'")
        return value

    @field_validator("default_response_format")
    @classmethod
    def _response_format(cls, value: str) -> str:
        if value not in ("url", "b64_json", "both"):
            raise ValueError("IMAGEGATE_DEFAULT_RESPONSE_FORMAT must be 'url', 'b64_json' or 'both'")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies(cls, value: str) -> str:
        try:
            _networks(value)
        except ValueError as exc:
            raise ValueError(f"IMAGEGATE_TRUSTED_PROXIES: {exc}") from exc
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: str) -> str:
        for origin in (o.strip().rstrip("/") for o in value.split(",") if o.strip()):
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ValueError(f"IMAGEGATE_CORS_ORIGINS: {origin!r} is not an origin like https://app.example.com")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from .webhooks import secret_key  # here: webhooks imports the HTTP stack, settings need not

        try:
            secret_key(value)
        except ValueError as exc:
            raise ValueError(f"IMAGEGATE_WEBHOOK_SECRET: {exc} (make one with `imagegate keys secret`)") from exc
        return value

    @property
    def trusted_proxy_networks(self) -> list[IPNetwork]:
        return _networks(self.trusted_proxies)

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip()]

    @property
    def static_keys(self) -> list[str]:
        return [k.strip() for k in self.api_keys.split(",") if k.strip()]

    @property
    def static_admin_keys(self) -> list[str]:
        return [k.strip() for k in self.admin_keys.split(",") if k.strip()]

    @property
    def base_public_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    @property
    def database_path(self) -> Path:
        return self.data_dir / "imagegate.db"

    def file_config(self) -> FileConfig:
        if self.config is None:
            return FileConfig()
        with open(self.config, "rb") as fh:
            return FileConfig.model_validate(tomllib.load(fh))

    def explicit_value(self, name: str) -> Any:
        """A value given as `Settings(name=...)` that is no field of ours (a provider's setting)."""
        return (self.model_extra or {}).get(name)
