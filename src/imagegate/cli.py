"""The `imagegate` command: serve, generate, edit, models, plugins, usage, keys, jobs.

`generate` and `edit` run the gateway in-process (same settings and providers as `serve`), or
talk to a running gateway with `--server URL` (and, with `--async`, leave it a job that `jobs`
follows).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import secrets
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import click
import httpx
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from .cli_keys import keys
from .config import FileConfig, Settings
from .db import is_postgres_url, open_database, redact_url
from .db import migrate as migrate_database
from .engine.describe import read_checkpoint
from .errors import ImagegateError
from .gateway import Gateway
from .plugins import ProviderSpec, is_configured, load_registry, setting_values
from .providers.transport import SSEDecoder
from .service import ImageJob, ImagesOutcome, PipelineEvent
from .usage import GROUP_COLUMNS, Grouping, UsageLog, UsageTotal

err_console = Console(stderr=True)
SUFFIX_FORMATS = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp", ".gif": "gif", ".avif": "avif"}


@click.group()
@click.version_option(package_name="imagegate")
def cli() -> None:
    """imagegate: an OpenAI-compatible gateway for image generation and editing."""


@cli.command()
@click.option("--host", default=None, help="Interface to bind (default 127.0.0.1 or IMAGEGATE_HOST).")
@click.option("--port", default=None, type=int, help="Port (default 8000 or IMAGEGATE_PORT).")
@click.option(
    "--workers", default=None, type=click.IntRange(min=1), help="Server processes (default 1 or IMAGEGATE_WORKERS)."
)
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
        err_console.print(
            f"[yellow]note[/yellow]: each of the {settings.workers} workers loads its own copy of "
            f"{settings.local_model}; one worker serves a local model best (it batches requests)."
        )
    try:  # an unreachable or unmigrated database stops the start here, in one line
        open_database(settings).close()
    except ImagegateError as exc:
        _fail(exc)
    serving.serve(settings, log_level=log_level)


@cli.command()
def migrate() -> None:
    """Bring the database schema up to date (IMAGEGATE_DATABASE_URL). Run it before starting
    instances on a new or upgraded PostgreSQL database; SQLite is kept current when opened."""
    settings = Settings()
    url = settings.database_url
    if not url or not is_postgres_url(url):
        open_database(settings).close()
        err_console.print("SQLite database up to date (its schema is kept current when it is opened)")
        return
    try:
        applied = migrate_database(url)
    except Exception as exc:  # psycopg or yoyo: one line, not a traceback
        err_console.print(f"[red]error[/red]: migrating {redact_url(url)} failed: {exc}")
        sys.exit(1)
    if applied:
        err_console.print(f"applied {len(applied)} migration(s) to {redact_url(url)}: {', '.join(applied)}")
    else:
        err_console.print(f"{redact_url(url)} is up to date")


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
        click.option(
            "--param",
            "extra",
            multiple=True,
            metavar="KEY=VALUE",
            help="Any other parameter, e.g. --param enable_web_search=true.",
        ),
        click.option(
            "-o",
            "--output",
            "output",
            default=None,
            type=click.Path(dir_okay=False),
            help="File to write; with n > 1, NAME-1.EXT, NAME-2.EXT, ...",
        ),
        click.option(
            "--server",
            default=None,
            envvar="IMAGEGATE_SERVER",
            help="Use a running gateway at this URL instead of running in-process.",
        ),
        click.option("--api-key", default=None, envvar="IMAGEGATE_API_KEY", help="Key for --server."),
        click.option(
            "--stream",
            is_flag=True,
            help="Stream: show each partial image as it arrives (Nano Banana Pro's thought images) and the time taken.",
        ),
        click.option(
            "--partial-images",
            default=2,
            show_default=True,
            type=click.IntRange(0, 3),
            help="With --stream: how many partial images to ask for.",
        ),
        click.option(
            "--save-partials",
            is_flag=True,
            help="With --stream: also write each partial image, as NAME-partial-1.EXT, ...",
        ),
        click.option(
            "--async",
            "async_",
            is_flag=True,
            help="With --server: leave the request as an async job (Prefer: respond-async) and print its id.",
        ),
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
    if kw.get("stream"):
        params["stream"] = True
        params["partial_images"] = kw.get("partial_images", 2)
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
@click.option(
    "--mask", default=None, type=click.Path(exists=True, dir_okay=False), help="PNG whose transparent areas may change."
)
@_image_options
def edit(images: tuple[str, ...], prompt: str, mask: str | None, **kw: Any) -> None:
    """Edit one or more IMAGES with a prompt."""
    job = ImageJob(
        mode="edit",
        params=_collect_params(prompt, kw),
        images=[Path(p).read_bytes() for p in images],
        mask=Path(mask).read_bytes() if mask else None,
    )
    _run_job(job, kw)


def _fail(exc: ImagegateError) -> NoReturn:
    err_console.print(f"[red]error[/red] ({exc.status_code} {exc.code}): {exc.message}")
    sys.exit(1)


class PartialPrinter:
    """--stream: one line per partial image as it arrives, with the time since the start (and the
    file, with --save-partials); then the time to the final image."""

    def __init__(self, kw: dict[str, Any]) -> None:
        self.started = time.monotonic()
        self.save = bool(kw.get("save_partials"))
        self.output = kw.get("output")

    def partial(self, index: int, data: bytes, fmt: str, size: str) -> None:
        line = f"partial image {index + 1} after {time.monotonic() - self.started:.2f} s ({size} {fmt})"
        if self.save:
            stem = Path(self.output).with_suffix("") if self.output else Path("imagegate")
            path = stem.with_name(f"{stem.name}-partial-{index + 1}.{'jpg' if fmt == 'jpeg' else fmt}")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            line += f": {path}"
        err_console.print(line)

    def done(self) -> None:
        err_console.print(f"final image after {time.monotonic() - self.started:.2f} s")


def _run_job(job: ImageJob, kw: dict[str, Any]) -> None:
    if kw.get("async_"):
        _submit_job(job, kw)
        return
    printer = PartialPrinter(kw) if kw.get("stream") else None
    local = not kw.get("server")
    if local:  # the usage row's id, which the delivered mark names once the files are written
        job.request_id = job.request_id or f"cli_{secrets.token_hex(12)}"
    with err_console.status("Generating…", spinner="dots"):
        try:
            if kw.get("server"):
                files, summary = _run_remote(job, kw["server"], kw.get("api_key"), printer)
            else:
                files, summary = asyncio.run(_run_local(job, printer))
        except ImagegateError as exc:
            _fail(exc)
    if printer is not None:
        printer.done()
    for path in _write_outputs(files, kw.get("output")):
        suffix_format = SUFFIX_FORMATS.get(path.suffix.lower())
        written = files[0][1]
        if suffix_format != written:
            err_console.print(f"[yellow]note[/yellow]: {path} holds {written.upper()} data despite its name")
        click.echo(str(path))
    if local:
        _mark_delivered(job.request_id)
    err_console.print(summary)


def _mark_delivered(request_id: str) -> None:
    """The images are on disk: the local request's usage row counts as delivered."""
    db = open_database(Settings())
    try:
        UsageLog(db).mark_delivered(request_id)
    finally:
        db.close()


async def _run_local(job: ImageJob, printer: PartialPrinter | None = None) -> tuple[list[tuple[bytes, str]], str]:
    def on_event(event: PipelineEvent) -> None:
        if printer is not None and event.kind == "image_partial" and event.image is not None:
            image = event.image
            printer.partial(event.index or 0, image.data, image.format, f"{image.width}x{image.height}")

    async with Gateway(Settings()) as gateway:
        outcome = await gateway.service.create(job, on_event=on_event)
    return [(img.data, img.format) for img in outcome.images], _summary(outcome)


def _summary(outcome: ImagesOutcome) -> str:
    eff = outcome.effective()
    return _summary_text(
        outcome.model,
        outcome.provider,
        len(outcome.images),
        f"{eff['width']}x{eff['height']}",
        eff["output_format"],
        outcome.cost,
        [(a.param, a.requested, a.applied) for a in outcome.adjustments],
    )


def _summary_text(
    model: object,
    provider: object,
    count: int,
    size: object,
    fmt: str,
    cost: float,
    adjustments: list[tuple[object, object, object]],
) -> str:
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
    return client.send(_build_remote(job, base, client))


def _build_remote(job: ImageJob, base: str, client: httpx.Client) -> httpx.Request:
    if job.mode == "t2i":
        return client.build_request("POST", f"{base}/v1/images/generations", json=job.params)
    files: list[tuple[str, tuple[str, bytes, str]]] = [
        ("image[]", (f"image-{i}", data, "application/octet-stream"))
        for i, data in enumerate(job.images)
        if isinstance(data, bytes)
    ]
    if isinstance(job.mask, bytes):
        files.append(("mask", ("mask.png", job.mask, "image/png")))
    form = {k: json.dumps(v) if isinstance(v, (dict, list)) else str(v) for k, v in job.params.items()}
    return client.build_request("POST", f"{base}/v1/images/edits", data=form, files=files)


def _run_remote(
    job: ImageJob, server: str, api_key: str | None, printer: PartialPrinter | None = None
) -> tuple[list[tuple[bytes, str]], str]:
    base = server.rstrip("/")
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with httpx.Client(timeout=600.0, headers=headers) as client:
            if printer is not None:
                return _run_remote_stream(job, base, client, printer)
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
        response.headers.get("x-imagegate-model"),
        response.headers.get("x-imagegate-provider"),
        len(images),
        body.get("size"),
        fmt,
        body.get("usage", {}).get("cost", 0),
        [(a.get("param"), a.get("requested"), a.get("applied")) for a in body.get("adjustments") or []],
    )
    return images, summary


def _run_remote_stream(
    job: ImageJob, base: str, client: httpx.Client, printer: PartialPrinter
) -> tuple[list[tuple[bytes, str]], str]:
    """The server's event stream: partial images printed (and saved) as they come, the completed
    events' images returned. Errors are raised as in `_run_remote` (its caller maps httpx's)."""
    request = _build_remote(job, base, client)
    response = client.send(request, stream=True)
    try:
        if response.status_code != 200:
            response.read()
            raise _remote_error(response)
        images: list[tuple[bytes, str]] = []
        last: dict[str, Any] = {}
        for data in _stream_data(response):
            # An event's name is also its data's `type`; an error event's data is {"error": {...}}.
            kind = str(data.get("type") or "")
            if "error" in data:
                error = data.get("error") or {}
                raise ImagegateError(str(error.get("message") or "stream failed"), code=error.get("code") or "error")
            if kind.endswith(".partial_image"):
                raw = base64.b64decode(data["b64_json"])
                printer.partial(int(data.get("partial_image_index", 0)), raw, data["output_format"], data["size"])
            elif kind.endswith(".completed"):
                images.append((base64.b64decode(data["b64_json"]), data.get("output_format") or "png"))
                last = data
    finally:
        response.close()
    if not images:
        raise ImagegateError(f"{base} ended its stream without an image.", code="bad_response")
    usage = last.get("usage") or {}
    summary = _summary_text(
        response.headers.get("x-imagegate-model") or usage.get("model"),
        response.headers.get("x-imagegate-provider") or usage.get("provider"),
        len(images),
        last.get("size"),
        images[0][1],
        usage.get("cost", 0),
        [(a.get("param"), a.get("requested"), a.get("applied")) for a in last.get("adjustments") or []],
    )
    return images, summary


def _stream_data(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """The JSON data of each event of a server's event stream (the transport's SSE decoder: no
    line limit, keep-alive comments skipped)."""
    decoder = SSEDecoder()
    for chunk in response.iter_bytes():
        for data in decoder.feed(chunk):
            yield json.loads(data)
    for data in decoder.end():
        yield json.loads(data)


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


def _models_listing_local() -> dict[str, Any]:
    """What GET /v1/models answers, from the catalog and the providers this environment configures."""
    from .server.render import model_list

    async def load() -> dict[str, Any]:
        async with Gateway(Settings()) as gateway:
            return model_list(gateway)

    return asyncio.run(load())


def _models_listing_remote(server: str, api_key: str | None) -> dict[str, Any]:
    base = server.rstrip("/")
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(f"{base}/v1/models", headers=headers, timeout=60.0)
        if response.status_code != 200:
            raise _remote_error(response)
        listing = response.json()
        if not isinstance(listing, dict) or not isinstance(listing.get("data"), list):
            raise ValueError("no model list")
    except httpx.HTTPError as exc:
        raise ImagegateError(f"Could not reach {base}: {exc}", code="connection_error") from exc
    except ValueError as exc:
        raise ImagegateError(f"{base} did not answer like an imagegate server.", code="bad_response") from exc
    return listing


def _price_text(price: Any) -> str:
    if not isinstance(price, dict) or not isinstance(price.get("per_image"), (int, float)):
        return "?"
    per_image, currency = float(price["per_image"]), price.get("currency", "USD")
    return f"{per_image * 100:.1f}¢" if currency == "USD" else f"{per_image:g} {currency}"


def _model_row(card: dict[str, Any]) -> tuple[str, str, str, str, str]:
    """(id, name, modes, price per image, configured providers) of one model card."""
    configured = [str(p.get("id")) for p in card.get("providers") or [] if isinstance(p, dict) and p.get("configured")]
    name = str(card.get("name") or "")
    if card.get("alias_of"):
        name = f"{name} (alias of {card['alias_of']})"
    return (
        str(card.get("id")),
        name,
        ", ".join(card.get("modes") or []),
        _price_text(card.get("price")),
        ", ".join(configured) or "not configured",
    )


MODEL_COLUMNS = ("model", "name", "modes", "price/image", "providers")


def _print_models(rows: list[tuple[str, str, str, str, str]]) -> None:
    """A table with every id whole; in a terminal too narrow for that table, one block per model
    (rich would otherwise cut ids short or wrap them, and an id is what people copy)."""
    console = Console()
    table = Table(*MODEL_COLUMNS)
    table.columns[0].no_wrap = True
    for row in rows:
        table.add_row(*row)
    # The width the table needs with ids whole and the other columns wrapped at their longest word.
    needed = Measurement.get(console, console.options.update_width(10_000), table).minimum
    if needed <= console.width:
        console.print(table)
        return
    for model_id, name, modes, price, providers in rows:
        click.echo(model_id)
        click.echo(f"  {name}; {modes}; {price} per image")
        click.echo(f"  providers: {providers}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the model list as JSON (what GET /v1/models answers).")
@click.option(
    "--server",
    default=None,
    envvar="IMAGEGATE_SERVER",
    help="List the models of a running gateway at this URL instead of this environment's.",
)
@click.option("--api-key", default=None, envvar="IMAGEGATE_API_KEY", help="Key for --server.")
def models(as_json: bool, server: str | None, api_key: str | None) -> None:
    """List the models in the catalog and whether a provider serves them."""
    try:
        listing = _models_listing_remote(server, api_key) if server else _models_listing_local()
    except ImagegateError as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps(listing, indent=2))
        return
    _print_models([_model_row(card) for card in listing["data"] if isinstance(card, dict)])
    if notice := listing.get("notice"):
        err_console.print(f"[yellow]note[/yellow]: {escape(str(notice))}")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the providers as JSON.")
def plugins(as_json: bool) -> None:
    """List the installed providers, the plugin each comes from, and whether it is configured."""
    try:
        settings = Settings()
        file_config = settings.file_config()
        rows = [_plugin_row(spec, settings, file_config) for spec in load_registry()]
    except ImagegateError as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps({"providers": rows}, indent=2))
        return
    table = Table("provider", "plugin", "configured", "settings")
    for row in rows:
        table.add_row(
            row["id"],
            row["plugin"],
            "yes" if row["configured"] else "no",
            ", ".join(f"{s['env'] or s['name']}{' (required)' if s['required'] else ''}" for s in row["settings"]),
        )
    Console().print(table)


def _plugin_row(spec: ProviderSpec, settings: Settings, file_config: FileConfig) -> dict[str, Any]:
    """What `imagegate plugins` shows of one provider: never a secret's value."""
    values = setting_values(spec, settings, file_config)
    return {
        "id": spec.id,
        "plugin": spec.plugin,
        "configured": is_configured(spec, values),
        "settings": [
            {"name": s.name, "env": s.env, "required": s.required, "set": s.name in values} for s in spec.settings
        ],
    }


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(text: str, now: float, option: str = "--since") -> float:
    """A point in time as Unix seconds: a span back from `now` (`90m`, `24h`, `7d`, `2w`) or an
    ISO 8601 date or date-time (UTC unless it names its offset)."""
    value = text.strip()
    if match := _DURATION.fullmatch(value.lower()):
        return now - float(match[1]) * _UNIT_SECONDS[match[2]]
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is neither a span like 24h or 7d nor an ISO date like 2026-11-30.", param_hint=option
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _key_label(key_id: str | None, names: dict[str, str]) -> str:
    if key_id is None:
        return "(no key)"  # served while the gateway had no keys (open mode)
    return f"{key_id} ({names[key_id]})" if key_id in names else key_id


@cli.command()
@click.option(
    "--since",
    default="30d",
    show_default=True,
    help="Start: a span back from now (90m, 24h, 7d, 2w) or an ISO date/time (UTC by default).",
)
@click.option("--until", default=None, help="End (not included), in the same forms. Default: now.")
@click.option(
    "--by",
    "--group-by",
    "by",
    multiple=True,
    type=click.Choice(list(GROUP_COLUMNS)),
    help="Group by key, model, provider or day (UTC); repeat to combine. Default: key, model and provider.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the totals as JSON.")
def usage(since: str, until: str | None, by: tuple[Grouping, ...], as_json: bool) -> None:
    """Requests, images and cost served over a period, from the usage log in IMAGEGATE_DATA_DIR."""
    now = time.time()
    start = parse_when(since, now, "--since")
    end = now if until is None else parse_when(until, now, "--until")
    if start >= end:
        raise click.BadParameter(f"{_iso(start)} is not before --until ({_iso(end)}).", param_hint="--since")
    groups: tuple[Grouping, ...] = tuple(dict.fromkeys(by)) or ("key", "model", "provider")
    settings = Settings()
    db = open_database(settings)
    try:
        totals = UsageLog(db).totals(start, end, groups)
    finally:
        db.close()
    total = UsageTotal(
        {},
        sum(t.requests for t in totals),
        sum(t.images for t in totals),
        sum(t.cost for t in totals),
        undelivered_images=sum(t.undelivered_images for t in totals),
    )
    names = {t.group["key"]: t.key_name for t in totals if "key" in t.group and t.group["key"] and t.key_name}
    if as_json:
        click.echo(json.dumps(_usage_json(start, end, groups, totals, total, names), indent=2))
        return
    err_console.print(f"usage from {_iso(start)} to {_iso(end)}, cost in USD")
    if not totals:
        err_console.print("no usage recorded in this period")
        return
    table = Table(*groups, "requests", "images", "undelivered", "cost", show_footer=len(totals) > 1)
    for column in table.columns[: len(groups)]:
        column.no_wrap = True
    table.columns[0].footer = "total"
    for column, value in zip(table.columns[len(groups) :], _amounts(total), strict=True):
        column.footer, column.justify = value, "right"
    for t in totals:
        labels = [_key_label(t.group[g], names) if g == "key" else str(t.group[g]) for g in groups]
        table.add_row(*labels, *_amounts(t))
    Console().print(table)


def _amounts(total: UsageTotal) -> tuple[str, str, str, str]:
    """Requests, images, of them undelivered (paid upstream, the answer never reached its client), cost."""
    return str(total.requests), str(total.images), str(total.undelivered_images), f"${total.cost:.4f}"


def _usage_json(
    start: float,
    end: float,
    groups: tuple[Grouping, ...],
    totals: list[UsageTotal],
    total: UsageTotal,
    names: dict[str, str],
) -> dict[str, Any]:
    def entry(t: UsageTotal) -> dict[str, Any]:
        item: dict[str, Any] = {str(name): value for name, value in t.group.items()}
        if "key" in t.group:
            key_id = t.group["key"]
            item["key_name"] = names.get(key_id) if key_id is not None else None
        return item | {
            "requests": t.requests,
            "images": t.images,
            "undelivered_images": t.undelivered_images,
            "cost": round(t.cost, 6),
        }

    return {
        "since": _iso(start),
        "until": _iso(end),
        "by": list(groups),
        "currency": "USD",
        "totals": [entry(t) for t in totals],
        "total": entry(total),
    }


# --- async jobs (against a running gateway) ---------------------------------------------------


def _submit_job(job: ImageJob, kw: dict[str, Any]) -> None:
    """--async: the request sent with Prefer: respond-async; the job id on stdout."""
    if not kw.get("server"):
        raise click.UsageError("--async needs --server URL: a job runs on a gateway server.")
    base = kw["server"].rstrip("/")
    headers = {"prefer": "respond-async", **_auth_header(kw.get("api_key"))}
    try:
        with httpx.Client(timeout=600.0, headers=headers) as client:
            response = _post_remote(job, base, client)
        if response.status_code != 202:
            raise _remote_error(response)
        created = response.json()
        job_id = str(created["id"])
    except httpx.HTTPError as exc:
        _fail(ImagegateError(f"Could not reach {base}: {exc}", code="connection_error"))
    except (ValueError, KeyError, TypeError):
        _fail(ImagegateError(f"{base} did not answer like an imagegate server.", code="bad_response"))
    except ImagegateError as exc:
        _fail(exc)
    err_console.print(f"job {job_id} {created.get('status')}; follow it with: imagegate jobs wait {job_id}")
    click.echo(job_id)


def _auth_header(api_key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


def _jobs_call(server: str, api_key: str | None, method: str, path: str, **params: Any) -> Any:
    """One call to the server's job routes; its JSON answer, or the CLI's error exit."""
    base = server.rstrip("/")
    query = {k: v for k, v in params.items() if v is not None}
    try:
        response = httpx.request(
            method, f"{base}/v1/images/jobs{path}", params=query, headers=_auth_header(api_key), timeout=60.0
        )
        if response.status_code != 200:
            raise _remote_error(response)
        return response.json()
    except httpx.HTTPError as exc:
        _fail(ImagegateError(f"Could not reach {base}: {exc}", code="connection_error"))
    except ValueError:
        _fail(ImagegateError(f"{base} did not answer like an imagegate server.", code="bad_response"))
    except ImagegateError as exc:
        _fail(exc)


def _job_line(job: dict[str, Any]) -> str:
    created = job.get("created_at")
    when = _iso(float(created)) if isinstance(created, (int, float)) else "?"
    line = f"{job.get('id')}  {job.get('status')}  {job.get('model')}  attempts {job.get('attempts')}  created {when}"
    error = job.get("error")
    if isinstance(error, dict):
        line += f"\n  error ({error.get('code')}): {error.get('message')}"
    return line


def _job_images(job: dict[str, Any]) -> list[tuple[bytes, str]]:
    """A succeeded job's images: inline base64 where the answer has it, else its hosted URLs."""
    result = job.get("result") or {}
    fmt = str(result.get("output_format") or "png")
    images = []
    for item in result.get("data") or []:
        if item.get("b64_json"):
            images.append((base64.b64decode(item["b64_json"]), fmt))
        elif item.get("url"):
            images.append((httpx.get(item["url"], timeout=60.0).raise_for_status().content, fmt))
    return images


def _server_options(fn: Any) -> Any:
    fn = click.option("--api-key", default=None, envvar="IMAGEGATE_API_KEY", help="Key for --server.")(fn)
    return click.option(
        "--server", required=True, envvar="IMAGEGATE_SERVER", help="The running gateway, e.g. http://host:8000."
    )(fn)


@cli.group()
def jobs() -> None:
    """Async jobs of a running gateway (made by generate/edit --async or Prefer: respond-async)."""


@jobs.command("list")
@_server_options
@click.option(
    "--status", default=None, type=click.Choice(["queued", "in_progress", "succeeded", "failed", "cancelled"])
)
@click.option("--limit", default=None, type=click.IntRange(1, 100), help="At most this many (server default 20).")
@click.option("--after", default=None, help="The page after this job id.")
@click.option("--json", "as_json", is_flag=True, help="Print the list as the server answers it.")
def jobs_list(
    server: str, api_key: str | None, status: str | None, limit: int | None, after: str | None, as_json: bool
) -> None:
    """Your jobs, newest first."""
    listing = _jobs_call(server, api_key, "GET", "", status=status, limit=limit, after=after)
    if as_json:
        click.echo(json.dumps(listing, indent=2))
        return
    for job in listing.get("data") or []:
        click.echo(_job_line(job))
    if listing.get("has_more"):
        err_console.print("more: --after " + str((listing.get("data") or [{}])[-1].get("id")))


@jobs.command("get")
@click.argument("job_id")
@_server_options
@click.option("--json", "as_json", is_flag=True, help="Print the job object as the server answers it.")
def jobs_get(job_id: str, server: str, api_key: str | None, as_json: bool) -> None:
    """One job."""
    job = _jobs_call(server, api_key, "GET", f"/{job_id}")
    click.echo(json.dumps(job, indent=2) if as_json else _job_line(job))


@jobs.command("wait")
@click.argument("job_id")
@_server_options
@click.option(
    "--interval", default=1.0, show_default=True, type=click.FloatRange(min=0.05), help="Seconds between polls."
)
@click.option("--timeout", default=None, type=click.FloatRange(min=0), help="Give up after this many seconds.")
@click.option("-o", "--output", default=None, type=click.Path(dir_okay=False), help="Write the images here.")
def jobs_wait(
    job_id: str, server: str, api_key: str | None, interval: float, timeout: float | None, output: str | None
) -> None:
    """Wait for a job to end; write its images (the paths on stdout), or exit 1 if it failed or was cancelled."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with err_console.status(f"Waiting for {job_id}…", spinner="dots"):
        while (job := _jobs_call(server, api_key, "GET", f"/{job_id}"))["status"] not in JOB_FINAL:
            if deadline is not None and time.monotonic() >= deadline:
                err_console.print(_job_line(job))
                _fail(ImagegateError(f"{job_id} is still {job['status']} after {timeout:g} s.", code="timeout"))
            time.sleep(interval)
    err_console.print(_job_line(job))
    if job["status"] != "succeeded":
        sys.exit(1)
    try:
        files = _job_images(job)
    except (httpx.HTTPError, ValueError) as exc:
        _fail(ImagegateError(f"Could not read the job's images: {exc}", code="bad_response"))
    for path in _write_outputs(files, output):
        click.echo(str(path))


@jobs.command("cancel")
@click.argument("job_id")
@_server_options
def jobs_cancel(job_id: str, server: str, api_key: str | None) -> None:
    """Cancel a queued or running job."""
    click.echo(_job_line(_jobs_call(server, api_key, "POST", f"/{job_id}/cancel")))


JOB_FINAL = ("succeeded", "failed", "cancelled")


# `imagegate keys`: stored keys and their policies (cli_keys.py).
cli.add_command(keys)
