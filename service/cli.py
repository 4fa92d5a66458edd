"""The `reelay` command line: serve, dev, keys and migrate."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
import msgspec

from service.jobs import encode_job
from service.logging import configure_logging
from service.settings import ConfigError, Settings
from storage import StorageError, Store, create_store

T = TypeVar("T")


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _with_store(settings: Settings, work: Callable[[Store], Awaitable[T]]) -> T:
    async def run() -> T:
        store = create_store(settings.database_url, encode_job, sqlite_synchronous=settings.sqlite_synchronous)
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
def main() -> None:
    pass


@main.command(help="Run the service (production).")
@click.option("--host", default=None, help="Bind address (default REELAY_HOST or 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default REELAY_PORT or 8000).")
def serve(host: str | None, port: int | None) -> None:
    from service.app import create_app
    from service.server import make_server, serve_all

    settings = _settings()
    configure_logging(settings.log_format, settings.log_level)
    app = create_app(settings)
    server = make_server(app, host or settings.host, port or settings.port)
    asyncio.run(serve_all([server], on_stop=lambda: _close_streams(app)))


def _close_streams(app: Any) -> None:
    ctx = getattr(app.state, "ctx", None)
    if ctx is not None:
        ctx.hub.close_all()


@main.command(help="Run the service with sandbox emulators of the providers, on SQLite under ./var.")
@click.option("--port", type=int, default=8000, show_default=True, help="Reelay's port.")
@click.option("--sandbox-port", type=int, default=8100, show_default=True, help="First emulator port.")
@click.option("--data-dir", default="./var", show_default=True, help="Where the SQLite file lives.")
def dev(port: int, sandbox_port: int, data_dir: str) -> None:
    from service.dev import run_dev

    try:
        asyncio.run(run_dev(port=port, sandbox_port=sandbox_port, data_dir=data_dir))
    except (StorageError, ConfigError, OSError) as exc:
        raise click.ClickException(str(exc)) from None


@main.command(help="Apply pending database migrations.")
def migrate() -> None:
    settings = _settings()

    async def work(store: Store) -> list[str]:
        return await store.migrate()  # open() applied them already; this reports an up-to-date schema

    _with_store(settings, work)
    click.echo("database schema is up to date")


@main.group(help="Create, list and revoke API keys.")
def keys() -> None:
    pass


@keys.command("create", help="Create a key; it is shown once and stored only as a hash.")
@click.option("--name", required=True, help="Who or what the key is for.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def keys_create(name: str, as_json: bool) -> None:
    from service.keys import create_key

    record, full_key = _with_store(_settings(), lambda store: create_key(store, name))
    if as_json:
        click.echo(msgspec.json.encode({"id": record.id, "name": record.name, "key": full_key}).decode())
    else:
        click.echo(f"id:   {record.id}\nname: {record.name}\nkey:  {full_key}")
        click.echo("Store the key now: it is not shown again.", err=True)


@keys.command("list", help="List keys (never their secrets).")
def keys_list() -> None:
    records = _with_store(_settings(), lambda store: store.list_api_keys())
    if not records:
        click.echo("no keys; create one with `reelay keys create --name NAME`")
    for record in records:
        state = f"revoked {record.revoked_at}" if record.revoked_at else "active"
        click.echo(f"{record.id}  {record.name:<24} created {record.created_at}  {state}")


@keys.command("revoke", help="Revoke a key by its id (see `reelay keys list`).")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    from service.keys import revoke_key

    if not _with_store(_settings(), lambda store: revoke_key(store, key_id)):
        click.echo(f"no active key with id {key_id}", err=True)
        sys.exit(1)
    click.echo(f"revoked {key_id}")
