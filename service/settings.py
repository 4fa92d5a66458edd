"""Typed settings read from REELAY_* environment variables; nothing is read at import time."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

import msgspec

from service.errors import ConfigError
from service.routes import Route, parse_routes

if TYPE_CHECKING:
    from service.providers import ProviderRegistry
    from service.providers.base import ProviderAdapter


class ProviderSettings(msgspec.Struct, frozen=True, kw_only=True):
    base_url: str
    api_key: str | None = None
    # Several secrets separated by commas are all accepted, so a secret can be rotated without downtime.
    webhook_secrets: tuple[str, ...] = ()
    webhook_tolerance_seconds: int = 300
    options: dict[str, str] = msgspec.field(default_factory=dict)
    # Requests per second to this provider (creates and polls together), shared by every replica; None: unlimited.
    rate_limit: float | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.api_key)


# At once, 5 s, 5 min, 30 min, 2 h, 5 h, then every 10 h: 13 attempts over about 78 h.
DEFAULT_RETRY_SCHEDULE: tuple[float, ...] = (0, 5, 300, 1800, 7200, 18000, *(36000,) * 7)


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    database_url: str = "sqlite:///./var/reelay.db"
    public_url: str = "http://127.0.0.1:8000"
    host: str = "127.0.0.1"
    port: int = 8000
    log_format: Literal["json", "console"] = "json"
    log_level: str = "info"
    # By provider name: `from_env` reads one entry for each adapter of the registry it is given; a provider
    # missing here is not configured.
    providers: dict[str, ProviderSettings] = msgspec.field(default_factory=dict)
    model_aliases: dict[str, str] = msgspec.field(default_factory=dict)
    # Route ids (REELAY_ROUTES or REELAY_ROUTES_FILE), each naming its candidate model ids.
    routes: dict[str, Route] = msgspec.field(default_factory=dict)
    # On a route, a candidate is left after this many transient create failures in a row (429, 5xx, connection).
    route_transient_attempts: int = 3
    dispatch_concurrency: int = 8
    poll_concurrency: int = 8
    job_timeout_seconds: float = 3600.0
    callback_grace_seconds: float = 120.0
    upstream_timeout_seconds: float = 30.0
    webhook_tolerance_seconds: int = 300
    max_body_bytes: int = 1_048_576
    # Slow or oversized requests, refused before they pin memory or a connection (see service/server.py).
    max_header_bytes: int = 65_536
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 30.0
    keepalive_timeout_seconds: int = 5
    # Total length of the `data:` URIs in one job's input; under the body cap, leaving room for the rest of it.
    max_inline_bytes: int = 786_432
    sse_heartbeat_seconds: float = 15.0
    sse_queue_size: int = 1000
    sse_retry_ms: int = 2000
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    rate_limit_per_second: float = 100.0
    rate_limit_burst: int = 200
    sse_max_per_key: int = 50
    # PostgreSQL: a stream's slot outlives its replica by at most this (live replicas renew every third of it).
    stream_slot_ttl_seconds: float = 30.0
    cors_origins: tuple[str, ...] = ()
    min_free_disk_bytes: int = 16 * 1024 * 1024
    shutdown_drain_seconds: float = 5.0
    # How long a worker holds a claimed job; must outlast an upstream call, so never below the timeout.
    lease_seconds: float = 120.0
    # `reelay prune` deletes finished jobs (and their deliveries), receipts, idempotency keys and test deliveries
    # older than this; 0 keeps everything.
    retention_days: int = 0
    # Lets caller webhooks reach private and loopback hosts (the guard is service/egress.py).
    webhook_allow_private: bool = False
    # Caller webhooks: a 2xx within the timeout is success; each failed attempt waits the next delay of the
    # schedule (the first entry delays the first attempt); an endpoint failing this long is disabled.
    webhook_timeout_seconds: float = 15.0
    webhook_retry_schedule: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE
    webhook_endpoint_concurrency: int = 8  # attempts in flight to one receiver, per process
    webhook_concurrency: int = 1000  # attempts in flight in all, per process
    webhook_disable_after_seconds: float = 5 * 86400.0
    webhook_rotation_overlap_seconds: float = 86400.0  # how long a replaced secret keeps signing beside the new one
    webhook_max_endpoints: int = 50  # endpoints one API key may register
    # Provider circuits: this many consecutive counted create failures open a provider's circuit for the cool-down;
    # each failed half-open probe doubles it, up to the cap.
    circuit_failures: int = 5
    circuit_cooldown_seconds: float = 30.0
    circuit_max_cooldown_seconds: float = 600.0
    # Under a budget, a model without a price in the budget's unit is refused unless this allows it (it then
    # reserves 0 and counts what the provider reports charging).
    budget_allow_unpriced: bool = False
    # The asset store (service/assets/store.py): `file://<dir>`, `s3://bucket/prefix`, or `off`.
    assets: str = "file://./var/assets"
    # S3: an S3-compatible endpoint (None: AWS) and the usual AWS_* credentials (None: obstore's own lookup).
    s3_endpoint_url: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    s3_session_token: str | None = None
    s3_region: str | None = None
    # Asset URLs (issue 15, serving): how long a signed `output.assets[].url` works, and its signing secret (None:
    # the server secret "asset_urls" the database keeps for every replica).
    asset_url_ttl_seconds: float = 86400.0
    asset_url_secret: str | None = None
    # `reelay prune` deletes the archived assets of jobs completed longer ago than this (the job stays); 0: an
    # asset lives as long as its job.
    asset_retention_days: int = 0
    # The archiver (service/loops/archiver.py): an output larger than this, or of a type not listed, is not copied
    # (`archive_error`); at most `asset_concurrency` jobs' outputs are copied at once per process; a copy that keeps
    # failing (5xx, connection errors) is retried until this long after the job succeeded.
    asset_max_bytes: int = 2 * 1024**3
    asset_content_types: tuple[str, ...] = (
        "video/mp4",
        "video/webm",
        "video/quicktime",
        "image/jpeg",
        "image/png",
        "image/webp",
    )
    asset_concurrency: int = 4
    asset_copy_deadline_seconds: float = 86400.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, adapters: ProviderRegistry) -> Settings:
        """Build settings from REELAY_* variables (default: the process environment), with the provider settings
        of every adapter in `adapters`."""
        env = os.environ if environ is None else environ
        reader = _Reader(env)
        defaults = cls()
        tolerance = reader.integer("REELAY_WEBHOOK_TOLERANCE_SECONDS", defaults.webhook_tolerance_seconds, low=1)
        providers = {name: reader.provider(adapter, tolerance) for name, adapter in adapters.items()}
        aliases = reader.mapping("REELAY_MODEL_ALIASES")
        models = {spec.id: spec for adapter in adapters.values() for spec in adapter.models}
        return cls(
            database_url=reader.text("REELAY_DATABASE_URL", defaults.database_url),
            public_url=reader.text("REELAY_PUBLIC_URL", defaults.public_url).rstrip("/"),
            host=reader.text("REELAY_HOST", defaults.host),
            port=reader.integer("REELAY_PORT", defaults.port, low=0, high=65535),
            log_format=reader.choice("REELAY_LOG_FORMAT", defaults.log_format, ("json", "console")),  # type: ignore[arg-type]
            log_level=reader.choice(
                "REELAY_LOG_LEVEL", defaults.log_level, ("debug", "info", "warning", "error", "critical")
            ),
            providers=providers,
            model_aliases=aliases,
            routes=reader.routes(models, aliases),
            route_transient_attempts=reader.integer(
                "REELAY_ROUTE_TRANSIENT_ATTEMPTS", defaults.route_transient_attempts, low=1
            ),
            dispatch_concurrency=reader.integer("REELAY_DISPATCH_CONCURRENCY", defaults.dispatch_concurrency, low=1),
            poll_concurrency=reader.integer("REELAY_POLL_CONCURRENCY", defaults.poll_concurrency, low=1),
            job_timeout_seconds=reader.number("REELAY_JOB_TIMEOUT_SECONDS", defaults.job_timeout_seconds),
            callback_grace_seconds=reader.number("REELAY_CALLBACK_GRACE_SECONDS", defaults.callback_grace_seconds),
            upstream_timeout_seconds=reader.number(
                "REELAY_UPSTREAM_TIMEOUT_SECONDS", defaults.upstream_timeout_seconds
            ),
            webhook_tolerance_seconds=tolerance,
            max_body_bytes=reader.integer("REELAY_MAX_BODY_BYTES", defaults.max_body_bytes, low=1024),
            max_header_bytes=reader.integer("REELAY_MAX_HEADER_BYTES", defaults.max_header_bytes, low=1024),
            header_timeout_seconds=reader.number("REELAY_HEADER_TIMEOUT_SECONDS", defaults.header_timeout_seconds),
            body_timeout_seconds=reader.number("REELAY_BODY_TIMEOUT_SECONDS", defaults.body_timeout_seconds),
            keepalive_timeout_seconds=reader.integer(
                "REELAY_KEEPALIVE_TIMEOUT_SECONDS", defaults.keepalive_timeout_seconds, low=1
            ),
            max_inline_bytes=reader.integer("REELAY_MAX_INLINE_BYTES", defaults.max_inline_bytes, low=0),
            sse_heartbeat_seconds=reader.number("REELAY_SSE_HEARTBEAT_SECONDS", defaults.sse_heartbeat_seconds),
            sse_queue_size=reader.integer("REELAY_SSE_QUEUE_SIZE", defaults.sse_queue_size, low=1),
            sse_retry_ms=reader.integer("REELAY_SSE_RETRY_MS", defaults.sse_retry_ms, low=0),
            sqlite_synchronous=reader.choice(  # type: ignore[arg-type]
                "REELAY_SQLITE_SYNCHRONOUS", defaults.sqlite_synchronous, ("FULL", "NORMAL")
            ),
            rate_limit_per_second=reader.number(
                "REELAY_RATE_LIMIT_PER_SECOND", defaults.rate_limit_per_second, allow_zero=True
            ),
            rate_limit_burst=reader.integer("REELAY_RATE_LIMIT_BURST", defaults.rate_limit_burst, low=1),
            sse_max_per_key=reader.integer("REELAY_SSE_MAX_PER_KEY", defaults.sse_max_per_key, low=1),
            stream_slot_ttl_seconds=reader.number("REELAY_STREAM_SLOT_TTL_SECONDS", defaults.stream_slot_ttl_seconds),
            cors_origins=tuple(o.strip() for o in env.get("REELAY_CORS_ORIGINS", "").split(",") if o.strip()),
            min_free_disk_bytes=reader.integer("REELAY_MIN_FREE_DISK_BYTES", defaults.min_free_disk_bytes, low=0),
            shutdown_drain_seconds=reader.number("REELAY_SHUTDOWN_DRAIN_SECONDS", defaults.shutdown_drain_seconds),
            lease_seconds=reader.number("REELAY_LEASE_SECONDS", defaults.lease_seconds),
            retention_days=reader.integer("REELAY_RETENTION_DAYS", defaults.retention_days, low=0),
            webhook_allow_private=reader.choice("REELAY_WEBHOOK_ALLOW_PRIVATE", "false", ("true", "false")) == "true",
            webhook_timeout_seconds=reader.number("REELAY_WEBHOOK_TIMEOUT", defaults.webhook_timeout_seconds),
            webhook_retry_schedule=reader.delays("REELAY_WEBHOOK_RETRY_SCHEDULE", defaults.webhook_retry_schedule),
            webhook_endpoint_concurrency=reader.integer(
                "REELAY_WEBHOOK_ENDPOINT_CONCURRENCY", defaults.webhook_endpoint_concurrency, low=1
            ),
            webhook_concurrency=reader.integer("REELAY_WEBHOOK_CONCURRENCY", defaults.webhook_concurrency, low=1),
            webhook_max_endpoints=reader.integer("REELAY_WEBHOOK_MAX_ENDPOINTS", defaults.webhook_max_endpoints, low=1),
            webhook_disable_after_seconds=reader.number(
                "REELAY_WEBHOOK_DISABLE_AFTER_SECONDS", defaults.webhook_disable_after_seconds
            ),
            webhook_rotation_overlap_seconds=reader.number(
                "REELAY_WEBHOOK_ROTATION_OVERLAP_SECONDS", defaults.webhook_rotation_overlap_seconds, allow_zero=True
            ),
            circuit_failures=reader.integer("REELAY_CIRCUIT_FAILURES", defaults.circuit_failures, low=1),
            circuit_cooldown_seconds=reader.number(
                "REELAY_CIRCUIT_COOLDOWN_SECONDS", defaults.circuit_cooldown_seconds
            ),
            circuit_max_cooldown_seconds=reader.number(
                "REELAY_CIRCUIT_MAX_COOLDOWN_SECONDS", defaults.circuit_max_cooldown_seconds
            ),
            budget_allow_unpriced=reader.choice("REELAY_BUDGET_ALLOW_UNPRICED", "false", ("true", "false")) == "true",
            assets=reader.assets("REELAY_ASSETS", defaults.assets),
            s3_endpoint_url=reader.endpoint("REELAY_S3_ENDPOINT_URL"),
            s3_access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
            s3_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
            s3_session_token=env.get("AWS_SESSION_TOKEN") or None,
            s3_region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            asset_url_ttl_seconds=reader.number("REELAY_ASSET_URL_TTL_SECONDS", defaults.asset_url_ttl_seconds),
            asset_url_secret=env.get("REELAY_ASSET_URL_SECRET", "").strip() or None,
            asset_retention_days=reader.integer("REELAY_ASSET_RETENTION_DAYS", defaults.asset_retention_days, low=0),
            asset_max_bytes=reader.integer("REELAY_ASSET_MAX_BYTES", defaults.asset_max_bytes, low=1),
            asset_content_types=reader.media_types("REELAY_ASSET_CONTENT_TYPES", defaults.asset_content_types),
            asset_concurrency=reader.integer("REELAY_ASSET_CONCURRENCY", defaults.asset_concurrency, low=1),
            asset_copy_deadline_seconds=reader.number(
                "REELAY_ASSET_COPY_DEADLINE_SECONDS", defaults.asset_copy_deadline_seconds
            ),
        )

    def __post_init__(self) -> None:
        if self.lease_seconds <= self.upstream_timeout_seconds:
            raise ConfigError(
                f"REELAY_LEASE_SECONDS ({self.lease_seconds:g}) must exceed REELAY_UPSTREAM_TIMEOUT_SECONDS "
                f"({self.upstream_timeout_seconds:g}): a lease must outlast the upstream call it covers"
            )
        if self.lease_seconds <= 2 * self.webhook_timeout_seconds:
            raise ConfigError(
                f"REELAY_LEASE_SECONDS ({self.lease_seconds:g}) must exceed twice REELAY_WEBHOOK_TIMEOUT "
                f"({self.webhook_timeout_seconds:g}): a claimed delivery may wait for one attempt before its own"
            )
        if self.circuit_max_cooldown_seconds < self.circuit_cooldown_seconds:
            raise ConfigError(
                f"REELAY_CIRCUIT_MAX_COOLDOWN_SECONDS ({self.circuit_max_cooldown_seconds:g}) must be at least "
                f"REELAY_CIRCUIT_COOLDOWN_SECONDS ({self.circuit_cooldown_seconds:g})"
            )

        if self.asset_url_secret is not None and len(self.asset_url_secret) < 16:
            raise ConfigError("REELAY_ASSET_URL_SECRET must be at least 16 characters: it signs every asset URL")

    def provider(self, name: str) -> ProviderSettings:
        return self.providers.get(name) or ProviderSettings(base_url="")

    @property
    def database(self) -> str:
        """The database for people to read: a SQLite file's absolute path, or a PostgreSQL URL without password."""
        if self.database_url.startswith("sqlite:///"):
            return os.path.abspath(self.database_url.removeprefix("sqlite:///"))
        url = re.sub(r"(://[^:/@?#]*:)[^/?#]*@", r"\1***@", self.database_url)
        return re.sub(r"([?&]password=)[^&#]*", r"\1***", url)


def provider_variable(provider: str, setting: str) -> str:
    """The environment variable of one provider's setting: REELAY_<PROVIDER>_<SETTING>."""
    return f"REELAY_{provider.upper()}_{setting.upper()}"


class _Reader:
    """Parses one variable at a time and names the variable in every error."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def text(self, name: str, default: str) -> str:
        value = self._env.get(name, "").strip()
        return value or default

    def integer(self, name: str, default: int, *, low: int | None = None, high: int | None = None) -> int:
        raw = self._env.get(name, "").strip()
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"at least {low}" if high is None else f"between {low} and {high}"
            raise ConfigError(f"{name} must be {bounds}, got {value}")
        return value

    def number(self, name: str, default: float, *, allow_zero: bool = False) -> float:
        raw = self._env.get(name, "").strip()
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {raw!r}") from None
        if not (value >= 0 if allow_zero else value > 0) or value != value or value == float("inf"):
            raise ConfigError(f"{name} must be {'zero or more' if allow_zero else 'positive'}, got {raw!r}")
        return value

    def choice(self, name: str, default: str, allowed: tuple[str, ...]) -> str:
        raw = self._env.get(name, "").strip()
        if not raw:
            return default
        for option in allowed:
            if raw.lower() == option.lower():
                return option
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {raw!r}")

    def media_types(self, name: str, default: tuple[str, ...]) -> tuple[str, ...]:
        """A comma-separated list of media types (`type/subtype`), at least one; compared in lower case."""
        raw = self._env.get(name, "").strip()
        if not raw:
            return default
        types = tuple(item.strip().lower() for item in raw.split(",") if item.strip())
        bad = [t for t in types if not re.fullmatch(r"[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+", t)]
        if bad or not types:
            raise ConfigError(f"{name} takes media types like video/mp4 separated by commas, got {raw!r}")
        return types

    def assets(self, name: str, default: str) -> str:
        """Where assets are kept: `file://<dir>`, `s3://<bucket>[/<prefix>]` or `off`."""
        raw = self.text(name, default)
        if raw.lower() == "off":
            return "off"
        if raw.startswith("file://") and raw.removeprefix("file://"):
            return raw
        if raw.startswith("s3://") and raw.removeprefix("s3://").split("/", 1)[0]:
            return raw
        raise ConfigError(f"{name} must be file://<dir>, s3://<bucket>/<prefix> or off, got {raw!r}")

    def endpoint(self, name: str) -> str | None:
        """An optional http(s)://host[:port] base URL, without its trailing slash."""
        raw = self.text(name, "").rstrip("/")
        if raw and not re.fullmatch(r"https?://[^/\s?#]+(/[^\s?#]*)?", raw):
            raise ConfigError(f"{name} must be an http:// or https:// URL, got {raw!r}")
        return raw or None

    def provider(self, adapter: type[ProviderAdapter], tolerance: int) -> ProviderSettings:
        """One provider's REELAY_<NAME>_* variables, with the defaults its adapter declares."""

        def variable(setting: str) -> str:
            return provider_variable(adapter.name, setting)

        secrets = self._env.get(variable("webhook_secret"), "")
        return ProviderSettings(
            base_url=self.text(variable("base_url"), adapter.default_base_url).rstrip("/"),
            api_key=self._env.get(variable("api_key")) or None,
            webhook_secrets=tuple(s.strip() for s in secrets.split(",") if s.strip()),
            webhook_tolerance_seconds=tolerance,
            options={name: self._env[variable(name)] for name in adapter.extra_settings if variable(name) in self._env},
            rate_limit=self.number(variable("rate_limit"), 0.0) or None,
        )

    def delays(self, name: str, default: tuple[float, ...]) -> tuple[float, ...]:
        """A comma-separated list of delays in seconds (zero or more each), at least one."""
        raw = self._env.get(name, "").strip()
        if not raw:
            return default
        delays: list[float] = []
        for item in raw.split(","):
            try:
                delay = float(item.strip())
            except ValueError:
                raise ConfigError(f"{name} takes delays in seconds separated by commas, got {item.strip()!r}") from None
            if not 0 <= delay < float("inf"):
                raise ConfigError(f"{name}: each delay must be zero or more seconds, got {item.strip()!r}")
            delays.append(delay)
        return tuple(delays)

    def routes(self, models: Mapping[str, object], aliases: Mapping[str, str]) -> dict[str, Route]:
        """REELAY_ROUTES (JSON), or the JSON file REELAY_ROUTES_FILE names; not both."""
        raw = self._env.get("REELAY_ROUTES", "").strip()
        path = self._env.get("REELAY_ROUTES_FILE", "").strip()
        if raw and path:
            raise ConfigError("REELAY_ROUTES and REELAY_ROUTES_FILE are both set; set one of them")
        if path:
            try:
                with open(path, encoding="utf-8") as file:
                    raw = file.read()
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"REELAY_ROUTES_FILE: cannot read {path}: {exc}") from None
            return parse_routes(raw, f"REELAY_ROUTES_FILE ({path})", models, aliases)
        return parse_routes(raw, "REELAY_ROUTES", models, aliases) if raw else {}

    def mapping(self, name: str) -> dict[str, str]:
        raw = self._env.get(name, "").strip()
        result: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in raw.split(","))):
            alias, sep, target = item.partition("=")
            if not sep or not alias.strip() or not target.strip():
                raise ConfigError(f"{name} takes alias=provider/model pairs separated by commas, got {item!r}")
            result[alias.strip()] = target.strip()
        return result
