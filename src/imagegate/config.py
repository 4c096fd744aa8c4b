"""Settings, built once from the environment (and an optional TOML file) and passed in.

Environment: IMAGEGATE_* for the gateway itself; GEMINI_API_KEY / GEMINI_BASE_URL and
OPENAI_API_KEY / OPENAI_BASE_URL enable providers with no config file.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ProviderSettings(BaseModel):
    api_key: str | None = None
    base_url: str | None = None
    timeout: float | None = None


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


def _env(name: str, *more: str) -> Any:
    return Field(default=None, validation_alias=AliasChoices(name, *more))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IMAGEGATE_", extra="ignore", populate_by_name=True)

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
    poll_interval_seconds: float | None = None  # Replicate / fal status polling; None: each adapter's own

    # The local engine (pip install -e '.[local]'): a diffusers directory or a hub id, served as
    # model `local/<last path component>`; device and dtype "auto" pick CUDA, MPS, then CPU.
    local_model: str | None = None  # IMAGEGATE_LOCAL_MODEL
    local_device: str = "auto"  # IMAGEGATE_LOCAL_DEVICE: auto, cuda, cuda:1, mps, cpu
    local_dtype: str = "auto"  # IMAGEGATE_LOCAL_DTYPE: auto, float16, bfloat16, float32
    local_max_batch_images: int = Field(default=8, ge=1)  # images in one forward pass
    local_max_queued_images: int = Field(default=32, ge=1)  # beyond this, 503 with Retry-After

    gemini_api_key: str | None = _env("GEMINI_API_KEY")
    gemini_base_url: str | None = _env("GEMINI_BASE_URL")
    replicate_api_key: str | None = _env("REPLICATE_API_TOKEN")
    replicate_base_url: str | None = _env("REPLICATE_BASE_URL")
    fal_api_key: str | None = _env("FAL_KEY")
    fal_base_url: str | None = _env("FAL_BASE_URL")
    openai_api_key: str | None = _env("OPENAI_API_KEY")
    openai_base_url: str | None = _env("OPENAI_BASE_URL")

    @field_validator("n_failure_policy")
    @classmethod
    def _policy(cls, value: str) -> str:
        if value not in ("partial", "fail"):
            raise ValueError("IMAGEGATE_N_FAILURE_POLICY must be 'partial' or 'fail'")
        return value

    @property
    def static_keys(self) -> list[str]:
        return [k.strip() for k in self.api_keys.split(",") if k.strip()]

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

    def provider_settings(self, provider_id: str, file_config: FileConfig) -> ProviderSettings:
        """Environment first, then the config file fills what the environment leaves out."""
        from_env = ProviderSettings(
            api_key=getattr(self, f"{provider_id}_api_key", None),
            base_url=getattr(self, f"{provider_id}_base_url", None),
        )
        from_file = file_config.providers.get(provider_id, ProviderSettings())
        return ProviderSettings(
            api_key=from_env.api_key or from_file.api_key,
            base_url=from_env.base_url or from_file.base_url,
            timeout=from_file.timeout,
        )
