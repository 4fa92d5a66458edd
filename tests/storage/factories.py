"""Records for storage tests: job ids increase in creation order, like the service's ULIDs."""

from __future__ import annotations

import itertools
from typing import Any

import msgspec
from ulid import ULID

from storage import ApiKeyRecord, EndpointRecord, JobRecord, SigningSecret, Stage

KEY_A = ApiKeyRecord(id="key_a", name="alpha", secret_hash=b"\x00hash-a", created_at="2025-06-01T00:00:00.000Z")
KEY_B = ApiKeyRecord(id="key_b", name="beta", secret_hash=b"\x00hash-b", created_at="2025-06-01T00:00:01.000Z")

_clock_ms = itertools.count(1_750_000_000_000)


def new_job_id() -> str:
    """A `job_` + ULID id greater than every id made before it."""
    return "job_" + str(ULID.from_timestamp(next(_clock_ms)))


def encode_snapshot(job: JobRecord) -> bytes:
    """The event snapshot: enough to see which state of the job an event carries."""
    return msgspec.json.encode({"id": job.id, "status": job.status})


def make_job(**changes: Any) -> JobRecord:
    """A queued job of KEY_A with a fresh id; `changes` override any field."""
    job_id = new_job_id()
    job = JobRecord(
        id=job_id,
        api_key_id=KEY_A.id,
        model="seedance-2.0",
        provider="seedancee2",
        status="queued",
        stage=Stage.QUEUED,
        input={"prompt": "a cat on a skateboard", "duration": 5},
        metadata={},
        cost={},
        callback_token="cb_" + job_id,
        created_at="2025-06-01T12:00:00.000Z",
        updated_at="2025-06-01T12:00:00.000Z",
        deadline_at=1_750_000_000.0,
    )
    return msgspec.structs.replace(job, **changes)


def make_endpoint(**changes: Any) -> EndpointRecord:
    """An endpoint of KEY_A taking every event, with a fresh id; `changes` override any field."""
    endpoint = EndpointRecord(
        id="we_" + str(ULID.from_timestamp(next(_clock_ms))),
        api_key_id=KEY_A.id,
        url="https://hooks.example/in",
        events=["*"],
        description="",
        signing=SigningSecret(secret="whsec_endpoint"),
        created_at="2025-06-01T00:00:00.000Z",
        updated_at="2025-06-01T00:00:00.000Z",
    )
    return msgspec.structs.replace(endpoint, **changes)
