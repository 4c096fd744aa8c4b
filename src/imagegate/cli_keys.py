"""`imagegate keys`: stored API keys and their policies, straight in the gateway's database.

    keys create NAME [policy options]   the key on stdout (shown once), its webhook secret on stderr
    keys update ID [policy options]     change a key's name or policy (--no-expiry, --all-models, none)
    keys list [--json]                  every stored key with its policy (never a secret)
    keys revoke ID
    keys secret                         a new webhook signing secret, for IMAGEGATE_WEBHOOK_SECRET

The policy options are the admin API's fields (server/admin_routes.py), checked the same way: a
model must be in the catalog (an id or an alias), limits positive, an expiry in the future.
Managing keys never loads models or touches providers; a change reaches running gateways within
their key cache's time (keys.CACHE_SECONDS).
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from .config import Settings
from .db import open_database
from .gateway import build_catalog, read_local_models
from .keys import KeyRecord, KeyStore, iso, parse_time
from .policy import Budget, RateLimits
from .webhooks import generate_secret

T = TypeVar("T")
err_console = Console(stderr=True)
NONE_WORDS = ("none", "null", "unlimited")  # what clears a limit in `keys update`


def limit(kind: type[int] | type[float]) -> Callable[[click.Context, click.Parameter, str | None], Any]:
    """The callback of a rate limit (kind int: a whole number, at least 1) or an amount in USD (kind
    float: at least 0); `none` clears it."""
    low = 1 if kind is int else 0

    def convert(ctx: click.Context, param: click.Parameter, value: str | None) -> int | float | None:
        if value is None or value.lower() in NONE_WORDS:
            return None
        try:
            number = kind(value)
        except ValueError:
            raise click.BadParameter(f"{value!r} is not a {'whole number' if kind is int else 'number'}") from None
        if not math.isfinite(number) or number < low:
            raise click.BadParameter(f"{value!r} must be at least {low} (or 'none' for no limit)")
        return number

    return convert


def _expiry(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = parse_time(value)
    except ValueError as exc:
        raise click.BadParameter(f"{exc}; give Unix seconds or an ISO 8601 date/time (UTC by default)") from None
    if seconds <= time.time():
        raise click.BadParameter(f"{iso(seconds)} is in the past; a key must expire in the future")
    return seconds


def _models(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    """A comma-separated allow-list, every name a catalog model (an id or an alias)."""
    if value is None:
        return None
    models = [m.strip() for m in value.split(",") if m.strip()]
    if not models:
        raise click.BadParameter("name at least one model (for every model: leave it out, or --all-models)")
    settings = Settings()
    file_config = settings.file_config()
    catalog = build_catalog(file_config, read_local_models(file_config, settings.local_model))
    unknown = [m for m in models if catalog.get(m) is None]
    if unknown:
        raise click.BadParameter(f"not in the catalog: {', '.join(unknown)} (see `imagegate models`)")
    return models


def policy_options(update: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The policy options of `keys create` and, with what only changing a key needs, `keys update`."""
    clear = " ('none' clears it)" if update else ""
    options = [
        click.option("--models", callback=_models, help="Comma-separated models (ids or aliases) the key may use."),
        click.option("--requests-per-minute", callback=limit(int), metavar="N", help=f"Requests per minute{clear}."),
        click.option("--images-per-minute", callback=limit(int), metavar="N", help=f"Images per minute{clear}."),
        click.option("--usd-per-day", callback=limit(float), metavar="USD", help=f"Spend per UTC day, in USD{clear}."),
        click.option(
            "--usd-per-month", callback=limit(float), metavar="USD", help=f"Spend per UTC month, in USD{clear}."
        ),
        click.option(
            "--expires-at", callback=_expiry, help="Expiry: ISO 8601 date/time (UTC by default) or Unix seconds."
        ),
    ]
    if update:
        options += [
            click.option("--name", help="A new name."),
            click.option("--no-expiry", is_flag=True, help="The key never expires."),
            click.option("--all-models", is_flag=True, help="The key may use every model."),
            click.option("--admin/--no-admin", default=None, help="Give or take the admin scope."),
        ]
    else:
        options.append(click.option("--admin", is_flag=True, help="The key may call the admin API."))

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def _with_keys(fn: Callable[[KeyStore], T]) -> T:
    """Only the key store: managing keys never loads models or touches providers."""
    settings = Settings()
    db = open_database(settings)
    try:
        return fn(KeyStore(db, settings.static_keys, settings.static_admin_keys))
    finally:
        db.close()


def _amount(usd: float) -> str:
    return f"${usd:g}"


def limits_text(record: KeyRecord) -> str:
    """'60 req/min, $5/day': the key's rate limits and budget, '-' for none."""
    rate, budget = record.rate_limits, record.budget
    parts = [
        *([f"{rate.requests_per_minute} req/min"] if rate.requests_per_minute is not None else []),
        *([f"{rate.images_per_minute} img/min"] if rate.images_per_minute is not None else []),
        *([f"{_amount(budget.usd_per_day)}/day"] if budget.usd_per_day is not None else []),
        *([f"{_amount(budget.usd_per_month)}/month"] if budget.usd_per_month is not None else []),
    ]
    return ", ".join(parts) or "-"


def policy_line(record: KeyRecord) -> str:
    models = ", ".join(record.models) if record.models is not None else "all"
    expires = iso(record.expires_at) if record.expires_at is not None else "never"
    admin = ", admin" if record.admin else ""
    return f"models: {models}; limits: {limits_text(record)}; expires: {expires}{admin}"


@click.group()
def keys() -> None:
    """Manage API keys and their policies (stored hashed in the gateway's database)."""


@keys.command("create")
@click.argument("name")
@policy_options(update=False)
def keys_create(
    name: str,
    models: list[str] | None,
    requests_per_minute: int | None,
    images_per_minute: int | None,
    usd_per_day: float | None,
    usd_per_month: float | None,
    expires_at: float | None,
    admin: bool,
) -> None:
    """Create a key and its webhook signing secret; both are shown once."""

    def create(store: KeyStore) -> tuple[KeyRecord, str, str | None]:
        record, plaintext = store.create(
            name,
            models=models,
            rate_limits=RateLimits(requests_per_minute, images_per_minute),
            budget=Budget(usd_per_day, usd_per_month),
            expires_at=expires_at,
            admin=admin,
        )
        return record, plaintext, store.webhook_secret(record.id)

    if not name.strip():
        raise click.BadParameter("a key needs a name", param_hint="NAME")
    record, plaintext, secret = _with_keys(create)
    err_console.print(f"created {record.id} ({record.name}); store it now, it is not shown again:")
    click.echo(plaintext)
    # On stderr, so that stdout stays the key alone for scripts; verify this key's webhooks with it.
    err_console.print("its webhook signing secret (Standard Webhooks), also shown only now:")
    click.echo(secret, err=True)
    err_console.print(policy_line(record), highlight=False, markup=False)


@keys.command("update")
@click.argument("key_id")
@policy_options(update=True)
def keys_update(key_id: str, **options: Any) -> None:
    """Change a key's name or policy; what is not given stays as it is."""
    no_expiry, all_models = options.pop("no_expiry"), options.pop("all_models")
    if no_expiry and options["expires_at"] is not None:
        raise click.UsageError("--expires-at and --no-expiry contradict each other.")
    if all_models and options["models"] is not None:
        raise click.UsageError("--models and --all-models contradict each other.")
    if options["name"] is not None and not options["name"].strip():
        raise click.BadParameter("a key needs a name", param_hint="--name")
    context = click.get_current_context()
    # Only what was given changes: an option left out is not a request to clear its limit.
    changes = {
        name: value
        for name, value in options.items()
        if context.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
    }
    changes.update({"expires_at": None} if no_expiry else {})
    changes.update({"models": None} if all_models else {})
    if not changes:
        raise click.UsageError("Nothing to change: give at least one option (see --help).")
    record = _with_keys(lambda store: store.update(key_id, changes))
    if record is None:
        err_console.print(f"[red]no key {key_id}[/red]")
        sys.exit(1)
    click.echo(f"updated {key_id}")
    err_console.print(policy_line(record), highlight=False, markup=False)


@keys.command("secret")
def keys_secret() -> None:
    """Print a new webhook signing secret, for IMAGEGATE_WEBHOOK_SECRET."""
    click.echo(generate_secret())


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the keys as the admin API's key objects.")
def keys_list(as_json: bool) -> None:
    """List stored keys and their policies (never their secrets)."""
    records = _with_keys(lambda store: store.list())
    if as_json:
        click.echo(json.dumps([r.to_object() for r in records], indent=2))
        return
    table = Table("id", "name", "prefix", "status", "models", "limits", "expires", "admin")
    table.columns[0].no_wrap = True
    for r in records:
        table.add_row(
            r.id,
            r.name,
            r.prefix + "…",
            r.status,
            ", ".join(r.models) if r.models is not None else "all",
            limits_text(r),
            iso(r.expires_at) if r.expires_at is not None else "never",
            "yes" if r.admin else "",
        )
    Console().print(table)


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by id."""
    if not _with_keys(lambda store: store.revoke(key_id)):
        err_console.print(f"[red]no active key {key_id}[/red]")
        sys.exit(1)
    click.echo(f"revoked {key_id}")
