"""`reelay dev`: Reelay and every provider's sandbox emulator in one process, on the CLI's database."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping

import click
import msgspec

from sandbox import SANDBOXES, SandboxKnobs, SandboxSpec
from service.app import close_streams, create_app
from service.ids import new_webhook_secret
from service.keys import create_key
from service.logging import configure_logging
from service.providers import ADAPTERS, ProviderRegistry
from service.routes import Route
from service.server import ConnectionLimits, listen, make_server, serve_all
from service.settings import ProviderSettings, Settings
from service.wire import encode_job
from storage import create_store

# Quick enough to watch a job finish, slow enough to see it pass through each status.
DEV_KNOBS = SandboxKnobs(processing_after_s=1.0, complete_after_s=4.0)
# The example route `reelay dev` ships unless REELAY_ROUTES or REELAY_ROUTES_FILE sets routes: one model, two
# resellers (candidates whose provider is not registered are left out).
EXAMPLE_ROUTE = Route(
    id="seedance-2.0-fast",
    strategy="priority",
    candidates=("seedancee2/fast", "mindvideo/doubao-seedance-2-0-fast"),
)


def emulator_settings(spec: SandboxSpec, base_url: str) -> ProviderSettings:
    """Reelay's settings for a provider whose emulator listens at `base_url`."""
    return ProviderSettings(
        base_url=base_url,
        api_key=spec.api_key,
        webhook_secrets=(spec.webhook_secret,) if spec.webhook_secret else (),
        options=dict(spec.options),
    )


def dev_settings(
    port: int,
    sandbox_port: int,
    *,
    adapters: ProviderRegistry = ADAPTERS,
    sandboxes: Mapping[str, SandboxSpec] = SANDBOXES,
) -> Settings:
    """Settings pointing every emulated provider at its emulator, the emulators on ports from `sandbox_port` on."""
    # The database stays REELAY_DATABASE_URL (./var/reelay.db by default), so `reelay keys` sees dev's keys.
    base = Settings.from_env(adapters=adapters)
    providers = dict(base.providers)
    for offset, spec in enumerate(sandboxes.values()):
        emulated = emulator_settings(spec, f"http://127.0.0.1:{sandbox_port + offset}")
        # An option set in the environment wins over the emulator's.
        options = {**emulated.options, **base.provider(spec.provider).options}
        providers[spec.provider] = msgspec.structs.replace(emulated, options=options)
    routes = base.routes
    if not any(os.environ.get(name) for name in ("REELAY_ROUTES", "REELAY_ROUTES_FILE")):
        models = {spec.id for adapter in adapters.values() for spec in adapter.models}
        candidates = tuple(c for c in EXAMPLE_ROUTE.candidates if c in models)
        if candidates:
            routes = {EXAMPLE_ROUTE.id: msgspec.structs.replace(EXAMPLE_ROUTE, candidates=candidates)}
    return msgspec.structs.replace(
        base,
        routes=routes,
        public_url=f"http://127.0.0.1:{port}",
        host="127.0.0.1",
        port=port,
        log_format="console" if "REELAY_LOG_FORMAT" not in os.environ else base.log_format,
        providers=providers,
        callback_grace_seconds=min(base.callback_grace_seconds, 10.0),
        # The emulators and `reelay listen` answer on loopback, which the webhook guard refuses by default.
        webhook_allow_private=True,
    )


async def run_dev(
    *,
    port: int,
    sandbox_port: int,
    adapters: ProviderRegistry = ADAPTERS,
    sandboxes: Mapping[str, SandboxSpec] = SANDBOXES,
) -> None:
    """Reelay with `adapters` and one emulator per entry of `sandboxes`, on consecutive ports from `sandbox_port`."""
    emulator_ports = range(sandbox_port, sandbox_port + len(sandboxes))
    if port in emulator_ports:
        raise click.UsageError(
            f"--port {port} is one of the emulators' ports {emulator_ports[0]}-{emulator_ports[-1]} (--sandbox-port)"
        )
    settings = dev_settings(port, sandbox_port, adapters=adapters, sandboxes=sandboxes)
    configure_logging(settings.log_format, settings.log_level)
    # Six servers' start-up and shutdown lines would bury the banner; their warnings and errors still show.
    logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
    try:
        sockets = [listen(settings.host, port)] + [listen("127.0.0.1", p) for p in emulator_ports]
    except OSError as exc:
        raise click.ClickException(f"{exc}; pick free ports with --port and --sandbox-port") from None
    store = create_store(settings.database_url, encode_job, clock=time.time, sqlite_synchronous="NORMAL")
    await store.open()
    try:
        key, api_key = await create_key(store, "reelay-dev", now=time.time())
        webhook_secret = (await store.webhook_secret(key.id, new_secret=new_webhook_secret())).secret
    finally:
        await store.close()
    app = create_app(settings, adapters=adapters)
    servers = [make_server(app, sockets[0], graceful_seconds=3, limits=ConnectionLimits.from_settings(settings))]
    for spec, sock in zip(sandboxes.values(), sockets[1:], strict=True):
        servers.append(make_server(spec.build(DEV_KNOBS), sock, graceful_seconds=1))

    def announce() -> None:
        url = settings.public_url
        post = f"curl -s -X POST {url}/v1/jobs -H 'Authorization: Bearer {api_key}' -H 'Content-Type: application/json'"
        prompt = "waves on black rocks"
        route = next(iter(settings.routes.values()), None)
        archived = (
            ""
            if settings.assets == "off"
            else f"Outputs are copied into {settings.assets} (job.archived); download a finished job's video:\n"
            f"  curl -o video.mp4 '{url}/v1/jobs/JOB_ID/content?variant=video&index=0' "
            f"-H 'Authorization: Bearer {api_key}'\n"
        )
        on_route = (
            ""
            if route is None
            else f"Submit a job to the route {route.id} (it fails over in order: {' → '.join(route.candidates)}):\n"
            f"""  {post} -d '{{"model": "{route.id}", "input": {{"prompt": "{prompt}"}}}}'\n"""
        )
        click.echo(
            f"\nReelay dev is ready on {url} (database {settings.database})\n"
            f"Sandbox emulators: {', '.join(f'{n} :{sandbox_port + i}' for i, n in enumerate(sandboxes))}\n\n"
            f"API key (shown once): {api_key}\n"
            f"For the README's examples, in your shell:\n"
            f"  export KEY={api_key}\n"
            f"Manage keys with reelay keys list, reelay keys create --name NAME, reelay keys revoke ID\n"
            f"  (run from this folder: they use this same database)\n\n"
            f"Submit a job:\n"
            f"""  {post} -d '{{"model": "seedancee2/pro", "input": {{"prompt": "{prompt}", "duration": 5}}}}'\n"""
            f"{on_route}"
            f"Watch events:\n"
            f"  curl -N {url}/v1/events -H 'Authorization: Bearer {api_key}'\n"
            f"{archived}"
            f"Try webhooks: in another shell, start a receiver that verifies and prints each delivery\n"
            f"  reelay listen --port 9000 --secret {webhook_secret}\n"
            f'and add "webhook_url": "http://127.0.0.1:9000/" to the job\'s JSON above.\n',
            err=True,
        )

    await serve_all(servers, on_started=announce, on_stop=lambda: close_streams(app))
