"""The `reelay` command line: serve, dev, listen, keys, migrate, and the operations backup, restore and prune."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import msgspec

from service.budgets import budget_fields, describe, parse_amount
from service.errors import ConfigError
from service.logging import configure_logging
from service.providers import ADAPTERS
from service.settings import Settings
from service.timestamps import to_iso
from service.wire import encode_job
from storage import (
    ApiKeyRecord,
    BackupReport,
    PruneCounts,
    StorageError,
    Store,
    SupportsBackup,
    create_store,
    migrations,
)

if TYPE_CHECKING:
    from click._termui_impl import ProgressBar

T = TypeVar("T")


def _settings() -> Settings:
    try:
        return Settings.from_env(adapters=ADAPTERS)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _database_settings() -> Settings:
    """Settings for a command that works on the database, after saying on stderr which database that is."""
    settings = _settings()
    click.echo(f"database: {settings.database}", err=True)
    return settings


def _with_store(settings: Settings, work: Callable[[Store], Awaitable[T]]) -> T:
    async def run() -> T:
        store = create_store(
            settings.database_url, encode_job, clock=time.time, sqlite_synchronous=settings.sqlite_synchronous
        )
        try:
            await store.open()
            return await work(store)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except (StorageError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None


@click.group(help="Reelay: one API for asynchronous video generation across five Seedance 2.0 providers.")
@click.version_option(package_name="reelay", prog_name="reelay")
def main() -> None:
    pass


@main.command(help="Run the service (production).")
@click.option("--host", default=None, help="Bind address (default REELAY_HOST or 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default REELAY_PORT or 8000).")
@click.option(
    "--role",
    type=click.Choice(["all", "api", "worker"]),
    default="all",
    envvar="REELAY_ROLE",
    show_default=True,
    help="api: HTTP only; worker: dispatch and polling (probes and metrics only); all: both. "
    "api and worker need PostgreSQL.",
)
def serve(host: str | None, port: int | None, role: str) -> None:
    from service.app import close_streams, create_app
    from service.errors import StartupError
    from service.server import ConnectionLimits, listen, make_server, run, serve_all

    settings = _settings()
    configure_logging(settings.log_format, settings.log_level)
    # Fail here, with one clear line, if the database cannot be opened, migrated or written.
    _with_store(settings, lambda store: store.check())
    try:
        app = create_app(settings, role=role)  # type: ignore[arg-type]
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        sock = listen(host or settings.host, settings.port if port is None else port)
        server = make_server(app, sock, limits=ConnectionLimits.from_settings(settings))
        run(serve_all([server], on_stop=lambda: close_streams(app)))
    except (OSError, StartupError) as exc:
        raise click.ClickException(str(exc)) from None


@main.command(
    help="Run the service with sandbox emulators of the providers, on the database every other command uses "
    "(REELAY_DATABASE_URL, by default ./var/reelay.db), so `reelay keys` manages its keys."
)
@click.option("--port", type=int, default=8000, show_default=True, help="Reelay's port.")
@click.option("--sandbox-port", type=int, default=8100, show_default=True, help="First emulator port.")
def dev(port: int, sandbox_port: int) -> None:
    from service.dev import run_dev
    from service.errors import StartupError
    from service.server import run

    try:
        run(run_dev(port=port, sandbox_port=sandbox_port))
    except (StorageError, ConfigError, OSError, StartupError) as exc:
        raise click.ClickException(str(exc)) from None


@main.command(
    "listen",
    help="Receive Reelay's webhooks on this machine: verify each delivery with the secret and print one line per "
    "event (time, type, job id, job status, `verified` or the reason it was refused, [webhook-id]). Answers 204 to "
    "a verified delivery and 401 to any other request, on any path.",
)
@click.option("--port", type=int, default=9000, show_default=True, help="Port to receive on.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address.")
@click.option(
    "--secret",
    "secrets",
    multiple=True,
    required=True,
    help="The webhook secret (whsec_...); give it twice during a rotation, either one verifies.",
)
def listen_command(port: int, host: str, secrets: tuple[str, ...]) -> None:
    from reelay_signing import SignatureError
    from service.listen import webhook_receiver
    from service.server import listen, make_server, run, serve_all

    configure_logging("console", "warning")  # the server's own lines would bury the deliveries
    try:
        app = webhook_receiver(secrets, report=click.echo)
    except SignatureError as exc:
        raise click.BadParameter(exc.message, param_hint="--secret") from None
    try:
        server = make_server(app, listen(host, port))
    except OSError as exc:
        raise click.ClickException(str(exc)) from None
    ready = f"Ready: receiving on {server.url} (any path), verifying with {len(secrets)} secret(s). Ctrl-C stops."
    run(serve_all([server], on_started=lambda: click.echo(ready)))


@main.command(help="Apply pending database migrations.")
def migrate() -> None:
    settings = _database_settings()

    async def work(store: Store) -> list[str]:
        return await store.migrate()  # open() applied them already; this reports an up-to-date schema

    _with_store(settings, work)
    click.echo("database schema is up to date")


@main.group(help="Create, list and revoke API keys.")
def keys() -> None:
    pass


def _amount(option: str) -> Callable[[click.Context, click.Parameter, str | None], Decimal | None]:
    """A click callback reading a budget limit (a decimal, or "none"): a bad one is a usage error (exit 2)."""

    def parse(ctx: click.Context, param: click.Parameter, value: str | None) -> Decimal | None:
        if value is None:
            return None
        try:
            return parse_amount(value, option)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None

    return parse


_PERIOD = click.Choice(["day", "month", "total"])
_PERIOD_HELP = "The budget's period, in UTC (default total: one limit for the key's whole life)."


@keys.command("create", help="Create a key; it is shown once and stored only as a hash.")
@click.option("--name", required=True, help="Who or what the key is for.")
@click.option(
    "--budget-usd", callback=_amount("--budget-usd"), metavar="AMOUNT", help="Most USD its jobs may cost per period."
)
@click.option(
    "--budget-credits",
    callback=_amount("--budget-credits"),
    metavar="AMOUNT",
    help="Most provider credits its jobs may cost per period.",
)
@click.option("--budget-period", type=_PERIOD, default=None, help=_PERIOD_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def keys_create(
    name: str, budget_usd: Decimal | None, budget_credits: Decimal | None, budget_period: str | None, as_json: bool
) -> None:
    from service.keys import create_key

    try:
        usd, credits, period = budget_fields(budget_usd, budget_credits, budget_period)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    record, full_key = _with_store(
        _database_settings(),
        lambda store: create_key(store, name, now=time.time(), budget_usd=usd, budget_credits=credits, period=period),
    )
    if as_json:
        shown = {"id": record.id, "name": record.name, "key": full_key, **_budget_json(record)}
        click.echo(msgspec.json.encode(shown).decode())
    else:
        click.echo(f"id:     {record.id}\nname:   {record.name}\nkey:    {full_key}\nbudget: {describe(record)}")
        click.echo("Store the key now: it is not shown again.", err=True)


@keys.command(
    "update",
    help="Change a key's budget: a limit's AMOUNT, or none to remove it; the options not given stay as they are. "
    "What its jobs already spent and reserved in the current period still counts.",
)
@click.argument("key_id")
@click.option("--budget-usd", metavar="AMOUNT|none", help="Most USD its jobs may cost per period, or none.")
@click.option("--budget-credits", metavar="AMOUNT|none", help="Most provider credits per period, or none.")
@click.option("--budget-period", type=_PERIOD, default=None, help=_PERIOD_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def keys_update(
    key_id: str, budget_usd: str | None, budget_credits: str | None, budget_period: str | None, as_json: bool
) -> None:
    from service.keys import update_budget

    try:
        usd = None if budget_usd is None else parse_amount(budget_usd, "--budget-usd")
        credits = None if budget_credits is None else parse_amount(budget_credits, "--budget-credits")
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if budget_usd is None and budget_credits is None and budget_period is None:
        raise click.UsageError("nothing to change: give --budget-usd, --budget-credits or --budget-period")
    record = _with_store(
        _database_settings(),
        lambda store: update_budget(
            store,
            key_id,
            usd=usd if budget_usd is not None else ...,
            credits=credits if budget_credits is not None else ...,
            period=budget_period,
        ),
    )
    if record is None:
        click.echo(f"no key with id {key_id}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(msgspec.json.encode({"id": record.id, "name": record.name, **_budget_json(record)}).decode())
    else:
        click.echo(f"{record.id}: {describe(record)}")


def _budget_json(record: ApiKeyRecord) -> dict[str, Any]:
    """A key's budget fields for --json output: limits as strings with their exact digits."""
    return {
        "budget_usd": None if record.budget_usd is None else str(record.budget_usd),
        "budget_credits": None if record.budget_credits is None else str(record.budget_credits),
        "budget_period": record.budget_period,
    }


@keys.command("list", help="List keys (never their secrets), with their budgets.")
def keys_list() -> None:
    records = _with_store(_database_settings(), lambda store: store.list_api_keys())
    if not records:
        click.echo("no keys; create one with `reelay keys create --name NAME`")
    for record in records:
        state = f"revoked {record.revoked_at}" if record.revoked_at else "active"
        click.echo(f"{record.id}  {record.name:<24} created {record.created_at}  {state}  {describe(record)}")


@keys.command("revoke", help="Revoke a key by its id (see `reelay keys list`).")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    from service.keys import revoke_key

    if not _with_store(_database_settings(), lambda store: revoke_key(store, key_id, now=time.time())):
        click.echo(f"no active key with id {key_id}", err=True)
        sys.exit(1)
    click.echo(f"revoked {key_id}")


# -- operations --------------------------------------------------------------------------------

_PG_TOOLS = (
    "reelay backup and restore copy SQLite database files; back up PostgreSQL with its own tools: "
    'pg_dump --format=custom --file=reelay.dump "$REELAY_DATABASE_URL", and pg_restore to restore'
)


def _file_backups(settings: Settings) -> SupportsBackup:
    """The store, unopened: a copy needs no migration and must not apply one."""
    if settings.database_url.startswith(("postgresql:", "postgres:")):
        raise click.ClickException(_PG_TOOLS)
    try:
        store = create_store(
            settings.database_url, encode_job, clock=time.time, sqlite_synchronous=settings.sqlite_synchronous
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if not isinstance(store, SupportsBackup):
        raise click.ClickException(_PG_TOOLS)
    return store


def _copy(work: Callable[[_PageBar], Coroutine[Any, Any, BackupReport]], label: str) -> BackupReport:
    bar = _PageBar(label)
    try:
        return asyncio.run(work(bar))
    except StorageError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        bar.close()


class _PageBar:
    """Progress of a database copy on stderr, drawn once the copy knows its size (label only when not a tty)."""

    def __init__(self, label: str) -> None:
        self._label = label
        self._bar: ProgressBar[int] | None = None

    def __call__(self, copied: int, total: int) -> None:
        if self._bar is None:
            self._bar = click.progressbar(length=total, label=self._label, file=sys.stderr, show_pos=True)
        self._bar.update(copied - self._bar.pos)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.render_finish()


def _describe(report: BackupReport) -> None:
    click.echo(f"  size:           {report.size_bytes / 1_048_576:.1f} MiB ({report.size_bytes} bytes)")
    click.echo(f"  jobs:           {report.jobs}")
    click.echo(f"  events:         {report.events}")
    click.echo(f"  schema version: {report.schema_version}")
    click.echo("  integrity:      ok")


@main.command(
    help="Copy the SQLite database to PATH, consistently, while the service runs; then verify the copy. Archived "
    "assets (REELAY_ASSETS) are not in it: copy a file:// directory after the database (rsync -a; files are never "
    "changed in place), or turn on versioning for an s3:// bucket."
)
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Overwrite PATH if it exists.")
def backup(path: Path, force: bool) -> None:
    store = _file_backups(_database_settings())
    if path.exists() and not force:
        raise click.ClickException(f"{path} already exists; pass --force to overwrite it")
    report = _copy(lambda bar: store.backup(path, bar, overwrite=force), "copying")
    click.echo(f"backup written to {report.path}")
    _describe(report)


@main.command(
    help="Replace the SQLite database with BACKUP. Refused while the service, or any other process on this "
    "host, has the database open: stop the service first."
)
@click.argument("source", metavar="BACKUP", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def restore(source: Path, yes: bool) -> None:
    settings = _database_settings()
    store = _file_backups(settings)
    if not yes:
        click.confirm(f"Replace {settings.database} with {source}? What it holds now is lost", abort=True)
    report = _copy(lambda bar: store.restore(source, bar), "restoring")
    click.echo(f"restored {source} into {report.path}")
    _describe(report)
    if report.schema_version < migrations.newest("sqlite"):
        click.echo(
            "the backup's schema is older than this Reelay: `reelay migrate` (or starting the service) updates it"
        )


@main.command(
    help="Delete finished jobs (with their events, webhook deliveries and archived assets), webhook receipts, "
    "idempotency keys and test deliveries older than REELAY_RETENTION_DAYS (or --days); and, with "
    "REELAY_ASSET_RETENTION_DAYS, the archived assets of jobs completed longer ago than that (the jobs stay). "
    "Unfinished jobs are never deleted. Safe while the service runs."
)
@click.option(
    "--days", type=click.IntRange(min=1), default=None, help="Retention in days (default REELAY_RETENTION_DAYS)."
)
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
def prune(days: int | None, dry_run: bool) -> None:
    from service.assets.retention import deleting_assets, expire_assets
    from service.assets.store import open_assets

    settings = _database_settings()
    days = days or settings.retention_days
    asset_days = settings.asset_retention_days
    if not days and not asset_days:
        click.echo(
            "retention is off (REELAY_RETENTION_DAYS and REELAY_ASSET_RETENTION_DAYS unset or 0): nothing pruned; "
            "--days N prunes once"
        )
        return
    now = time.time()
    before = to_iso(now - days * 86_400) if days else None
    assets_before = to_iso(now - asset_days * 86_400) if asset_days else None

    async def work(store: Store) -> tuple[PruneCounts | None, int | None]:
        assets = open_assets(settings)
        try:
            counts = None
            if before is not None:
                hook = deleting_assets(assets) if assets is not None else None
                counts = await (store.prunable(before) if dry_run else store.prune(before, before_jobs_pruned=hook))
            expired = None
            if assets_before is not None:
                expired = await expire_assets(store, assets, assets_before, at=to_iso(now), delete=not dry_run)
            return counts, expired
        finally:
            if assets is not None:
                await assets.close()

    counts, expired = _with_store(settings, work)
    done = "dry run: would remove" if dry_run else "removed"
    if counts is not None:
        click.echo(f"{done} what is older than {days} days ({before}):")
        click.echo(f"  jobs:             {counts.jobs} (with their archived assets)")
        click.echo(f"  events:           {counts.events}")
        click.echo(f"  webhook receipts: {counts.webhook_receipts}")
        click.echo(f"  idempotency keys: {counts.idempotency_keys}")
        click.echo(f"  deliveries:       {counts.deliveries}")
    if expired is not None:
        click.echo(f"{done} the archived assets of jobs completed more than {asset_days} days ago ({assets_before}):")
        click.echo(f"  jobs:             {expired} (kept, marked output.assets_expired_at)")
