"""The web pages: the playground at /, the model pages /models and /models/{id} (HTML rendered
from the catalog: pages.py builds what they show) and their icon, served unauthenticated like /health (the
playground's own API calls carry the key the user types). IMAGEGATE_PLAYGROUND=false leaves them out."""

from __future__ import annotations

from pathlib import Path

import jinja2
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from ..gateway import Gateway
from . import pages
from .middleware import COMPRESSED
from .routes import _public_base_url

# Autoescape on: names, descriptions and notes may come from an operator's config file.
TEMPLATES = Jinja2Templates(
    env=jinja2.Environment(
        loader=jinja2.PackageLoader("imagegate.server", "templates"), autoescape=True, undefined=jinja2.StrictUndefined
    )
)
# Every asset is this origin's (the CSS); no script runs on these pages.
HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
}
# The playground runs one script, this origin's (static/playground.js); its images are result URLs,
# data URIs (streamed previews, answers in b64_json) and blob: URLs (the input images it shows).
PLAYGROUND_HEADERS = {
    **HEADERS,
    "content-security-policy": "default-src 'self'; script-src 'self'; img-src 'self' data: blob:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
}
SHOWN_ID_CHARS = 200  # an unknown id is echoed on the 404 page, cut to this


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


def _page(
    request: Request, name: str, context: dict[str, object], status: int = 200, headers: dict[str, str] = HEADERS
) -> Response:
    root = request.scope.get("root_path", "").rstrip("/")
    return TEMPLATES.TemplateResponse(request, name, {"root": root, **context}, status_code=status, headers=headers)


async def playground(request: Request) -> Response:
    """GET /: the form, its pickers filled from the catalog for the first model served here; the
    script then reads GET /v1/models with the key typed in. The size tables go in the page as data
    (a model with pixel limits has none in its card)."""
    models = pages.playground_models(_gateway(request).router)
    catalog_ids = [m["id"] for name, m in models.items() if name == m["id"]]
    first = next((i for i in catalog_ids if models[i]["available"]), catalog_ids[0] if catalog_ids else None)
    context: dict[str, object] = {"models": models, "model_ids": catalog_ids, "first": models[first] if first else None}
    return _page(request, "playground.html", context, headers=PLAYGROUND_HEADERS)


async def model_index(request: Request) -> Response:
    return _page(request, "models.html", {"models": pages.model_index(_gateway(request).router)})


async def model_page(request: Request) -> Response:
    router = _gateway(request).router
    requested: str = request.path_params["model_id"]
    model = router.catalog.get(requested)
    if model is None:
        return _page(request, "not_found.html", {"requested": requested[:SHOWN_ID_CHARS]}, status=404)
    base_url = _public_base_url(request).rstrip("/")
    default_format = _gateway(request).settings.default_response_format
    view = pages.model_page(model, router, requested, base_url, default_response_format=default_format)
    return _page(request, "model.html", {"m": view})


async def favicon(request: Request) -> Response:
    """GET /favicon.ico, which browsers and bookmarks ask for unprompted: the pages' one icon, the SVG
    the templates link (`<link rel="icon">`), answered as what it is (image/svg+xml; browsers go by the
    type, not the name) rather than kept as a second copy in ICO. Not a redirect: one request, and
    Chromium under request interception (the browser tests) does not follow an image's redirect."""
    return FileResponse(FAVICON, media_type="image/svg+xml", headers={"cache-control": "public, max-age=86400"})


FAVICON = Path(__file__).parent / "static" / "favicon.svg"
PAGE_ROUTES: list[BaseRoute] = [
    Route("/", playground, methods=["GET"], middleware=COMPRESSED),
    Route("/favicon.ico", favicon, methods=["GET"]),
    Route("/models", model_index, methods=["GET"], middleware=COMPRESSED),
    Route("/models/{model_id:path}", model_page, methods=["GET"], middleware=COMPRESSED),
    Mount("/static", app=StaticFiles(packages=[("imagegate.server", "static")]), name="static", middleware=COMPRESSED),
]
