"""Settings come only from the mapping given, with errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.errors import ConfigError
from service.providers import ADAPTERS, registry
from service.providers.seedancee2 import Seedancee2
from service.schedule import Backoff
from service.settings import Settings


def test_defaults_without_any_variable() -> None:
    settings = Settings.from_env({}, adapters=ADAPTERS)
    assert settings.database_url == "sqlite:///./var/reelay.db"
    assert settings.port == 8000
    assert settings.log_format == "json"
    assert not any(p.enabled for p in settings.providers.values())
    assert settings.provider("seedancee2").base_url == "https://api.seedancee2.ai"


def test_variables_are_read() -> None:
    settings = Settings.from_env(
        {
            "REELAY_PORT": "9000",
            "REELAY_PUBLIC_URL": "https://reelay.example.com/",
            "REELAY_LOG_FORMAT": "CONSOLE",
            "REELAY_SEEDANCEE2_API_KEY": "sk_seedancee2_live_x",
            "REELAY_SEEDANCEE2_BASE_URL": "http://127.0.0.1:8100/",
            "REELAY_SEEDANCEE2_WEBHOOK_SECRET": "new-secret, old-secret",
            "REELAY_WEBHOOK_TOLERANCE_SECONDS": "60",
            "REELAY_MINUIT_MODERATION": "disabled",
            "REELAY_MODEL_ALIASES": "seedance-2-fast=seedancee2/fast, cheap=seedancee2/mini",
            "REELAY_WEBHOOK_RETRY_SCHEDULE": "0, 10,60",
            "REELAY_WEBHOOK_DISABLE_AFTER_SECONDS": "86400",
            "REELAY_WEBHOOK_ROTATION_OVERLAP_SECONDS": "0",
            "REELAY_BUDGET_ALLOW_UNPRICED": "TRUE",
        },
        adapters=ADAPTERS,
    )
    assert settings.webhook_retry_schedule == (0, 10, 60)
    assert settings.webhook_disable_after_seconds == 86400
    assert settings.webhook_rotation_overlap_seconds == 0
    assert settings.budget_allow_unpriced
    assert settings.port == 9000
    assert settings.public_url == "https://reelay.example.com"
    assert settings.log_format == "console"
    seedance = settings.provider("seedancee2")
    assert seedance.enabled
    assert seedance.base_url == "http://127.0.0.1:8100"
    assert seedance.webhook_secrets == ("new-secret", "old-secret")
    assert seedance.webhook_tolerance_seconds == 60
    assert settings.provider("minuit").options == {"moderation": "disabled"}
    assert settings.model_aliases == {"seedance-2-fast": "seedancee2/fast", "cheap": "seedancee2/mini"}


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("REELAY_PORT", "http", "REELAY_PORT must be an integer"),
        ("REELAY_PORT", "70000", "REELAY_PORT must be between"),
        ("REELAY_LOG_FORMAT", "xml", "REELAY_LOG_FORMAT must be one of json, console"),
        ("REELAY_JOB_TIMEOUT_SECONDS", "-5", "REELAY_JOB_TIMEOUT_SECONDS must be positive"),
        ("REELAY_MODEL_ALIASES", "nonsense", "REELAY_MODEL_ALIASES takes alias=provider/model"),
        ("REELAY_SQLITE_SYNCHRONOUS", "OFF", "REELAY_SQLITE_SYNCHRONOUS must be one of FULL, NORMAL"),
        ("REELAY_MAX_HEADER_BYTES", "100", "REELAY_MAX_HEADER_BYTES must be at least 1024"),
        ("REELAY_KEEPALIVE_TIMEOUT_SECONDS", "2.5", "REELAY_KEEPALIVE_TIMEOUT_SECONDS must be an integer"),
        ("REELAY_WEBHOOK_RETRY_SCHEDULE", "0,5m", "REELAY_WEBHOOK_RETRY_SCHEDULE takes delays in seconds"),
        ("REELAY_WEBHOOK_RETRY_SCHEDULE", "0,-5", "REELAY_WEBHOOK_RETRY_SCHEDULE: each delay must be zero or more"),
        ("REELAY_WEBHOOK_DISABLE_AFTER_SECONDS", "0", "REELAY_WEBHOOK_DISABLE_AFTER_SECONDS must be positive"),
        ("REELAY_BUDGET_ALLOW_UNPRICED", "yes", "REELAY_BUDGET_ALLOW_UNPRICED must be one of true, false"),
        ("REELAY_ASSET_URL_TTL_SECONDS", "0", "REELAY_ASSET_URL_TTL_SECONDS must be positive"),
        ("REELAY_ASSET_URL_SECRET", "short", "REELAY_ASSET_URL_SECRET must be at least 16 characters"),
        ("REELAY_ASSET_RETENTION_DAYS", "-1", "REELAY_ASSET_RETENTION_DAYS must be at least 0"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({name: value}, adapters=ADAPTERS)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://reelay:s3cret@db:5432/reelay", "postgresql://reelay:***@db:5432/reelay"),
        ("postgresql://reelay:s3@cret@db/reelay", "postgresql://reelay:***@db/reelay"),
        ("postgres://db/reelay?user=reelay&password=s3cret", "postgres://db/reelay?user=reelay&password=***"),
        ("postgresql://reelay@db/reelay", "postgresql://reelay@db/reelay"),
    ],
)
def test_the_database_is_named_without_its_password(url: str, shown: str) -> None:
    assert Settings(database_url=url).database == shown


def test_a_relative_sqlite_database_is_named_by_its_full_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert Settings().database == str(tmp_path / "var" / "reelay.db")


def test_every_registered_provider_is_read_with_the_defaults_its_adapter_declares() -> None:
    settings = Settings.from_env({}, adapters=ADAPTERS)
    assert set(settings.providers) == set(ADAPTERS)
    for name, adapter in ADAPTERS.items():
        assert settings.provider(name).base_url == adapter.default_base_url


def test_a_provider_reads_the_extra_settings_its_adapter_declares_and_no_others() -> None:
    settings = Settings.from_env(
        {
            "REELAY_MINUIT_MODERATION": "disabled",
            "REELAY_MINUIT_TEMPLATE": "t2v_high_quality",
            "REELAY_MAGNIFIC_ENABLE_SAFETY_CHECKER": "true",
            "REELAY_SEEDANCEE2_MODERATION": "disabled",
        },
        adapters=ADAPTERS,
    )
    assert settings.provider("minuit").options == {"moderation": "disabled"}
    assert settings.provider("magnific").options == {"enable_safety_checker": "true"}
    assert settings.provider("seedancee2").options == {}


def test_a_provider_poll_cadence_is_read_over_its_adapters_own() -> None:
    settings = Settings.from_env(
        {"REELAY_IMINI_POLL_INITIAL_SECONDS": "5", "REELAY_IMINI_POLL_CAP_SECONDS": "40"}, adapters=ADAPTERS
    )
    assert settings.provider("imini").poll_schedule == Backoff(initial=5.0, factor=1.5, cap=40.0, jitter=0.2)
    assert settings.provider("mindvideo").poll_schedule is None  # its adapter's own cadence


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"REELAY_IMINI_POLL_FACTOR": "0.5"}, "REELAY_IMINI_POLL_FACTOR must be at least 1"),
        ({"REELAY_IMINI_POLL_INITIAL_SECONDS": "90"}, r"REELAY_IMINI_POLL_CAP_SECONDS \(60\) must be at least"),
        ({"REELAY_MINUIT_POLL_CAP_SECONDS": "0"}, "REELAY_MINUIT_POLL_CAP_SECONDS must be positive"),
    ],
)
def test_a_poll_cadence_that_never_settles_is_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env, adapters=ADAPTERS)


def test_only_the_providers_of_the_registry_given_are_read() -> None:
    settings = Settings.from_env(
        {"REELAY_SEEDANCEE2_API_KEY": "sk_a", "REELAY_MINUIT_API_KEY": "mn_b"}, adapters=registry(Seedancee2)
    )
    assert set(settings.providers) == {"seedancee2"}
    assert settings.provider("seedancee2").enabled
    assert not settings.provider("minuit").enabled


def test_circuit_settings_are_read_and_checked() -> None:
    defaults = Settings.from_env({}, adapters=ADAPTERS)
    assert (defaults.circuit_failures, defaults.circuit_cooldown_seconds, defaults.circuit_max_cooldown_seconds) == (
        5,
        30.0,
        600.0,
    )
    env = {
        "REELAY_CIRCUIT_FAILURES": "2",
        "REELAY_CIRCUIT_COOLDOWN_SECONDS": "0.5",
        "REELAY_CIRCUIT_MAX_COOLDOWN_SECONDS": "4",
    }
    settings = Settings.from_env(env, adapters=ADAPTERS)
    assert (settings.circuit_failures, settings.circuit_cooldown_seconds, settings.circuit_max_cooldown_seconds) == (
        2,
        0.5,
        4.0,
    )
    with pytest.raises(ConfigError, match="REELAY_CIRCUIT_FAILURES must be at least 1"):
        Settings.from_env({"REELAY_CIRCUIT_FAILURES": "0"}, adapters=ADAPTERS)
    with pytest.raises(ConfigError, match=r"REELAY_CIRCUIT_MAX_COOLDOWN_SECONDS \(10\) must be at least"):
        Settings.from_env({"REELAY_CIRCUIT_MAX_COOLDOWN_SECONDS": "10"}, adapters=ADAPTERS)


def test_archiver_settings_are_read_and_a_malformed_content_type_list_is_refused() -> None:
    defaults = Settings.from_env({}, adapters=ADAPTERS)
    assert defaults.asset_max_bytes == 2 * 1024**3
    assert "video/mp4" in defaults.asset_content_types
    assert (defaults.asset_concurrency, defaults.asset_copy_deadline_seconds) == (4, 86400.0)
    settings = Settings.from_env(
        {
            "REELAY_ASSET_MAX_BYTES": "1000",
            "REELAY_ASSET_CONTENT_TYPES": " Video/MP4 ,image/jpeg",
            "REELAY_ASSET_CONCURRENCY": "2",
            "REELAY_ASSET_COPY_DEADLINE_SECONDS": "60",
        },
        adapters=ADAPTERS,
    )
    assert settings.asset_content_types == ("video/mp4", "image/jpeg")
    assert (settings.asset_max_bytes, settings.asset_concurrency, settings.asset_copy_deadline_seconds) == (
        1000,
        2,
        60.0,
    )
    with pytest.raises(ConfigError, match=r"^REELAY_ASSET_CONTENT_TYPES takes media types"):
        Settings.from_env({"REELAY_ASSET_CONTENT_TYPES": "video,image/jpeg"}, adapters=ADAPTERS)
    with pytest.raises(ConfigError, match=r"^REELAY_ASSET_MAX_BYTES must be at least 1"):
        Settings.from_env({"REELAY_ASSET_MAX_BYTES": "0"}, adapters=ADAPTERS)
