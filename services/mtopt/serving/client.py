"""Client side: channels with default deadlines, and retry with backoff for idempotent calls.

Every outgoing call has a deadline: channels made here give unary and client-streaming calls a
default timeout when the caller passes none (server-streaming watches are long-lived on purpose
and get none). Retries are for idempotent calls only (a read, or an upload keyed by an id the
caller chose); never wrap a call whose second execution would do something twice.

Usage::

    channel = make_channel("dns:///episode-store:50051", default_timeout_s=10)
    stub = episode_store_pb2_grpc.EpisodeStoreStub(channel)
    reply = retry_idempotent(lambda: stub.GetEpisode(request, timeout=5))

    async with make_aio_channel("localhost:50051") as channel:
        stub = episode_store_pb2_grpc.EpisodeStoreStub(channel)
        reply = await retry_idempotent_async(lambda: stub.GetEpisode(request, timeout=5))
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
import time
from typing import Awaitable, Callable, Sequence, TypeVar

import grpc

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_TIMEOUT_S = 10.0

_CHANNEL_OPTIONS: tuple[tuple[str, int | str], ...] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 8 * 1024 * 1024),
    # Kubernetes balances gRPC per connection: with a headless Service and a dns:/// target,
    # round_robin spreads calls over every replica the name resolves to.
    ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})),
)


def channel_options(extra: Sequence[tuple[str, int | str]] = ()) -> list[tuple[str, int | str]]:
    """The default channel options (keepalive, message sizes, round_robin), overridden by extra."""
    opts = dict(_CHANNEL_OPTIONS)
    opts.update(dict(extra))
    return list(opts.items())


# -- default deadlines -------------------------------------------------------------------------
def _with_timeout(details, timeout_s: float):
    if details.timeout is not None:
        return details
    return _CallDetails(details.method, timeout_s, details.metadata, details.credentials, details.wait_for_ready, getattr(details, "compression", None))


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, method, timeout, metadata, credentials, wait_for_ready, compression):
        self.method, self.timeout, self.metadata = method, timeout, metadata
        self.credentials, self.wait_for_ready, self.compression = credentials, wait_for_ready, compression


class _DefaultDeadline(grpc.UnaryUnaryClientInterceptor, grpc.StreamUnaryClientInterceptor):
    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(_with_timeout(client_call_details, self.timeout_s), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(_with_timeout(client_call_details, self.timeout_s), request_iterator)


class _AioDefaultDeadlineUU(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        details = client_call_details
        if details.timeout is None:
            details = details._replace(timeout=self.timeout_s)
        return await continuation(details, request)


class _AioDefaultDeadlineSU(grpc.aio.StreamUnaryClientInterceptor):
    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s

    async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        details = client_call_details
        if details.timeout is None:
            details = details._replace(timeout=self.timeout_s)
        return await continuation(details, request_iterator)


def make_channel(
    target: str, *, default_timeout_s: float = DEFAULT_TIMEOUT_S, options: Sequence[tuple[str, int | str]] = ()
) -> grpc.Channel:
    """An insecure synchronous channel whose unary and client-streaming calls default to a deadline."""
    channel = grpc.insecure_channel(target, options=channel_options(options))
    return grpc.intercept_channel(channel, _DefaultDeadline(default_timeout_s))


def make_aio_channel(
    target: str, *, default_timeout_s: float = DEFAULT_TIMEOUT_S, options: Sequence[tuple[str, int | str]] = ()
) -> grpc.aio.Channel:
    """The grpc.aio counterpart of `make_channel` (create it inside the event loop that uses it)."""
    return grpc.aio.insecure_channel(
        target,
        options=channel_options(options),
        interceptors=[_AioDefaultDeadlineUU(default_timeout_s), _AioDefaultDeadlineSU(default_timeout_s)],
    )


# -- retries -----------------------------------------------------------------------------------
RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED})


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter for idempotent calls."""

    max_attempts: int = 5
    """Attempts in total, the first included."""
    initial_backoff_s: float = 0.1
    """Wait before the second attempt."""
    max_backoff_s: float = 5.0
    """Upper bound of one wait."""
    multiplier: float = 2.0
    """Growth of the wait per attempt."""
    jitter: float = 0.2
    """Each wait is scaled by a random factor in [1 - jitter, 1 + jitter]."""
    retryable_codes: frozenset = RETRYABLE_CODES
    """Status codes worth another attempt; every other error is raised at once."""

    def __post_init__(self):
        if self.max_attempts < 1:
            raise ValueError("RetryPolicy.max_attempts must be >= 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("RetryPolicy.jitter must lie in [0, 1)")

    def backoff_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """Wait after failed attempt number ``attempt`` (1-based)."""
        base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        r = (rng or random).uniform(1 - self.jitter, 1 + self.jitter)
        return base * r


def _code(e: BaseException) -> grpc.StatusCode | None:
    if isinstance(e, grpc.RpcError) and hasattr(e, "code"):
        try:
            return e.code()
        except Exception:
            return None
    return None


def retry_idempotent(
    call: Callable[[], T], policy: RetryPolicy = RetryPolicy(), *, sleep: Callable[[float], None] = time.sleep
) -> T:
    """Runs an idempotent gRPC call, retrying retryable status codes with backoff.

    ``call`` must be safe to run more than once (reads; writes keyed by a caller-chosen id).
    Raises the last error when attempts run out or the code is not retryable.
    """
    attempt = 1
    while True:
        try:
            return call()
        except grpc.RpcError as e:
            code = _code(e)
            if code not in policy.retryable_codes or attempt >= policy.max_attempts:
                raise
            wait = policy.backoff_s(attempt)
            log.debug("retrying after %s (attempt %d/%d, waiting %.2fs)", code, attempt, policy.max_attempts, wait)
            sleep(wait)
            attempt += 1


async def retry_idempotent_async(call: Callable[[], Awaitable[T]], policy: RetryPolicy = RetryPolicy()) -> T:
    """The asyncio counterpart of `retry_idempotent` (``call`` returns a fresh awaitable each time)."""
    attempt = 1
    while True:
        try:
            return await call()
        except grpc.RpcError as e:
            code = _code(e)
            if code not in policy.retryable_codes or attempt >= policy.max_attempts:
                raise
            await asyncio.sleep(policy.backoff_s(attempt))
            attempt += 1
