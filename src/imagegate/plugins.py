"""Providers are plugins, including our own (as simonw/llm's hookspecs and default plugins).

A plugin is a module (or any object) with a `register_providers(register)` hook. It calls
`register(ProviderSpec(...))` once per provider it brings. Installed packages announce theirs
in the `imagegate.providers` entry-point group:

    [project.entry-points."imagegate.providers"]
    testpattern = "imagegate_testpattern"

The built-in providers are listed the same way in imagegate's own pyproject, and again in
`DEFAULT_PLUGINS` so that a source checkout that was never reinstalled still has them; both
lists go through the same hook, once per module.

A provider declares its settings as data (`Setting`: a name, its environment variable, whether
it is required, a default), so that neither the settings module nor the gateway names any
provider. It is configured when every required setting has a value, from (first wins): an
explicit `Settings(<id>_<name>=...)` value, the environment, the config file's
`[providers.<id>]` table, the default. It may bring catalog data: whole models, and bindings
that add it as one more provider of models already in the catalog (after their own providers).
See docs/plugins.md.
"""

from __future__ import annotations

import functools
import importlib
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from importlib import metadata, resources
from typing import TYPE_CHECKING, Any

import httpx

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .config import FileConfig, Settings
    from .providers.base import ImageProvider

ENTRY_POINT_GROUP = "imagegate.providers"
DEFAULT_PLUGINS = (
    "imagegate.providers.gemini",
    "imagegate.providers.replicate",
    "imagegate.providers.fal",
    "imagegate.providers.openai",
    "imagegate.providers.vertex",
    "imagegate.providers.bfl",
)
# Settings every provider may take from the config file's [providers.<id>] table.
COMMON_FILE_SETTINGS = ("timeout",)


@dataclass(frozen=True)
class Setting:
    """One setting of a provider: `api_key`, `base_url`, or one of its own (`project`)."""

    name: str
    env: str | None = None  # its environment variable
    required: bool = False  # the provider is configured only when every required setting has a value
    default: str | None = None
    secret: bool = False  # never shown (`imagegate plugins` prints the variable, not the value)


@dataclass(frozen=True)
class ProviderContext:
    """What a provider's factory is given to build its adapter."""

    provider_id: str
    values: Mapping[str, str]
    client: httpx.AsyncClient  # the gateway's shared upstream client
    timeout: float  # per upstream call
    max_response_bytes: int
    poll_interval: float | None = None  # None: the adapter's own

    def value(self, name: str) -> str | None:
        return self.values.get(name)


@dataclass(frozen=True)
class ProviderSpec:
    id: str
    factory: Callable[[ProviderContext], ImageProvider]
    settings: tuple[Setting, ...] = ()
    # {"models": [model entries, as data/models.json], "bindings": {"<model id>": {<binding>}}}
    catalog: Callable[[], dict[str, Any]] | None = None
    plugin: str = ""  # the module that registered it, filled in by the registry

    def setting(self, name: str) -> Setting | None:
        return next((s for s in self.settings if s.name == name), None)

    def enabling_variables(self) -> str:
        """What an operator sets to turn the provider on: its required variables."""
        names = [s.env or f"[providers.{self.id}].{s.name}" for s in self.settings if s.required]
        return " + ".join(names) if names else "(always on once installed)"


def http_settings(key_env: str, base_url_env: str) -> tuple[Setting, ...]:
    """The usual pair: a required key and an optional base URL."""
    return (Setting("api_key", key_env, required=True, secret=True), Setting("base_url", base_url_env))


def catalog_file(package: str, path: str) -> Callable[[], dict[str, Any]]:
    """A `catalog` callable reading JSON shipped with a package."""

    def load() -> dict[str, Any]:
        data: dict[str, Any] = json.loads(resources.files(package).joinpath(path).read_text("utf-8"))
        return data

    return load


@dataclass
class ProviderRegistry:
    """Provider id -> spec, in registration order (built-ins first, then entry points by name)."""

    specs: dict[str, ProviderSpec] = field(default_factory=dict)
    _current_plugin: str = ""

    def register(self, spec: ProviderSpec) -> None:
        if spec.id in self.specs:
            other = self.specs[spec.id].plugin
            raise ConfigurationError(
                f"Plugin {self._current_plugin} registers provider '{spec.id}', "
                f"which plugin {other} already registered."
            )
        if spec.id == "local":
            raise ConfigurationError(f"Plugin {self._current_plugin}: the provider id 'local' is the local engine's.")
        self.specs[spec.id] = replace(spec, plugin=spec.plugin or self._current_plugin)

    def load(self, name: str, plugin: Any) -> None:
        hook = getattr(plugin, "register_providers", None)
        if not callable(hook):
            raise ConfigurationError(f"Plugin {name} has no register_providers(register) hook.")
        self._current_plugin = name
        try:
            hook(self.register)
        finally:
            self._current_plugin = ""

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.specs.values())

    def get(self, provider_id: str) -> ProviderSpec | None:
        return self.specs.get(provider_id)


def plugin_modules() -> list[tuple[str, Any]]:
    """(name, plugin object) for every plugin: the defaults, then entry points sorted by name,
    each module once (imagegate's own entry points name the defaults again)."""
    found: dict[str, Any] = {name: name for name in DEFAULT_PLUGINS}
    points = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: (ep.name, ep.value))
    for point in points:
        found.setdefault(point.value, point)
    loaded: list[tuple[str, Any]] = []
    for name, source in found.items():
        try:
            plugin = importlib.import_module(source) if isinstance(source, str) else source.load()
        except Exception as exc:  # a broken plugin is an operator's problem, said at startup
            raise ConfigurationError(f"Plugin {name} cannot be loaded: {type(exc).__name__}: {exc}") from exc
        loaded.append((name, plugin))
    return loaded


@functools.cache
def load_registry() -> ProviderRegistry:
    """Every installed provider, loaded once per process."""
    registry = ProviderRegistry()
    for name, plugin in plugin_modules():
        registry.load(name, plugin)
    return registry


def setting_values(spec: ProviderSpec, settings: Settings, file_config: FileConfig) -> dict[str, str]:
    """Each setting's value: explicit `Settings(<id>_<name>=...)`, then its environment variable,
    then the config file's [providers.<id>] table, then its default. Empty strings count as unset."""
    from_file = file_config.providers.get(spec.id)
    table = from_file.model_dump(exclude_none=True) if from_file is not None else {}
    values: dict[str, str] = {}
    for setting in (*spec.settings, *(Setting(n) for n in COMMON_FILE_SETTINGS if not spec.setting(n))):
        for candidate in (
            settings.explicit_value(f"{spec.id}_{setting.name}"),
            settings.environ.get(setting.env) if setting.env else None,
            table.get(setting.name),
            setting.default,
        ):
            if candidate is not None and str(candidate) != "":
                values[setting.name] = str(candidate)
                break
    return values


def is_configured(spec: ProviderSpec, values: Mapping[str, str]) -> bool:
    return all(s.name in values for s in spec.settings if s.required)


def configured_providers(
    settings: Settings, file_config: FileConfig, client: httpx.AsyncClient, registry: ProviderRegistry | None = None
) -> dict[str, ImageProvider]:
    """An adapter for every provider whose required settings are all set."""
    providers: dict[str, ImageProvider] = {}
    for spec in registry or load_registry():
        values = setting_values(spec, settings, file_config)
        if not is_configured(spec, values):
            continue
        timeout = float(values["timeout"]) if "timeout" in values else settings.upstream_timeout_seconds
        context = ProviderContext(
            spec.id, values, client, timeout, settings.max_upstream_response_bytes, settings.poll_interval_seconds
        )
        providers[spec.id] = spec.factory(context)
    return providers


def catalog_contributions(registry: ProviderRegistry | None = None) -> Iterable[tuple[ProviderSpec, dict[str, Any]]]:
    """(spec, catalog data) for every provider that brings catalog data."""
    for spec in registry or load_registry():
        if spec.catalog is not None:
            try:
                data = spec.catalog()
            except (OSError, ValueError) as exc:
                raise ConfigurationError(
                    f"Provider {spec.id} (plugin {spec.plugin}): its catalog data cannot be read: {exc}"
                ) from exc
            yield spec, data
