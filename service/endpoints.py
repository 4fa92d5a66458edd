"""The caller-webhook use cases: a key's signing secret, its webhook endpoints, and the attempt log (read, test,
resend, recover) that the HTTP layer asks about; handlers never touch the store."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import msgspec
import structlog

from service.deliveries import check_events, check_url
from service.errors import Conflict, InvalidRequest, NotFound
from service.ids import decode_cursor, encode_cursor, new_endpoint_id, new_webhook_secret
from service.timestamps import from_iso, to_iso
from storage import DeliveryView, EndpointChange, EndpointRecord, SigningSecret

if TYPE_CHECKING:
    from service.runtime import Runtime

log = structlog.get_logger("reelay.endpoints")

TEST_EVENT = "webhook.test"
TEST_MESSAGE = "a test delivery from Reelay"
RECOVER_MAX_DAYS = 14  # one recover resends at most this range: the retry schedule spans about 3 days
_RECOVER_MAX = timedelta(days=RECOVER_MAX_DAYS)


class Endpoints:
    """A key's webhook signing secret, its endpoints, and its deliveries' attempt log."""

    def __init__(self, runtime: Runtime) -> None:
        self._settings = runtime.settings
        self._store = runtime.store
        self._clock = runtime.clock
        self._signals = runtime.signals

    def now(self) -> float:
        return self._clock()

    # -- the key's secret (per-job webhook URLs) ----------------------------------------------

    async def secret(self, api_key_id: str) -> SigningSecret:
        """The key's secret, made on first use."""
        return await self._store.webhook_secret(api_key_id, new_secret=new_webhook_secret())

    async def rotate_secret(self, api_key_id: str) -> SigningSecret:
        await self.secret(api_key_id)  # a first rotation replaces a secret, never nothing
        rotated = await self._store.rotate_webhook_secret(
            api_key_id,
            new_secret=new_webhook_secret(),
            now=self._clock(),
            overlap_seconds=self._settings.webhook_rotation_overlap_seconds,
        )
        log.info("webhook_secret.rotated", api_key_id=api_key_id)
        return rotated

    # -- endpoints ----------------------------------------------------------------------------

    async def create(self, api_key_id: str, url: str, events: list[str], description: str) -> EndpointRecord:
        check_url(url, allow_private=self._settings.webhook_allow_private, field="url")
        now = to_iso(self._clock(), "microseconds")  # as the store stamps its own changes
        endpoint = EndpointRecord(
            id=new_endpoint_id(),
            api_key_id=api_key_id,
            url=url,
            events=check_events(events, field="events"),
            description=description,
            signing=SigningSecret(secret=new_webhook_secret()),
            created_at=now,
            updated_at=now,
        )
        cap = self._settings.webhook_max_endpoints
        if not await self._store.create_endpoint(endpoint, max_per_key=cap):
            raise Conflict(
                f"this API key has {cap} webhook endpoints already, the most it may have; delete one first",
                code="too_many_endpoints",
                details={"max_endpoints": cap},
            )
        log.info("webhook_endpoint.created", api_key_id=api_key_id, endpoint_id=endpoint.id)
        return endpoint

    async def list_endpoints(self, api_key_id: str) -> list[EndpointRecord]:
        return await self._store.list_endpoints(api_key_id)

    async def get(self, api_key_id: str, endpoint_id: str) -> EndpointRecord:
        endpoint = await self._store.get_endpoint(api_key_id, endpoint_id)
        if endpoint is None:
            raise NotFound(f"no webhook endpoint {endpoint_id!r}")
        return endpoint

    async def update(self, api_key_id: str, endpoint_id: str, change: EndpointChange) -> EndpointRecord:
        if change.url is not None:
            check_url(change.url, allow_private=self._settings.webhook_allow_private, field="url")
        if change.events is not None:
            change = msgspec.structs.replace(change, events=check_events(change.events, field="events"))
        endpoint = await self._store.update_endpoint(api_key_id, endpoint_id, change, now=self._clock())
        if endpoint is None:
            raise NotFound(f"no webhook endpoint {endpoint_id!r}")
        log.info("webhook_endpoint.updated", api_key_id=api_key_id, endpoint_id=endpoint_id, disabled=endpoint.disabled)
        return endpoint

    async def delete(self, api_key_id: str, endpoint_id: str) -> None:
        if not await self._store.delete_endpoint(api_key_id, endpoint_id, now=self._clock()):
            raise NotFound(f"no webhook endpoint {endpoint_id!r}")
        log.info("webhook_endpoint.deleted", api_key_id=api_key_id, endpoint_id=endpoint_id)

    async def rotate_endpoint_secret(self, api_key_id: str, endpoint_id: str) -> EndpointRecord:
        endpoint = await self._store.rotate_endpoint_secret(
            api_key_id,
            endpoint_id,
            new_secret=new_webhook_secret(),
            now=self._clock(),
            overlap_seconds=self._settings.webhook_rotation_overlap_seconds,
        )
        if endpoint is None:
            raise NotFound(f"no webhook endpoint {endpoint_id!r}")
        log.info("webhook_endpoint.secret_rotated", api_key_id=api_key_id, endpoint_id=endpoint_id)
        return endpoint

    async def send_test(self, api_key_id: str, endpoint_id: str) -> DeliveryView:
        """Record a `webhook.test` delivery to the endpoint, due now."""
        endpoint = await self.get(api_key_id, endpoint_id)
        if endpoint.disabled:
            raise _disabled(endpoint)
        payload = msgspec.json.encode({"endpoint_id": endpoint.id, "message": TEST_MESSAGE})
        delivery = await self._store.create_test_delivery(endpoint, payload, now=self._clock())
        self._signals.deliveries.set()
        return DeliveryView(delivery=delivery, attempts=[])

    # -- the attempt log ----------------------------------------------------------------------

    async def endpoint_deliveries(
        self, api_key_id: str, endpoint_id: str, status: str | None, limit: int, cursor: str | None
    ) -> tuple[list[DeliveryView], str | None]:
        """A page of the endpoint's deliveries, newest first, and the cursor of the next page (None on the last)."""
        before = decode_cursor(cursor, "msg_") if cursor else None
        await self.get(api_key_id, endpoint_id)
        found = await self._store.endpoint_deliveries(
            api_key_id, endpoint_id, status=status, limit=limit + 1, before_id=before
        )
        page = found[:limit]
        return page, encode_cursor(page[-1].delivery.id) if len(found) > limit else None

    async def job_deliveries(self, api_key_id: str, job_id: str) -> list[DeliveryView]:
        job = await self._store.get_job(job_id) if job_id.startswith("job_") else None
        if job is None or job.api_key_id != api_key_id:
            raise NotFound(f"no job {job_id!r}")
        return await self._store.job_deliveries(api_key_id, job_id)

    async def resend(self, api_key_id: str, delivery_id: str) -> DeliveryView:
        """Send a delivery again, now, with the same id and a fresh retry schedule."""
        view = await self._store.get_delivery(api_key_id, delivery_id)
        if view is None:
            raise NotFound(f"no delivery {delivery_id!r}")
        endpoint_id = view.delivery.endpoint_id
        if endpoint_id is not None:
            endpoint = await self._store.get_endpoint(api_key_id, endpoint_id)
            if endpoint is None:
                raise Conflict(
                    f"the endpoint {endpoint_id} of delivery {delivery_id} was deleted",
                    code="endpoint_deleted",
                    details={"endpoint_id": endpoint_id},
                )
            if endpoint.disabled:
                raise _disabled(endpoint)
        delivery = await self._store.resend_delivery(api_key_id, delivery_id, now=self._clock())
        if delivery is None:  # deleted meanwhile (pruned)
            raise NotFound(f"no delivery {delivery_id!r}")
        self._signals.deliveries.set()
        log.info("webhook_delivery.resent", api_key_id=api_key_id, delivery_id=delivery_id)
        return DeliveryView(delivery=delivery, attempts=view.attempts)

    async def recover(self, api_key_id: str, endpoint_id: str, since: str, until: str) -> int:
        """Resend every failed delivery of the endpoint created in [since, until); how many were resent."""
        start, end = _instant("since", since), _instant("until", until)
        if end <= start:
            raise InvalidRequest(
                f"since ({since}) must be before until ({until}); until is exclusive",
                details={"fields": ["since", "until"]},
            )
        if end - start > _RECOVER_MAX:
            raise InvalidRequest(
                f"since to until spans more than {RECOVER_MAX_DAYS} days; recover a longer time in several ranges",
                details={"fields": ["since", "until"], "max_days": RECOVER_MAX_DAYS},
            )
        endpoint = await self.get(api_key_id, endpoint_id)
        if endpoint.disabled:
            raise _disabled(endpoint)
        # Compared as text with the deliveries' `created_at`, so written as the store writes it (to the microsecond).
        resent = await self._store.recover_deliveries(
            api_key_id,
            endpoint_id,
            since=to_iso(start, "microseconds"),
            until=to_iso(end, "microseconds"),
            now=self._clock(),
        )
        if resent:
            self._signals.deliveries.set()
        log.info("webhook_deliveries.recovered", api_key_id=api_key_id, endpoint_id=endpoint_id, resent=resent)
        return resent


def _disabled(endpoint: EndpointRecord) -> Conflict:
    return Conflict(
        f"the webhook endpoint {endpoint.id} is disabled ({endpoint.disabled_reason or 'by_request'}); "
        'enable it first (PATCH {"disabled": false})',
        code="endpoint_disabled",
        details={"endpoint_id": endpoint.id, "disabled_reason": endpoint.disabled_reason},
    )


def _instant(field: str, value: str) -> datetime:
    try:
        return from_iso(value)
    except ValueError:
        raise InvalidRequest(f"{field}: not an ISO 8601 date or datetime", details={"field": field}) from None
