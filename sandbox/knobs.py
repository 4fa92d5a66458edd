"""Chaos settings shared by every provider emulator, and the mutable state that applies them.

`SandboxKnobs` is the immutable wire struct (it is also the body of `PUT /_sandbox/knobs`); `Chaos` holds
the burst counters and the random source derived from one set of knobs.
"""

from __future__ import annotations

import random

import msgspec

_RATE_FIELDS = (
    "failure_rate",
    "drop_callback_rate",
    "duplicate_callback_rate",
    "out_of_order_rate",
)


class SandboxKnobs(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How an emulator misbehaves. Replaced as a whole at runtime, never mutated.

    Attributes:
        latency_s: Delay added before answering each provider API call.
        processing_after_s: Time from creation until a task reports its running status.
        complete_after_s: Time from creation until a task reaches its terminal status.
        failure_rate: Fraction of tasks that end failed instead of completed (rolled at create).
        drop_callback_rate: Fraction of callbacks never sent (logged as dropped): terminal ones, and intermediate
            ones at the emulators that send those (Minuit, Magnific).
        duplicate_callback_rate: Fraction of callbacks sent a second time right after the first.
        out_of_order_rate: Fraction of callbacks that are replayed stale, later. For providers that only
            send terminal callbacks (Seedancee2) "out of order" can only mean "late relative to other
            traffic": the delivered request (same body, same signature timestamp) is replayed once more
            after one more task lifetime (`complete_after_s`), so it lands after polling has seen the
            terminal state and after callbacks of tasks created later. Emulators with intermediate
            events may instead swap their order; each one documents its choice.
        burst_429: The next N provider API calls answer 429, with `Retry-After: <retry_after_s>` where the provider
            sends one.
        retry_after_s: The seconds a 429's `Retry-After` asks for (where the provider sends one).
        burst_5xx: The next N provider API calls answer the provider's server error (500; Minuit's is 502).
        refuse_creates: Every create answers the provider's documented refusal of a bad request (a 400 in its own
            error body), after authentication, without making a task.
        insufficient_credits: Every create answers the provider's out-of-balance error (Seedancee2 402
            `insufficient_credits`, Minuit 402 `quota_exhausted`, imini 403 `INSUFFICIENT_CREDITS`; each emulator's
            `out_of_credits` says which, and what it chose where its provider documents none). Checked after
            `refuse_creates`, as a provider validates a request before it bills it.
        rate_limit: Every provider API call answers the provider's 429 (with `Retry-After` where it sends one)
            while set; unlike `burst_429` it never runs out.
        hang_s: A create makes its task, then holds its answer this long: a caller whose timeout is shorter sees a
            lost answer while the task exists (and runs, and is billed).
        url_ttl_s: How long a completed task's result URLs work (from its completion; a task keeps the value it
            was created with); after it they answer 403 with an XML `AccessDenied`, as an expired signed URL does.
        output_bytes: The size of each video served at a result URL (the sample MP4 padded with an MP4 `free` box,
            generated as it is sent); None: the sample itself (about 29 KB).
        output_bytes_per_s: Serve result files at most this fast (0: as fast as the connection goes).
        output_unsized: Serve result files without Content-Length (chunked), as some CDNs do.
        output_content_type: The Content-Type a video is served with instead of `video/mp4` (e.g. `text/html`).
        output_gzip: Serve videos gzip-compressed with `Content-Encoding: gzip`, whatever the request accepts (as a
            misconfigured CDN does).
        media_burst_5xx: The next N downloads of a result file answer 503 `SlowDown`.
        seed: Seed for the random source, so that a test run is reproducible.
    """

    latency_s: float = 0.0
    processing_after_s: float = 0.5
    complete_after_s: float = 1.5
    failure_rate: float = 0.0
    drop_callback_rate: float = 0.0
    duplicate_callback_rate: float = 0.0
    out_of_order_rate: float = 0.0
    burst_429: int = 0
    retry_after_s: int = 1
    burst_5xx: int = 0
    refuse_creates: bool = False
    insufficient_credits: bool = False
    rate_limit: bool = False
    hang_s: float = 0.0
    url_ttl_s: float = 3600.0
    output_bytes: int | None = None
    output_bytes_per_s: float = 0.0
    output_unsized: bool = False
    output_content_type: str | None = None
    output_gzip: bool = False
    media_burst_5xx: int = 0
    seed: int | None = None

    def __post_init__(self) -> None:
        # Checked here rather than with Meta constraints so direct construction is validated too;
        # msgspec turns this ValueError into a ValidationError when decoding a request body.
        durations = ("latency_s", "processing_after_s", "complete_after_s", "hang_s", "url_ttl_s", "output_bytes_per_s")
        for name in durations:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        for name in _RATE_FIELDS:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.burst_429 < 0 or self.burst_5xx < 0 or self.media_burst_5xx < 0:
            raise ValueError("burst counts must be >= 0")
        if self.output_bytes is not None and self.output_bytes < 0:
            raise ValueError("output_bytes must be >= 0")


class Chaos:
    """Applies one `SandboxKnobs`: consumes burst counters and rolls the dice for each decision."""

    def __init__(self, knobs: SandboxKnobs) -> None:
        self.knobs = knobs
        self._random = random.Random(knobs.seed)
        self._burst_429 = knobs.burst_429
        self._burst_5xx = knobs.burst_5xx
        self._media_5xx = knobs.media_burst_5xx

    def _roll(self, rate: float) -> bool:
        # Always draw, even at rate 0 or 1, so one seed gives one sequence whatever the rates are.
        return self._random.random() < rate

    def should_fail(self) -> bool:
        """Whether a newly created task should end failed."""
        return self._roll(self.knobs.failure_rate)

    def should_drop_callback(self) -> bool:
        return self._roll(self.knobs.drop_callback_rate)

    def should_duplicate_callback(self) -> bool:
        return self._roll(self.knobs.duplicate_callback_rate)

    def should_reorder_callback(self) -> bool:
        return self._roll(self.knobs.out_of_order_rate)

    def take_429(self) -> bool:
        """Consume one unit of the 429 burst; True if this call must be rate limited."""
        if self._burst_429 > 0:
            self._burst_429 -= 1
            return True
        return False

    def take_5xx(self) -> bool:
        """Consume one unit of the 5xx burst; True if this call must fail with a server error."""
        if self._burst_5xx > 0:
            self._burst_5xx -= 1
            return True
        return False

    def take_media_5xx(self) -> bool:
        """Consume one unit of the result files' 5xx burst; True if this download must fail with a 503."""
        if self._media_5xx > 0:
            self._media_5xx -= 1
            return True
        return False
