"""Retry-After as providers send it: a number of seconds, or an HTTP date the retrying loop measures with its clock."""

from __future__ import annotations

from service.errors import TransientError
from service.providers.base import parse_retry_after


def test_seconds_are_a_wait_capped_at_an_hour() -> None:
    assert parse_retry_after("45") == (45.0, None)
    assert parse_retry_after(" 99999 ") == (3600.0, None)


def test_an_http_date_is_a_time_to_wait_until() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == (None, 1445412480.0)


def test_nothing_usable_is_no_wait() -> None:
    assert parse_retry_after(None) == (None, None)
    assert parse_retry_after("soon") == (None, None)


def test_the_wait_until_a_date_is_measured_from_the_callers_now() -> None:
    error = TransientError("429", retry_at=1_000_045.0)
    assert error.retry_delay(1_000_000.0) == 45.0
    assert error.retry_delay(1_000_100.0) == 0.0  # a date already past: retry now


def test_a_floor_and_a_date_give_the_longer_wait() -> None:
    error = TransientError("429", retry_after=5.0, retry_at=1_000_002.0)
    assert error.retry_delay(1_000_000.0) == 5.0
    assert TransientError("429", retry_after=7.0).retry_delay(0.0) == 7.0
    assert TransientError("503").retry_delay(0.0) is None
