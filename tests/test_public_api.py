"""The public API (as httpx's test_exported_members): every `__all__` in the package is sorted,
has no duplicates and names only things that exist; `imagegate` and `imagegate.providers` export
every public class and function of their modules that docs/plugins.md names; and the docs'
Python snippets import only exported names and run.

"Runs" is literal: each snippet is executed; the plugin hooks it defines are called and their
factories build adapters; the documented `AcmeProvider` and `QueueJob` are driven against a fake
of the upstream they describe, a real HTTP server on loopback. A snippet whose first line is
`NOT_RUN` (it talks to a running gateway) is only compiled.
"""

from __future__ import annotations

import ast
import base64
import importlib
import inspect
import json
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import imagegate
import imagegate.providers
from imagegate import (
    ContentPolicyViolation,
    ImageProvider,
    InputImage,
    ProviderBinding,
    ProviderContext,
    ProviderRequest,
    ProviderSpec,
    UpstreamRateLimited,
)
from imagegate.normalize import Layout
from imagegate.providers import run_job

from .fakes.images import solid_png
from .fakes.server import LoopbackServer

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "imagegate"
DOCS = ROOT / "docs" / "plugins.md"
EXAMPLE_SOURCES = sorted((ROOT / "examples" / "imagegate-testpattern" / "src").rglob("*.py"))
# The packages whose __all__ a plugin or an embedder imports from.
PUBLIC = (imagegate, imagegate.providers)
NOT_RUN = "# against a running gateway: not run by the docs test"


# --- reading the sources and the docs ---------------------------------------------------------


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def declared_alls() -> dict[str, list[str]]:
    """Module -> its `__all__`, read from the source (importing every module would need torch)."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.parse(path.read_text("utf-8")).body:
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
            ):
                found[_module_name(path)] = list(ast.literal_eval(node.value))
    return found


DOCS_TEXT = DOCS.read_text("utf-8")
BLOCKS = re.findall(r"```([a-z]*)\n(.*?)```", DOCS_TEXT, flags=re.S)
PYTHON_BLOCKS = [code for lang, code in BLOCKS if lang == "python"]
RUN_BLOCKS = [code for code in PYTHON_BLOCKS if not code.startswith(NOT_RUN)]
# Code: fenced blocks and inline spans (prose words are not names).
CODE = [code for _, code in BLOCKS] + re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", DOCS_TEXT, flags=re.S))


def snippet_definitions() -> set[str]:
    """What the docs' snippets define themselves (`AcmeProvider`, each `register_providers`)."""
    return {
        node.name
        for code in PYTHON_BLOCKS
        for node in ast.parse(code).body
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
    }


def exported_attributes() -> set[str]:
    """Attribute names of the exported classes: a bare `default_base_url` in the docs is
    HttpProvider's, not a function of the same name in some adapter module."""
    classes = [getattr(p, n) for p in PUBLIC for n in p.__all__ if inspect.isclass(getattr(p, n))]
    return {
        name
        for cls in classes
        for klass in cls.__mro__
        for name in (*vars(klass), *getattr(klass, "__annotations__", {}))
    }


def bare_mentions() -> set[str]:
    """Identifiers the docs' code names on their own, not as an attribute (`plan.place`), less the
    snippets' own definitions and the exported classes' attributes."""
    names = {m for code in CODE for m in re.findall(r"(?<![\w.])[A-Za-z_]\w*", code)}
    return names - snippet_definitions() - exported_attributes()


def dotted_references() -> set[str]:
    """Every `imagegate.x.y` the docs' code names."""
    return {m for code in CODE for m in re.findall(r"(?<![\w.])imagegate(?:\.[A-Za-z_]\w*)+", code)}


def resolve(dotted: str) -> tuple[Any, Any, str]:
    """(parent, object, last name) for a dotted path: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        parent = obj
        for name in parts[cut:]:
            assert hasattr(obj, name), f"docs name {dotted}, but {obj.__name__} has no {name}"
            parent, obj = obj, getattr(obj, name)
        if cut == len(parts) and cut > 1:
            parent = importlib.import_module(".".join(parts[:-1]))
        return parent, obj, parts[-1]
    raise AssertionError(f"docs name {dotted}, which is no module of imagegate")


def imagegate_imports(source: str) -> Iterator[tuple[str, str | None]]:
    """(module, name) for each `from imagegate... import name`; (module, None) for `import imagegate...`."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "imagegate":
            for alias in node.names:
                yield node.module, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "imagegate":
                    yield alias.name, None


EXPORTED = {name for package in PUBLIC for name in package.__all__}


# --- every __all__ -----------------------------------------------------------------------------


def test_the_public_packages_declare_their_all() -> None:
    assert {"imagegate", "imagegate.providers"} <= set(declared_alls())


@pytest.mark.parametrize("module", sorted(declared_alls()))
def test_every_all_is_sorted_and_has_no_duplicates(module: str) -> None:
    names = declared_alls()[module]
    assert len(names) == len(set(names)), [n for n in names if names.count(n) > 1]
    assert names == sorted(names)


@pytest.mark.parametrize("module", sorted(declared_alls()))
def test_every_exported_name_exists_and_star_imports(module: str) -> None:
    loaded = importlib.import_module(module)
    missing = [name for name in loaded.__all__ if not hasattr(loaded, name)]
    assert not missing, f"{module}.__all__ names what it lacks: {missing}"
    namespace: dict[str, Any] = {}
    exec(f"from {module} import *", namespace)
    assert set(loaded.__all__) <= set(namespace)


def test_the_exports_are_public_objects_of_imagegate() -> None:
    for package in PUBLIC:
        for name in package.__all__:
            assert not name.startswith("_") or name == "__version__", name
            obj = getattr(package, name)
            assert not isinstance(obj, types.ModuleType), f"{package.__name__}.{name} is a module"


# --- complete for what the docs name -----------------------------------------------------------


def _defining_modules(package: types.ModuleType) -> set[str]:
    """The imagegate modules the package's exports come from (its listed modules)."""
    modules = {getattr(getattr(package, name), "__module__", None) for name in package.__all__}
    return {m for m in modules if isinstance(m, str) and m.split(".")[0] == "imagegate"}


@pytest.mark.parametrize("package", PUBLIC, ids=lambda p: p.__name__)
def test_every_public_name_the_docs_mention_is_exported(package: types.ModuleType) -> None:
    mentioned = bare_mentions()
    lacking = []
    for module_name in sorted(_defining_modules(package)):
        module = importlib.import_module(module_name)
        for name, obj in vars(module).items():
            public = not name.startswith("_") and (inspect.isclass(obj) or inspect.isfunction(obj))
            if public and obj.__module__ == module_name and name in mentioned and name not in package.__all__:
                lacking.append(f"{module_name}.{name}")
    assert not lacking, f"docs/plugins.md names these, but {package.__name__} does not export them: {lacking}"


def test_every_imagegate_path_the_docs_name_exists_and_is_exported_where_named() -> None:
    references = dotted_references()
    assert "imagegate.providers.transport" in references and "imagegate.catalog.check" in references
    for dotted in sorted(references):
        parent, obj, name = resolve(dotted)
        exported = getattr(parent, "__all__", None)
        if isinstance(parent, types.ModuleType) and exported is not None and not isinstance(obj, types.ModuleType):
            assert name in exported, f"docs name {dotted}, which {parent.__name__}.__all__ lacks"


# --- the docs' snippets ------------------------------------------------------------------------


def test_the_docs_have_python_snippets_to_run() -> None:
    assert len(RUN_BLOCKS) >= 4 and len(PYTHON_BLOCKS) > len(RUN_BLOCKS)


@pytest.mark.parametrize(
    "source",
    [*PYTHON_BLOCKS, *(p.read_text("utf-8") for p in EXAMPLE_SOURCES)],
    ids=[*(f"docs-{i}" for i in range(len(PYTHON_BLOCKS))), *(p.name for p in EXAMPLE_SOURCES)],
)
def test_snippets_and_the_example_plugin_import_only_exported_names(source: str) -> None:
    compile(source, "<snippet>", "exec", dont_inherit=True)
    for module, name in imagegate_imports(source):
        loaded = importlib.import_module(module)
        if name is not None:
            assert name in EXPORTED, f"from {module} import {name}: not exported by imagegate or imagegate.providers"
            assert hasattr(loaded, name), f"from {module} import {name}: {module} has no {name}"


def run_snippets() -> dict[str, Any]:
    """Every runnable snippet executed as a module of its own, as a reader would run it (not with
    this file's `from __future__` flags); the names they define, together."""
    defined: dict[str, Any] = {}
    hooks = []
    for index, code in enumerate(RUN_BLOCKS):
        module = types.ModuleType(f"docs_snippet_{index}")
        sys.modules[module.__name__] = module  # dataclasses look their module up
        try:
            exec(compile(code, f"<docs/plugins.md snippet {index}>", "exec", dont_inherit=True), module.__dict__)
        finally:
            del sys.modules[module.__name__]
        namespace = dict(vars(module))
        if "register_providers" in namespace:
            hooks.append(namespace.pop("register_providers"))
        defined.update({k: v for k, v in namespace.items() if not k.startswith("__")})
    defined["hooks"] = hooks
    return defined


async def test_every_hook_in_the_docs_registers_providers_whose_factories_build_adapters() -> None:
    hooks = run_snippets()["hooks"]
    specs: list[ProviderSpec] = []
    for hook in hooks:
        hook(specs.append)
    assert [spec.id for spec in specs] == ["testpattern", "acme"]
    async with httpx.AsyncClient() as client:
        for spec in specs:
            values = {s.name: s.default or f"{s.name}-value" for s in spec.settings}
            adapter = spec.factory(ProviderContext(spec.id, values, client, 30.0, 1 << 20))
            assert isinstance(adapter, ImageProvider) and adapter.provider_id == spec.id
    assert specs[1].settings[0].env == "ACME_API_KEY" and specs[1].settings[0].required


# --- the documented adapter and job against fakes of their upstreams --------------------------

PNG = solid_png(8, 8, (10, 200, 30))
KEY = "acme-key"


def acme_upstream(received: list[dict[str, Any]]) -> Starlette:
    """The upstream the docs' AcmeProvider and QueueJob describe, errors included."""
    polls: dict[str, int] = {}

    async def images(request: Request) -> Response:
        body = json.loads(await request.body())
        received.append(body)
        if request.headers.get("authorization") != f"Bearer {KEY}":
            return JSONResponse({"error": "bad key"}, status_code=401)
        if "busy" in body["prompt"]:
            return JSONResponse({"error": "slow down"}, status_code=429, headers={"retry-after": "2"})
        if "unsafe" in body["prompt"]:
            return JSONResponse({"error": "blocked by the safety system"}, status_code=400)
        return JSONResponse({"images": [{"b64": base64.b64encode(PNG).decode()}] * body["n"]})

    async def submit(request: Request) -> Response:
        received.append(json.loads(await request.body()))
        polls["job-1"] = 0
        base = str(request.base_url).rstrip("/")
        return JSONResponse({"status_url": f"{base}/queue/job-1", "cancel_url": f"{base}/queue/job-1/cancel"})

    async def status(request: Request) -> Response:
        polls["job-1"] += 1
        if polls["job-1"] < 2:
            return JSONResponse({"status": "queued"})
        return JSONResponse({"status": "done", "output": f"{str(request.base_url).rstrip('/')}/out.png"})

    async def output(request: Request) -> Response:
        return Response(PNG, media_type="image/png")

    return Starlette(
        routes=[
            Route("/v1/images", images, methods=["POST"]),
            Route("/queue", submit, methods=["POST"]),
            Route("/queue/job-1", status),
            Route("/out.png", output),
        ]
    )


@pytest.fixture
def upstream() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []
    with LoopbackServer(acme_upstream(received)) as server:
        yield server.url, received


def acme_request(prompt: str, **kwargs: Any) -> ProviderRequest:
    binding = ProviderBinding(
        upstream_model="acme-image-1",
        max_images_per_call=4,
        parameters={"seed": {"handling": "renamed", "to": "options.seed"}},
    )
    return ProviderRequest(mode="t2i", prompt=prompt, layout=Layout("1:1", "1K", 1024, 1024), binding=binding, **kwargs)


async def test_the_documented_http_adapter_serves_and_maps_errors(upstream: tuple[str, list[dict[str, Any]]]) -> None:
    url, received = upstream
    acme = run_snippets()["AcmeProvider"]
    async with httpx.AsyncClient() as client:
        provider = acme(api_key=KEY, base_url=url, client=client)
        image = InputImage(PNG, "image/png", 8, 8)
        result = await provider.run(acme_request("a fox", n=2, seed=7, images=(image,), extra={"style": "ink"}))
        assert [i.data for i in result.images] == [PNG, PNG]
        assert [i.mime_type for i in result.images] == ["image/png", "image/png"]
        sent = received[-1]
        assert (sent["model"], sent["n"], sent["width"], sent["options"], sent["style"]) == (
            "acme-image-1",
            2,
            1024,
            {"seed": 7},
            "ink",
        )  # the seed where the binding's `to` says
        assert sent["images"][0].startswith("data:image/png;base64,")
        with pytest.raises(UpstreamRateLimited) as limited:
            await provider.run(acme_request("busy now"))
        assert limited.value.retry_after == 2.0
        with pytest.raises(ContentPolicyViolation):
            await provider.run(acme_request("unsafe"))


async def test_the_documented_polling_job_runs_through_run_job(upstream: tuple[str, list[dict[str, Any]]]) -> None:
    url, received = upstream
    job = run_snippets()["QueueJob"](f"{url}/queue", {"prompt": "a fox"}, KEY)
    async with httpx.AsyncClient() as client:
        result = await run_job(job, client=client, timeout=10.0, max_bytes=1 << 20, interval=0.01)
    assert [image.data for image in result.images] == [PNG]
    assert received == [{"prompt": "a fox"}]
