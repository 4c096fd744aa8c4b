"""The `imagegate` command: serve, generate, edit, models, keys.

`generate` and `edit` run the gateway in-process (same settings and providers as `serve`), or
talk to a running gateway with `--server URL`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
import httpx
from rich.console import Console
from rich.table import Table

from .config import Settings
from .db import Database
from .engine.describe import read_checkpoint
from .errors import ImagegateError
from .gateway import Gateway
from .keys import KeyStore
from .service import ImageJob, ImagesOutcome

err_console = Console(stderr=True)
SUFFIX_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp", ".gif": "gif", ".avif": "avif"}


@click.group()
@click.version_option(package_name="imagegate")
def cli() -> None:
    """imagegate: an OpenAI-compatible gateway for image generation and editing."""


@cli.command()
@click.option("--host", default=None, help="Interface to bind (default 127.0.0.1 or IMAGEGATE_HOST).")
@click.option("--port", default=None, type=int, help="Port (default 8000 or IMAGEGATE_PORT).")
@click.option("--workers", default=None, type=click.IntRange(min=1),
              help="Server processes (default 1 or IMAGEGATE_WORKERS).")
@click.option("--log-level", default="info", show_default=True)
def serve(host: str | None, port: int | None, workers: int | None, log_level: str) -> None:
    """Serve the API (under /v1 and /openai/v1)."""
    from .server import serving

    overrides: dict[str, Any] = {}
    if host is not None:
        overrides["host"] = host
    if port is not None:
        overrides["port"] = port
    if workers is not None:
        overrides["workers"] = workers
    settings = Settings(**overrides)
    if settings.local_model:  # a bad local model fails here, in one line, not in a worker's traceback
        try:
            read_checkpoint(settings.local_model)
        except ImagegateError as exc:
            _fail(exc)
    if settings.local_model and settings.workers > 1:
        err_console.print(f"[yellow]note[/yellow]: each of the {settings.workers} workers loads its own copy of "
                          f"{settings.local_model}; one worker serves a local model best (it batches requests).")
    serving.serve(settings, log_level=log_level)


def _image_options(fn: Any) -> Any:
    options = [
        click.option("--model", default=None, help="Model id (default: the catalog's first model)."),
        click.option("--size", default=None, help='WxH pixels or W:H, e.g. "1024x1024" or "16:9".'),
        click.option("--aspect-ratio", default=None, help='e.g. "16:9".'),
        click.option("--resolution", default=None, help='Tier, e.g. "1K", "2K", "4K".'),
        click.option("--n", "n", default=None, type=int, help="Number of images."),
        click.option("--seed", default=None, type=int),
        click.option("--output-format", default=None, type=click.Choice(["png", "jpeg", "jpg", "gif", "webp", "avif"])),
        click.option("--output-compression", default=None, type=int, help="0-100 for jpeg, webp, avif."),
        click.option("--param", "extra", multiple=True, metavar="KEY=VALUE",
                     help="Any other parameter, e.g. --param enable_web_search=true."),
        click.option("-o", "--output", "output", default=None, type=click.Path(dir_okay=False),
                     help="File to write; with n > 1, NAME-1.EXT, NAME-2.EXT, ..."),
        click.option("--server", default=None, envvar="IMAGEGATE_SERVER",
                     help="Use a running gateway at this URL instead of running in-process."),
        click.option("--api-key", default=None, envvar="IMAGEGATE_API_KEY", help="Key for --server."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _collect_params(prompt: str, kw: dict[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = {"prompt": prompt}
    for name in ("model", "size", "aspect_ratio", "resolution", "n", "seed", "output_format", "output_compression"):
        if kw.get(name) is not None:
            params[name] = kw[name]
    for item in kw.get("extra") or ():
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--param")
        params[key.strip()] = value
    output = kw.get("output")
    if output and "output_format" not in params and Path(output).suffix.lower() in SUFFIX_FORMATS:
        params["output_format"] = SUFFIX_FORMATS[Path(output).suffix.lower()]
    params["response_format"] = "b64_json"
    return params


@cli.command()
@click.argument("prompt")
@_image_options
def generate(prompt: str, **kw: Any) -> None:
    """Generate images from PROMPT."""
    _run_job(ImageJob(mode="t2i", params=_collect_params(prompt, kw)), kw)


@cli.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--prompt", required=True, help="What to change.")
@click.option("--mask", default=None, type=click.Path(exists=True, dir_okay=False),
              help="PNG whose transparent areas may change.")
@_image_options
def edit(images: tuple[str, ...], prompt: str, mask: str | None, **kw: Any) -> None:
    """Edit one or more IMAGES with a prompt."""
    job = ImageJob(
        mode="edit", params=_collect_params(prompt, kw), images=[Path(p).read_bytes() for p in images],
        mask=Path(mask).read_bytes() if mask else None,
    )
    _run_job(job, kw)


def _fail(exc: ImagegateError) -> NoReturn:
    err_console.print(f"[red]error[/red] ({exc.status_code} {exc.code}): {exc.message}")
    sys.exit(1)


def _run_job(job: ImageJob, kw: dict[str, Any]) -> None:
    with err_console.status("Generating…", spinner="dots"):
        try:
            if kw.get("server"):
                files, summary = _run_remote(job, kw["server"], kw.get("api_key"))
            else:
                files, summary = asyncio.run(_run_local(job))
        except ImagegateError as exc:
            _fail(exc)
    for path in _write_outputs(files, kw.get("output")):
        suffix_format = SUFFIX_FORMATS.get(path.suffix.lower())
        written = files[0][1]
        if suffix_format != written:
            err_console.print(f"[yellow]note[/yellow]: {path} holds {written.upper()} data despite its name")
        click.echo(str(path))
    err_console.print(summary)


async def _run_local(job: ImageJob) -> tuple[list[tuple[bytes, str]], str]:
    async with Gateway(Settings()) as gateway:
        outcome = await gateway.service.create(job)
    return [(img.data, img.format) for img in outcome.images], _summary(outcome)


def _summary(outcome: ImagesOutcome) -> str:
    eff = outcome.effective()
    return _summary_text(outcome.model, outcome.provider, len(outcome.images), f"{eff['width']}x{eff['height']}",
                         eff["output_format"], outcome.cost,
                         [(a.param, a.requested, a.applied) for a in outcome.adjustments])


def _summary_text(model: object, provider: object, count: int, size: object, fmt: str, cost: float,
                  adjustments: list[tuple[object, object, object]]) -> str:
    """One summary for in-process and remote runs: what served it, what came back, what changed."""
    text = f"{model} via {provider}: {count} image(s) {size} {fmt}, ${cost:.3f}"
    for param, requested, applied in adjustments:
        text += f"\n  adjusted {param}: {requested} -> {applied}"
    return text


def _remote_error(response: httpx.Response) -> ImagegateError:
    """The server's OpenAI-style error, keeping its HTTP status."""
    try:
        error = response.json().get("error") or {}
    except ValueError:
        error = {}
    message = str(error.get("message") or f"{response.status_code} {response.reason_phrase}")
    exc = ImagegateError(message, code=error.get("code") or "http_error", param=error.get("param"))
    exc.status_code = response.status_code
    return exc


def _post_remote(job: ImageJob, base: str, client: httpx.Client) -> httpx.Response:
    if job.mode == "t2i":
        return client.post(f"{base}/v1/images/generations", json=job.params)
    files: list[tuple[str, tuple[str, bytes, str]]] = [
        ("image[]", (f"image-{i}", data, "application/octet-stream"))
        for i, data in enumerate(job.images) if isinstance(data, bytes)
    ]
    if isinstance(job.mask, bytes):
        files.append(("mask", ("mask.png", job.mask, "image/png")))
    form = {k: json.dumps(v) if isinstance(v, (dict, list)) else str(v) for k, v in job.params.items()}
    return client.post(f"{base}/v1/images/edits", data=form, files=files)


def _run_remote(job: ImageJob, server: str, api_key: str | None) -> tuple[list[tuple[bytes, str]], str]:
    base = server.rstrip("/")
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with httpx.Client(timeout=600.0, headers=headers) as client:
            response = _post_remote(job, base, client)
        if response.status_code != 200:
            raise _remote_error(response)
        body = response.json()
        fmt = body.get("output_format") or "png"
        images = [(base64.b64decode(item["b64_json"]), fmt) for item in body["data"]]
    except httpx.HTTPError as exc:
        raise ImagegateError(f"Could not reach {base}: {exc}", code="connection_error") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise ImagegateError(f"{base} did not answer like an imagegate server.", code="bad_response") from exc
    summary = _summary_text(
        response.headers.get("x-imagegate-model"), response.headers.get("x-imagegate-provider"), len(images),
        body.get("size"), fmt, body.get("usage", {}).get("cost", 0),
        [(a.get("param"), a.get("requested"), a.get("applied")) for a in body.get("adjustments") or []],
    )
    return images, summary


def _write_outputs(files: list[tuple[bytes, str]], output: str | None) -> list[Path]:
    paths: list[Path] = []
    for index, (data, fmt) in enumerate(files, start=1):
        ext = "jpg" if fmt == "jpeg" else fmt
        if output is None:
            path = Path(f"imagegate-{index}.{ext}")
        elif len(files) == 1:
            path = Path(output)
        else:
            out = Path(output)
            path = out.with_name(f"{out.stem}-{index}{out.suffix or '.' + ext}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        paths.append(path)
    return paths


@cli.command()
def models() -> None:
    """List the models in the catalog and whether a provider serves them."""

    async def load() -> tuple[list[tuple[str, str, str, str, str]], str | None]:
        async with Gateway(Settings()) as gateway:
            rows = []
            for model in gateway.catalog:
                providers = gateway.router.available_providers(model)
                rows.append((model.id, model.name, ", ".join(model.modes),
                             f"{model.price.per_image * 100:.1f}¢", ", ".join(providers) or "not configured"))
            return rows, gateway.notice()

    try:
        rows, notice = asyncio.run(load())
    except ImagegateError as exc:
        _fail(exc)
    table = Table("model", "name", "modes", "price/image", "providers")
    for row in rows:
        table.add_row(*row)
    Console().print(table)
    if notice:
        err_console.print(f"[yellow]note[/yellow]: {notice}")


@cli.group()
def keys() -> None:
    """Manage API keys (stored hashed in IMAGEGATE_DATA_DIR)."""


def _with_keys(fn: Any) -> Any:
    """Only the key store: managing keys never loads models or touches providers."""
    settings = Settings()
    db = Database(settings.database_path)
    try:
        return fn(KeyStore(db, settings.static_keys))
    finally:
        db.close()


@keys.command("create")
@click.argument("name")
def keys_create(name: str) -> None:
    """Create a key; it is shown once."""
    record, plaintext = _with_keys(lambda store: store.create(name))
    err_console.print(f"created {record.id} ({record.name}); store it now, it is not shown again:")
    click.echo(plaintext)


@keys.command("list")
def keys_list() -> None:
    """List keys (never their secrets)."""
    records = _with_keys(lambda store: store.list())
    table = Table("id", "name", "prefix", "status")
    for r in records:
        table.add_row(r.id, r.name, r.prefix + "…", "active" if r.active else "revoked")
    Console().print(table)


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by id."""
    if not _with_keys(lambda store: store.revoke(key_id)):
        err_console.print(f"[red]no active key {key_id}[/red]")
        sys.exit(1)
    click.echo(f"revoked {key_id}")

