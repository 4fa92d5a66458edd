"""Caller webhooks in storage, written once for both backends: delivery ids, rows to records, and each webhook
operation of the Store over the small SQL interface (`Reader`, `Sql`) that each backend provides.

The SQL here is PostgreSQL's dialect with `$n` placeholders, kept to what SQLite runs too (it reads them as `?n`);
the few differences (lists of ids, row locks, lease owners) are the interface's.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, Protocol, TypeVar

import msgspec

from storage.records import (
    AttemptRecord,
    AttemptResult,
    ClaimedDelivery,
    DeliveryCounts,
    DeliveryRecord,
    DeliveryStatus,
    DeliveryView,
    EndpointChange,
    EndpointRecord,
    JobRecord,
    SigningSecret,
    takes,
)
from storage.rows import EVENT_COLUMNS, event_from_row, iso_timestamp, json_text

TEST_EVENT = "webhook.test"


class Reader(Protocol):
    """One backend's connection for reading."""

    async def fetch(self, sql: str, *params: Any) -> Sequence[Sequence[Any]]:
        """The rows a query returns."""

    def among(self, placeholder: str, *, negate: bool = False) -> str:
        """SQL testing that the expression before it is (or, negated, is not) one of the ids bound at
        `placeholder` (as `ids` makes them)."""

    def ids(self, values: Iterable[str]) -> Any:
        """A list of ids as `among` binds it."""


class Sql(Reader, Protocol):
    """One backend's connection inside a transaction it holds open."""

    lock: str
    """Appended to a SELECT, locks the rows it reads until the transaction ends ("" where the transaction
    already excludes every other writer)."""

    lease_owner: str | None
    """The store instance a lease names, where several share the database (the column `lease_owner`)."""

    async def execute(self, sql: str, *params: Any) -> int:
        """Run a statement; returns how many rows it touched."""

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Run a statement once per row of parameters."""


# -- delivery ids ------------------------------------------------------------------------------

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


class _DeliveryIds:
    """ "msg_" + 26 Crockford base32 characters: 50 bits of milliseconds, then 80 random bits, increasing within
    a process even when the clock stands still or steps back, so ids sort in creation order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # SQLite makes ids on its writer's thread, PostgreSQL on the event loop
        self._last = 0

    def new(self, now: float) -> str:
        with self._lock:
            value = (int(now * 1000) << 80) | secrets.randbits(80)
            self._last = value = max(value, self._last + 1)
        return "msg_" + "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


new_delivery_id = _DeliveryIds().new


# -- rows and records --------------------------------------------------------------------------

_DELIVERY_FIELDS = (
    "id",
    "api_key_id",
    "target",
    "url",
    "event_type",
    "status",
    "created_at",
    "updated_at",
    "job_id",
    "endpoint_id",
    "event_id",
    "payload",
    "attempts",
    "round_attempts",
    "next_attempt_at",
    "last_status",
)
_ENDPOINT_FIELDS = (
    "id",
    "api_key_id",
    "url",
    "events",
    "description",
    "secret",
    "previous",
    "previous_expires_at",
    "disabled",
    "disabled_reason",
    "failing_since",
    "created_at",
    "updated_at",
)
_ATTEMPT_FIELDS = ("delivery_id", "attempted_at", "duration_ms", "status_code", "response_body", "error")

DELIVERY_COLUMNS = ", ".join(_DELIVERY_FIELDS)
ENDPOINT_COLUMNS = ", ".join(_ENDPOINT_FIELDS)
_D = ", ".join(f"d.{c}" for c in _DELIVERY_FIELDS)
_A = ", ".join(f"a.{c}" for c in _ATTEMPT_FIELDS)
_EV = ", ".join(f"ev.{c.strip()}" for c in EVENT_COLUMNS.split(","))
_N_DELIVERY = len(_DELIVERY_FIELDS)
_N_EVENT = len(EVENT_COLUMNS.split(","))

_decode_list = msgspec.json.Decoder(list[str]).decode
INSERT_DELIVERY = (
    f"INSERT INTO webhook_deliveries ({DELIVERY_COLUMNS}) "
    f"VALUES ({', '.join(f'${n}' for n in range(1, _N_DELIVERY + 1))})"
)


def delivery_from_row(row: Sequence[Any]) -> DeliveryRecord:
    return DeliveryRecord(**dict(zip(_DELIVERY_FIELDS, row[:_N_DELIVERY], strict=True)))


def delivery_values(d: DeliveryRecord) -> list[Any]:
    return [getattr(d, field) for field in _DELIVERY_FIELDS]


def endpoint_from_row(row: Sequence[Any]) -> EndpointRecord:
    return EndpointRecord(
        id=row[0],
        api_key_id=row[1],
        url=row[2],
        events=_decode_list(row[3]),
        description=row[4],
        signing=SigningSecret(secret=row[5], previous=row[6], previous_expires_at=row[7]),
        disabled=bool(row[8]),
        disabled_reason=row[9],
        failing_since=row[10],
        created_at=row[11],
        updated_at=row[12],
    )


def _endpoint_values(e: EndpointRecord) -> list[Any]:
    s = e.signing
    return [
        e.id,
        e.api_key_id,
        e.url,
        json_text(e.events),
        e.description,
        s.secret,
        s.previous,
        s.previous_expires_at,
        e.disabled,
        e.disabled_reason,
        e.failing_since,
        e.created_at,
        e.updated_at,
    ]


def _views(rows: Iterable[Sequence[Any]]) -> list[DeliveryView]:
    """Deliveries with their attempts from rows of (delivery columns, attempt columns), grouped in row order."""
    views: list[DeliveryView] = []
    for row in rows:
        if not views or views[-1].delivery.id != row[0]:
            views.append(DeliveryView(delivery=delivery_from_row(row), attempts=[]))
        attempt = row[_N_DELIVERY:]
        if attempt[0] is not None:
            views[-1].attempts.append(AttemptRecord(**dict(zip(_ATTEMPT_FIELDS, attempt, strict=True))))
    return views


def _drop_lease(db: Sql) -> str:
    return "lease_until = NULL, lease_owner = NULL" if db.lease_owner is not None else "lease_until = NULL"


# -- recording deliveries with the events they carry -------------------------------------------

ENABLED_ENDPOINTS = "SELECT id, url, events FROM webhook_endpoints WHERE api_key_id = $1 AND NOT disabled"
"""The key's enabled endpoints, as `new_deliveries` takes them (by the index webhook_endpoints_by_key)."""


def new_deliveries(
    job: JobRecord,
    event_type: str,
    event_id: int,
    endpoints: Iterable[Sequence[Any]],
    now: float,
    first_delay: float,
) -> list[DeliveryRecord]:
    """The deliveries an event of `job` makes: to the job's `webhook_url` if its `webhook_events` take the type,
    and to each of the key's enabled endpoints (id, url, events as JSON) whose events match."""
    targets: list[tuple[str, str, str | None]] = []
    if job.webhook_url is not None and takes(job.webhook_events or (), event_type):
        targets.append(("url:" + job.webhook_url, job.webhook_url, None))
    return _deliveries(job.api_key_id, job.id, event_type, event_id, targets, endpoints, now, first_delay)


def key_deliveries(
    api_key_id: str,
    event_type: str,
    event_id: int,
    endpoints: Iterable[Sequence[Any]],
    now: float,
    first_delay: float,
) -> list[DeliveryRecord]:
    """The deliveries an event of the key alone (budget.threshold) makes: to each of the key's enabled endpoints
    whose events match. No job, so no job's `webhook_url`; `job_id` is None, so `prune` removes them by age."""
    return _deliveries(api_key_id, None, event_type, event_id, [], endpoints, now, first_delay)


def _deliveries(
    api_key_id: str,
    job_id: str | None,
    event_type: str,
    event_id: int,
    targets: list[tuple[str, str, str | None]],
    endpoints: Iterable[Sequence[Any]],
    now: float,
    first_delay: float,
) -> list[DeliveryRecord]:
    for endpoint_id, url, wanted in endpoints:
        if takes(_decode_list(wanted), event_type):
            targets.append((endpoint_id, url, endpoint_id))
    stamp = iso_timestamp(now)
    return [
        DeliveryRecord(
            id=new_delivery_id(now),
            api_key_id=api_key_id,
            target=target,
            url=url,
            event_type=event_type,
            status=DeliveryStatus.PENDING,
            created_at=stamp,
            updated_at=stamp,
            job_id=job_id,
            endpoint_id=endpoint_id,
            event_id=event_id,
            next_attempt_at=now + first_delay,
        )
        for target, url, endpoint_id in targets
    ]


async def insert_deliveries(db: Sql, deliveries: Sequence[DeliveryRecord]) -> None:
    await db.executemany(INSERT_DELIVERY, [delivery_values(d) for d in deliveries])


# -- signing secrets ---------------------------------------------------------------------------


async def read_webhook_secret(db: Reader, api_key_id: str) -> SigningSecret | None:
    rows = await db.fetch(
        "SELECT secret, previous, previous_expires_at FROM webhook_secrets WHERE api_key_id = $1", api_key_id
    )
    return next((SigningSecret(secret=r[0], previous=r[1], previous_expires_at=r[2]) for r in rows), None)


async def webhook_secret(db: Sql, api_key_id: str, new_secret: str) -> SigningSecret:
    await db.execute(
        "INSERT INTO webhook_secrets (api_key_id, secret) VALUES ($1, $2) ON CONFLICT (api_key_id) DO NOTHING",
        api_key_id,
        new_secret,
    )
    found = await read_webhook_secret(db, api_key_id)
    assert found is not None
    return found


async def rotate_webhook_secret(
    db: Sql, api_key_id: str, new_secret: str, now: float, overlap_seconds: float
) -> SigningSecret:
    rows = await db.fetch(
        "INSERT INTO webhook_secrets (api_key_id, secret) VALUES ($1, $2) ON CONFLICT (api_key_id) DO UPDATE "
        "SET previous = webhook_secrets.secret, previous_expires_at = $3, secret = excluded.secret "
        "RETURNING secret, previous, previous_expires_at",
        api_key_id,
        new_secret,
        now + overlap_seconds,
    )
    secret, previous, expires = rows[0]
    return SigningSecret(secret=secret, previous=previous, previous_expires_at=expires)


# -- endpoints ---------------------------------------------------------------------------------


async def create_endpoint(db: Sql, endpoint: EndpointRecord, max_per_key: int) -> bool:
    # The key's row lock makes concurrent creates of one key count one after the other; NO KEY leaves the
    # key's jobs free to be created meanwhile (their foreign key checks take KEY SHARE).
    await db.fetch(
        f"SELECT id FROM api_keys WHERE id = $1{' FOR NO KEY UPDATE' if db.lock else ''}", endpoint.api_key_id
    )
    rows = await db.fetch("SELECT count(*) FROM webhook_endpoints WHERE api_key_id = $1", endpoint.api_key_id)
    if rows[0][0] >= max_per_key:
        return False
    marks = ", ".join(f"${n}" for n in range(1, len(_ENDPOINT_FIELDS) + 1))
    await db.execute(
        f"INSERT INTO webhook_endpoints ({ENDPOINT_COLUMNS}) VALUES ({marks})", *_endpoint_values(endpoint)
    )
    return True


async def list_endpoints(db: Reader, api_key_id: str) -> list[EndpointRecord]:
    rows = await db.fetch(
        f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE api_key_id = $1 ORDER BY created_at, id", api_key_id
    )
    return [endpoint_from_row(row) for row in rows]


async def get_endpoint(db: Reader, api_key_id: str, endpoint_id: str, *, lock: str = "") -> EndpointRecord | None:
    rows = await db.fetch(
        f"SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1 AND api_key_id = $2{lock}",
        endpoint_id,
        api_key_id,
    )
    return next((endpoint_from_row(row) for row in rows), None)


_ENDPOINT_MUTABLE = tuple(c for c in _ENDPOINT_FIELDS if c not in ("id", "api_key_id", "created_at"))
_SAVE_ENDPOINT = (
    "UPDATE webhook_endpoints SET "
    + ", ".join(f"{column} = ${n}" for n, column in enumerate(_ENDPOINT_MUTABLE, 1))
    + f" WHERE id = ${len(_ENDPOINT_MUTABLE) + 1}"
)


async def _save_endpoint(db: Sql, e: EndpointRecord) -> None:
    """Write an endpoint's every column but those fixed at creation (the values `_endpoint_values` gives)."""
    values = dict(zip(_ENDPOINT_FIELDS, _endpoint_values(e), strict=True))
    await db.execute(_SAVE_ENDPOINT, *(values[c] for c in _ENDPOINT_MUTABLE), e.id)


def _fail_pending_sql(db: Sql) -> str:
    """Fails the pending deliveries of the endpoint bound at $2, stamped $1."""
    return (
        f"UPDATE webhook_deliveries SET status = '{DeliveryStatus.FAILED}', next_attempt_at = NULL, "
        f"{_drop_lease(db)}, updated_at = $1 WHERE endpoint_id = $2 AND status = '{DeliveryStatus.PENDING}'"
    )


async def update_endpoint(
    db: Sql, api_key_id: str, endpoint_id: str, change: EndpointChange, now: float
) -> EndpointRecord | None:
    current = await get_endpoint(db, api_key_id, endpoint_id, lock=db.lock)
    if current is None:
        return None
    stamp = iso_timestamp(now)
    updated = msgspec.structs.replace(
        current,
        url=current.url if change.url is None else change.url,
        events=current.events if change.events is None else change.events,
        description=current.description if change.description is None else change.description,
        updated_at=stamp,
    )
    if change.disabled is True and not current.disabled:
        updated = msgspec.structs.replace(updated, disabled=True, disabled_reason="by_request")
    elif change.disabled is False:
        updated = msgspec.structs.replace(updated, disabled=False, disabled_reason=None, failing_since=None)
    await _save_endpoint(db, updated)
    if updated.url != current.url:  # pending deliveries go to the endpoint's current URL: show that one
        await db.execute(
            f"UPDATE webhook_deliveries SET url = $1 WHERE endpoint_id = $2 AND status = '{DeliveryStatus.PENDING}'",
            updated.url,
            endpoint_id,
        )
    if updated.disabled and not current.disabled:
        await db.execute(_fail_pending_sql(db), stamp, endpoint_id)
    return updated


async def delete_endpoint(db: Sql, api_key_id: str, endpoint_id: str, now: float) -> bool:
    deleted = await db.execute(
        "DELETE FROM webhook_endpoints WHERE id = $1 AND api_key_id = $2", endpoint_id, api_key_id
    )
    if deleted:
        await db.execute(_fail_pending_sql(db), iso_timestamp(now), endpoint_id)
    return deleted > 0


async def rotate_endpoint_secret(
    db: Sql, api_key_id: str, endpoint_id: str, new_secret: str, now: float, overlap_seconds: float
) -> EndpointRecord | None:
    current = await get_endpoint(db, api_key_id, endpoint_id, lock=db.lock)
    if current is None:
        return None
    updated = msgspec.structs.replace(
        current, signing=current.signing.rotated(new_secret, now, overlap_seconds), updated_at=iso_timestamp(now)
    )
    await _save_endpoint(db, updated)
    return updated


async def create_test_delivery(db: Sql, endpoint: EndpointRecord, payload: bytes, now: float) -> DeliveryRecord:
    stamp = iso_timestamp(now)
    delivery = DeliveryRecord(
        id=new_delivery_id(now),
        api_key_id=endpoint.api_key_id,
        target=endpoint.id,
        url=endpoint.url,
        event_type=TEST_EVENT,
        status=DeliveryStatus.PENDING,
        created_at=stamp,
        updated_at=stamp,
        endpoint_id=endpoint.id,
        payload=payload,
        next_attempt_at=now,
    )
    await insert_deliveries(db, [delivery])
    return delivery


# -- the deliverer's queue ---------------------------------------------------------------------

_CLAIM_ROUNDS = 4
"""Most candidate windows one claim reads: a window whose rows went to targets it filled is followed by the next."""

_MIN_WINDOW = 64
"""Fewest candidates one window reads. A window is a few targets' worth (4 x per_target), not `limit`: with one
busy receiver, a window of `limit` rows read and sorted ~1,000 rows to keep 8 (a third of a drain's CPU)."""

_DUE = (
    f"d.status = '{DeliveryStatus.PENDING}' AND d.next_attempt_at <= $1 AND (d.lease_until IS NULL OR "
    "d.lease_until <= $1)"
)
"""Deliveries due at $1 and unleased. Read from the covering index webhook_deliveries_due alone: no join per row,
as a claim may step over a full receiver's whole backlog (a join there cost half a drain's CPU)."""

_SENDABLE = "coalesce(e.secret, s.secret) IS NOT NULL AND (d.endpoint_id IS NULL OR NOT e.disabled)"
"""A claimed delivery can be signed and its endpoint takes it. Never false in practice: disabling or deleting an
endpoint fails its pending deliveries, and a job's URL gets its key's secret first; but a race (a resend as the
endpoint is disabled) must fail the delivery, not lease it again forever."""

_CLAIMED = (
    f"SELECT {_D}, coalesce(e.url, d.url), coalesce(e.secret, s.secret), coalesce(e.previous, s.previous), "
    f"coalesce(e.previous_expires_at, s.previous_expires_at), {_EV} FROM webhook_deliveries d "
    "LEFT JOIN webhook_endpoints e ON e.id = d.endpoint_id "
    "LEFT JOIN webhook_secrets s ON d.endpoint_id IS NULL AND s.api_key_id = d.api_key_id "
    "LEFT JOIN events ev ON ev.id = d.event_id WHERE d.id {among} AND " + _SENDABLE
)


async def claim_deliveries(
    db: Sql, now: float, limit: int, lease_seconds: float, per_target: int, busy: dict[str, int], explore: bool
) -> list[ClaimedDelivery]:
    in_flight = dict(busy)
    full = {target for target, count in in_flight.items() if count >= per_target}
    picked: dict[str, tuple[float, str]] = {}
    after: tuple[float, str] | None = None
    lock = f"{db.lock} OF d SKIP LOCKED" if db.lock else ""  # rows another worker is claiming are skipped
    window = min(limit, max(_MIN_WINDOW, 4 * per_target))
    for _ in range(_CLAIM_ROUNDS):
        if limit <= len(picked):
            break
        # Exploring, targets already full are left out here, so the backlog of one never fills the window.
        params: list[Any] = [now, db.ids(full if explore else ()), window]
        later = ""
        if after is not None:
            later = "AND (d.next_attempt_at > $4 OR d.next_attempt_at = $4 AND d.id > $5) "
            params.extend(after)
        rows = await db.fetch(
            "SELECT d.id, d.target, d.next_attempt_at FROM webhook_deliveries d "
            f"WHERE {_DUE} AND d.target {db.among('$2', negate=True)} "
            f"{later}ORDER BY d.next_attempt_at, d.id LIMIT $3{lock}",
            *params,
        )
        for delivery_id, target, due in rows:
            if target in full:
                continue  # filled by this window's earlier rows
            picked[delivery_id] = (due, delivery_id)
            in_flight[target] = in_flight.get(target, 0) + 1
            if in_flight[target] >= per_target:
                full.add(target)
            if len(picked) == limit:
                break
        if len(rows) < window:
            break
        after = (rows[-1][2], rows[-1][0])
    if not picked:
        return []
    ids = db.ids(picked)
    owner = "" if db.lease_owner is None else ", lease_owner = $3"
    await db.execute(
        f"UPDATE webhook_deliveries SET lease_until = $1{owner} WHERE id {db.among('$2')}",
        *([now + lease_seconds, ids] if db.lease_owner is None else [now + lease_seconds, ids, db.lease_owner]),
    )
    rows = await db.fetch(_CLAIMED.format(among=db.among("$1")), ids)
    claimed = [_claimed_from_row(row) for row in rows]
    unsendable = picked.keys() - {c.delivery.id for c in claimed}
    if unsendable:
        await db.execute(
            f"UPDATE webhook_deliveries SET status = '{DeliveryStatus.FAILED}', next_attempt_at = NULL, "
            f"lease_until = NULL, updated_at = $1 WHERE id {db.among('$2')}",
            iso_timestamp(now),
            db.ids(unsendable),
        )
    return sorted(claimed, key=lambda c: picked[c.delivery.id])


def _claimed_from_row(row: Sequence[Any]) -> ClaimedDelivery:
    delivery = delivery_from_row(row)
    n = _N_DELIVERY
    signing = SigningSecret(secret=row[n + 1], previous=row[n + 2], previous_expires_at=row[n + 3])
    event = None if row[n + 4] is None else event_from_row(row[n + 4 : n + 4 + _N_EVENT])
    return ClaimedDelivery(delivery=delivery, url=row[n], signing=signing, event=event)


async def finish_attempts(
    db: Sql, results: Sequence[AttemptResult], disable_after_seconds: float, now: float
) -> list[str]:
    if not results:
        return []
    stamp = iso_timestamp(now)
    rows = await db.fetch(
        f"SELECT id, endpoint_id FROM webhook_deliveries WHERE id {db.among('$1')}",
        db.ids({r.attempt.delivery_id for r in results}),
    )
    endpoint_of: dict[str, str | None] = {row[0]: row[1] for row in rows}
    results = [r for r in results if r.attempt.delivery_id in endpoint_of]  # a pruned delivery keeps no log
    # Endpoints first, in id order: every transaction that locks both takes them in this order.
    endpoint_ids = sorted({e for e in endpoint_of.values() if e is not None})
    endpoints: dict[str, tuple[float | None, bool]] = {}
    if endpoint_ids:
        found = await db.fetch(
            f"SELECT id, failing_since, disabled FROM webhook_endpoints WHERE id {db.among('$1')} ORDER BY id{db.lock}",
            db.ids(endpoint_ids),
        )
        endpoints = {row[0]: (row[1], bool(row[2])) for row in found}
    await db.executemany(
        "INSERT INTO webhook_attempts (delivery_id, attempted_at, duration_ms, status_code, response_body, error) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        [
            (a.delivery_id, a.attempted_at, a.duration_ms, a.status_code, a.response_body, a.error)
            for a in (r.attempt for r in results)
        ],
    )
    # A delivery no longer pending (its endpoint disabled or deleted meanwhile) only counts the attempt.
    pending = f"status = '{DeliveryStatus.PENDING}'"
    await db.executemany(
        f"UPDATE webhook_deliveries SET attempts = attempts + 1, last_status = $1, updated_at = $2, {_drop_lease(db)}, "
        f"round_attempts = CASE WHEN {pending} THEN round_attempts + 1 ELSE round_attempts END, "
        f"next_attempt_at = CASE WHEN {pending} THEN $3 ELSE next_attempt_at END, "
        f"status = CASE WHEN {pending} THEN $4 ELSE status END WHERE id = $5",
        [(r.attempt.status_code, stamp, r.next_attempt_at, r.status, r.attempt.delivery_id) for r in results],
    )
    changed: dict[str, float | None] = {}
    disabled: dict[str, str] = {}
    for r in results:
        endpoint_id = endpoint_of[r.attempt.delivery_id]
        if endpoint_id is None or endpoint_id not in endpoints or endpoint_id in disabled:
            continue
        failing_since, is_disabled = endpoints[endpoint_id]
        if is_disabled:
            continue
        if r.status == DeliveryStatus.SUCCEEDED:
            failing_since = None
        elif failing_since is None:
            failing_since = r.at
        elif r.at - failing_since > disable_after_seconds:
            disabled[endpoint_id] = "failing"
        if r.disable_endpoint is not None:
            disabled[endpoint_id] = r.disable_endpoint
        if failing_since != endpoints[endpoint_id][0]:
            changed[endpoint_id] = failing_since
        endpoints[endpoint_id] = (failing_since, False)
    if changed:
        await db.executemany(
            "UPDATE webhook_endpoints SET failing_since = $1 WHERE id = $2", [(at, e) for e, at in changed.items()]
        )
    if disabled:
        await db.executemany(
            "UPDATE webhook_endpoints SET disabled = true, disabled_reason = $1, updated_at = $2 WHERE id = $3",
            [(reason, stamp, e) for e, reason in disabled.items()],
        )
        await db.executemany(_fail_pending_sql(db), [(stamp, e) for e in disabled])
    return list(disabled)


# -- the attempt log ---------------------------------------------------------------------------


async def job_deliveries(db: Reader, api_key_id: str, job_id: str) -> list[DeliveryView]:
    rows = await db.fetch(
        f"SELECT {_D}, {_A} FROM webhook_deliveries d LEFT JOIN webhook_attempts a ON a.delivery_id = d.id "
        "WHERE d.job_id = $1 AND d.api_key_id = $2 ORDER BY d.id, a.id",
        job_id,
        api_key_id,
    )
    return _views(rows)


async def endpoint_deliveries(
    db: Reader, api_key_id: str, endpoint_id: str, status: str | None, limit: int, before_id: str | None
) -> list[DeliveryView]:
    statuses = DeliveryStatus.ALL if status is None else (status,)
    if not set(statuses) <= set(DeliveryStatus.ALL):
        return []
    params: list[Any] = [endpoint_id, api_key_id, limit]
    before = ""
    if before_id is not None:
        before = " AND id < $4"
        params.append(before_id)
    # One page per status, each read along the index (endpoint_id, status, id), then the newest of them.
    pages = " UNION ALL ".join(
        f"SELECT * FROM (SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE endpoint_id = $1 "
        f"AND api_key_id = $2 AND status = '{s}'{before} ORDER BY id DESC LIMIT $3) AS p{n}"
        for n, s in enumerate(statuses)
    )
    rows = await db.fetch(
        f"SELECT {_D}, {_A} FROM (SELECT * FROM ({pages}) AS u ORDER BY id DESC LIMIT $3) AS d "
        "LEFT JOIN webhook_attempts a ON a.delivery_id = d.id ORDER BY d.id DESC, a.id",
        *params,
    )
    return _views(rows)


async def get_delivery(db: Reader, api_key_id: str, delivery_id: str) -> DeliveryView | None:
    rows = await db.fetch(
        f"SELECT {_D}, {_A} FROM webhook_deliveries d LEFT JOIN webhook_attempts a ON a.delivery_id = d.id "
        "WHERE d.id = $1 AND d.api_key_id = $2 ORDER BY a.id",
        delivery_id,
        api_key_id,
    )
    return next(iter(_views(rows)), None)


def _resend_sql(db: Sql, where: str) -> str:
    return (
        f"UPDATE webhook_deliveries SET status = '{DeliveryStatus.PENDING}', next_attempt_at = $1, "
        f"round_attempts = 0, {_drop_lease(db)}, updated_at = $2 WHERE {where}"
    )


async def resend_delivery(db: Sql, api_key_id: str, delivery_id: str, now: float) -> DeliveryRecord | None:
    rows = await db.fetch(
        _resend_sql(db, "id = $3 AND api_key_id = $4") + f" RETURNING {DELIVERY_COLUMNS}",
        now,
        iso_timestamp(now),
        delivery_id,
        api_key_id,
    )
    return next((delivery_from_row(row) for row in rows), None)


async def recover_deliveries(db: Sql, api_key_id: str, endpoint_id: str, since: str, until: str, now: float) -> int:
    return await db.execute(
        _resend_sql(
            db,
            f"endpoint_id = $3 AND status = '{DeliveryStatus.FAILED}' AND api_key_id = $4 "
            "AND created_at >= $5 AND created_at < $6",
        ),
        now,
        iso_timestamp(now),
        endpoint_id,
        api_key_id,
        since,
        until,
    )


async def delivery_counts(db: Reader) -> DeliveryCounts:
    rows = await db.fetch(
        f"SELECT (SELECT count(*) FROM webhook_deliveries WHERE status = '{DeliveryStatus.PENDING}'), "
        "(SELECT count(*) FROM webhook_endpoints WHERE disabled)"
    )
    return DeliveryCounts(pending=int(rows[0][0]), disabled_endpoints=int(rows[0][1]))


# -- leases and retention ----------------------------------------------------------------------


def release_sql(owner_placeholder: str | None) -> str:
    """Drops the delivery leases (of the owner bound at the placeholder, where leases name one)."""
    if owner_placeholder is None:
        return (
            "UPDATE webhook_deliveries SET lease_until = NULL "
            f"WHERE status = '{DeliveryStatus.PENDING}' AND lease_until IS NOT NULL"
        )
    return (
        "UPDATE webhook_deliveries SET lease_until = NULL, lease_owner = NULL "
        f"WHERE status = '{DeliveryStatus.PENDING}' AND lease_owner = {owner_placeholder} AND lease_until IS NOT NULL"
    )


TESTS_BEFORE = "job_id IS NULL AND created_at < {cutoff}"
"""SQL for the `webhook.test` deliveries a prune removes (the only ones without a job), by the index
webhook_deliveries_tests."""


# -- the Store's webhook methods, for both backends ------------------------------------------

_T = TypeVar("_T")


class WebhookMethods:
    """The Store's caller-webhook methods, the same on both backends: each runs one function of this module
    through the backend's `_hook` (a write, in one transaction) or `_look` (a read)."""

    async def _hook(self, operation: Callable[[Sql], Coroutine[Any, Any, _T]]) -> _T:
        raise NotImplementedError

    async def _look(self, read: Callable[[Reader], Coroutine[Any, Any, _T]]) -> _T:
        raise NotImplementedError

    _clock: Callable[[], float]  # the store's clock

    async def webhook_secret(self, api_key_id: str, *, new_secret: str) -> SigningSecret:
        # Read first: every job created with a webhook_url asks, and nearly always the secret exists.
        found = await self._look(lambda db: read_webhook_secret(db, api_key_id))
        if found is not None:
            return found
        return await self._hook(lambda db: webhook_secret(db, api_key_id, new_secret))

    async def rotate_webhook_secret(
        self, api_key_id: str, *, new_secret: str, now: float, overlap_seconds: float
    ) -> SigningSecret:
        return await self._hook(lambda db: rotate_webhook_secret(db, api_key_id, new_secret, now, overlap_seconds))

    async def create_endpoint(self, endpoint: EndpointRecord, *, max_per_key: int) -> bool:
        return await self._hook(lambda db: create_endpoint(db, endpoint, max_per_key))

    async def list_endpoints(self, api_key_id: str) -> list[EndpointRecord]:
        return await self._look(lambda db: list_endpoints(db, api_key_id))

    async def get_endpoint(self, api_key_id: str, endpoint_id: str) -> EndpointRecord | None:
        return await self._look(lambda db: get_endpoint(db, api_key_id, endpoint_id))

    async def update_endpoint(
        self, api_key_id: str, endpoint_id: str, change: EndpointChange, *, now: float
    ) -> EndpointRecord | None:
        return await self._hook(lambda db: update_endpoint(db, api_key_id, endpoint_id, change, now))

    async def delete_endpoint(self, api_key_id: str, endpoint_id: str, *, now: float) -> bool:
        return await self._hook(lambda db: delete_endpoint(db, api_key_id, endpoint_id, now))

    async def rotate_endpoint_secret(
        self, api_key_id: str, endpoint_id: str, *, new_secret: str, now: float, overlap_seconds: float
    ) -> EndpointRecord | None:
        return await self._hook(
            lambda db: rotate_endpoint_secret(db, api_key_id, endpoint_id, new_secret, now, overlap_seconds)
        )

    async def create_test_delivery(self, endpoint: EndpointRecord, payload: bytes, *, now: float) -> DeliveryRecord:
        return await self._hook(lambda db: create_test_delivery(db, endpoint, payload, now))

    async def claim_deliveries(
        self,
        now: float,
        limit: int,
        lease_seconds: float,
        *,
        per_target: int,
        busy: dict[str, int],
        explore: bool = True,
    ) -> list[ClaimedDelivery]:
        return await self._hook(lambda db: claim_deliveries(db, now, limit, lease_seconds, per_target, busy, explore))

    async def finish_attempts(self, results: list[AttemptResult], *, disable_after_seconds: float) -> list[str]:
        now = self._clock()
        return await self._hook(lambda db: finish_attempts(db, results, disable_after_seconds, now))

    async def job_deliveries(self, api_key_id: str, job_id: str) -> list[DeliveryView]:
        return await self._look(lambda db: job_deliveries(db, api_key_id, job_id))

    async def endpoint_deliveries(
        self, api_key_id: str, endpoint_id: str, *, status: str | None, limit: int, before_id: str | None = None
    ) -> list[DeliveryView]:
        return await self._look(lambda db: endpoint_deliveries(db, api_key_id, endpoint_id, status, limit, before_id))

    async def get_delivery(self, api_key_id: str, delivery_id: str) -> DeliveryView | None:
        return await self._look(lambda db: get_delivery(db, api_key_id, delivery_id))

    async def resend_delivery(self, api_key_id: str, delivery_id: str, *, now: float) -> DeliveryRecord | None:
        return await self._hook(lambda db: resend_delivery(db, api_key_id, delivery_id, now))

    async def recover_deliveries(self, api_key_id: str, endpoint_id: str, *, since: str, until: str, now: float) -> int:
        return await self._hook(lambda db: recover_deliveries(db, api_key_id, endpoint_id, since, until, now))

    async def delivery_counts(self) -> DeliveryCounts:
        return await self._look(delivery_counts)
