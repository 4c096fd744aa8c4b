"""Providers as plugins: the entry-point group, the hook, settings as data, catalog data.

Outside plugins here are real installed distributions: a `*.dist-info` with an
`entry_points.txt` on sys.path, found by importlib.metadata as pip-installed ones are.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import httpx
import pytest

from imagegate.config import FileConfig, ProviderSettings, Settings
from imagegate.errors import ConfigurationError
from imagegate.gateway import Gateway, build_catalog
from imagegate.plugins import (
    DEFAULT_PLUGINS,
    ENTRY_POINT_GROUP,
    ProviderSpec,
    Setting,
    configured_providers,
    load_registry,
    setting_values,
)

PLUGIN_SOURCE = """
from imagegate.plugins import ProviderSpec, Setting
from imagegate.providers.base import ImageProvider, ProviderResult

BUILT = []


class Echo(ImageProvider):
    provider_id = "echo"

    def __init__(self, context):
        self.context = context
        BUILT.append(context)

    async def generate(self, request):
        return ProviderResult(images=[])

    async def edit(self, request):
        return ProviderResult(images=[])


def catalog():
    return {CATALOG}


def register_providers(register):
    register(ProviderSpec(id="echo", factory=Echo, catalog=catalog, settings=(
        Setting("api_key", "ECHO_TOKEN", required=True, secret=True),
        Setting("region", "ECHO_REGION", default="eu"),
    )))
"""
GEMINI_BINDING = {"upstream_model": "echo-pro"}


def install_plugin(site: Path, module: str, source: str, dist: str = "echo-plugin") -> None:
    """A distribution as pip would leave it: the module, and dist-info with an entry point."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"{module}.py").write_text(source)
    info = site / f"{dist.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{module.replace('_', '-')} = {module}\n")


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Path]:
    """A site directory on sys.path; the registry is reloaded before and after."""
    path = tmp_path / "site"
    path.mkdir()
    sys.path.insert(0, str(path))
    load_registry.cache_clear()
    yield path
    sys.path.remove(str(path))
    for name in [m for m in sys.modules if m.startswith("echo_plugin") or m.startswith("broken_plugin")]:
        del sys.modules[name]
    load_registry.cache_clear()


def echo_source(catalog: str = '{"bindings": {"gemini-3-pro-image-preview": {"upstream_model": "echo-pro"}}}') -> str:
    return PLUGIN_SOURCE.replace("{CATALOG}", catalog)


def test_builtin_providers_register_through_the_entry_point_group() -> None:
    points = {ep.name: ep.value for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    for module in DEFAULT_PLUGINS:
        assert module in points.values(), f"{module} is not declared in pyproject's entry points"
    registry = load_registry()
    assert [s.id for s in registry][:4] == ["gemini", "replicate", "fal", "openai"]
    assert registry.specs["gemini"].plugin == "imagegate.providers.gemini"
    assert registry.specs["replicate"].enabling_variables() == "REPLICATE_API_TOKEN"


def test_an_installed_plugin_is_loaded_with_no_setting(site: Path) -> None:
    install_plugin(site, "echo_plugin", echo_source())
    registry = load_registry()
    spec = registry.specs["echo"]
    assert spec.plugin == "echo_plugin"
    assert [s.id for s in registry][-1] == "echo"  # after the built-ins


def test_a_plugin_binding_comes_after_the_models_own_providers(site: Path) -> None:
    install_plugin(site, "echo_plugin", echo_source())
    catalog = build_catalog(FileConfig())
    model = catalog.get("gemini-3-pro-image-preview")
    assert model is not None
    assert list(model.providers)[-1] == "echo"
    assert model.providers["echo"].upstream_model == "echo-pro"
    assert list(model.providers)[:-1] == list(
        build_catalog(FileConfig(), registry=_builtin_only()).get("gemini-3-pro-image-preview").providers
    )  # type: ignore[union-attr]


def _builtin_only():  # type: ignore[no-untyped-def]
    from imagegate.plugins import ProviderRegistry

    registry = ProviderRegistry()
    for name in DEFAULT_PLUGINS:
        registry.load(name, __import__(name, fromlist=["register_providers"]))
    return registry


def test_a_binding_to_a_model_the_catalog_lacks_fails_at_startup(site: Path) -> None:
    install_plugin(site, "echo_plugin", echo_source('{"bindings": {"no-such-model": {"upstream_model": "x"}}}'))
    with pytest.raises(ConfigurationError, match="echo.*no-such-model"):
        build_catalog(FileConfig())


def test_settings_come_from_explicit_values_then_env_then_file_then_default(tmp_path: Path) -> None:
    spec = ProviderSpec(
        id="echo",
        factory=lambda c: None,  # type: ignore[arg-type,return-value]
        settings=(
            Setting("api_key", "ECHO_TOKEN", required=True),
            Setting("region", "ECHO_REGION", default="eu"),
            Setting("zone", "ECHO_ZONE"),
        ),
    )
    file_config = FileConfig(providers={"echo": ProviderSettings(api_key="from-file", zone="z-file", timeout=12)})  # type: ignore[call-arg]
    settings = Settings(data_dir=tmp_path, environ={"ECHO_TOKEN": "from-env", "ECHO_ZONE": ""})
    assert setting_values(spec, settings, file_config) == {
        "api_key": "from-env",
        "region": "eu",
        "zone": "z-file",
        "timeout": "12.0",
    }
    explicit = Settings(data_dir=tmp_path, environ={"ECHO_TOKEN": "from-env"}, echo_api_key="explicit")
    assert setting_values(spec, explicit, FileConfig())["api_key"] == "explicit"
    assert setting_values(spec, Settings(data_dir=tmp_path, environ={}), FileConfig()) == {"region": "eu"}


async def test_a_provider_is_built_only_when_its_required_settings_are_set(site: Path, tmp_path: Path) -> None:
    install_plugin(site, "echo_plugin", echo_source())
    async with httpx.AsyncClient() as client:
        off = configured_providers(Settings(data_dir=tmp_path, environ={}), FileConfig(), client)
        assert "echo" not in off
        on = configured_providers(
            Settings(data_dir=tmp_path, environ={"ECHO_TOKEN": "t"}, upstream_timeout_seconds=7), FileConfig(), client
        )
    context = on["echo"].context  # type: ignore[attr-defined]
    assert (context.provider_id, dict(context.values), context.timeout) == ("echo", {"api_key": "t", "region": "eu"}, 7)
    assert context.client is client


async def test_the_gateway_serves_a_plugin_provider_and_names_its_variables(site: Path, tmp_path: Path) -> None:
    install_plugin(site, "echo_plugin", echo_source())
    async with Gateway(Settings(data_dir=tmp_path, environ={})) as gateway:
        assert gateway.notice() is not None and "ECHO_TOKEN" in gateway.notice()  # type: ignore[operator]
    async with Gateway(Settings(data_dir=tmp_path, environ={"ECHO_TOKEN": "t"})) as gateway:
        assert gateway.router.available_providers(gateway.router.model("gemini-3-pro-image-preview")) == ["echo"]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("raise RuntimeError('boom')\n", "broken_plugin cannot be loaded: RuntimeError: boom"),
        ("x = 1\n", "broken_plugin has no register_providers"),
        (
            textwrap.dedent("""
        from imagegate.plugins import ProviderSpec
        def register_providers(register):
            register(ProviderSpec(id="gemini", factory=None))
    """),
            "registers provider 'gemini', which plugin imagegate.providers.gemini already registered",
        ),
    ],
)
def test_a_broken_plugin_is_a_configuration_error_at_startup(site: Path, source: str, message: str) -> None:
    install_plugin(site, "broken_plugin", source, dist="broken-plugin")
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_registry()
