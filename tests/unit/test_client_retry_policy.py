"""The SDK's retry rules (aitbc.client.retry_pause) on real gRPC errors carrying google.rpc details: what is
tried again, after how long (a RetryInfo delay is waited as given), and what is never repeated."""

from __future__ import annotations

import grpc
from aitbc.client import RetryPolicy, error_details, retry_pause
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

POLICY = RetryPolicy(attempts=3, backoff_s=0.2, backoff_max_s=5.0)


def failure(
    code: grpc.StatusCode, reason: str = "", retry_after_ms: int | None = None
) -> grpc.aio.AioRpcError:
    """An error as the coordinator sends it: ErrorInfo, and RetryInfo when given a delay."""
    details = []
    if reason:
        details.append(error_details_pb2.ErrorInfo(reason=reason, domain="coordinator.aitbc"))
    if retry_after_ms is not None:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(retry_after_ms)
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    packed = []
    for d in details:
        a = any_pb2.Any()
        a.Pack(d)
        packed.append(a)
    status = status_pb2.Status(code=code.value[0], message="it failed", details=packed)
    trailers = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailers, "it failed")


def test_a_retry_info_delay_is_waited_at_least_as_given() -> None:
    exc = failure(grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE", retry_after_ms=1500)
    assert 1.5 <= retry_pause(exc, True, 1, POLICY) <= 1.5 * 1.2  # type: ignore[operator]  # (jittered)
    assert error_details(exc).reason == "STORE_UNAVAILABLE"


def test_a_retry_info_delay_of_zero_is_no_try_again_at_once() -> None:
    """A proxy's RetryInfo of 0 made every try follow the last at once, until the deadline."""
    exc = failure(grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE", retry_after_ms=0)
    assert POLICY.backoff_s <= retry_pause(exc, True, 1, POLICY) <= POLICY.backoff_s * 1.2  # type: ignore[operator]


def test_without_retry_info_the_pause_is_a_jittered_backoff() -> None:
    exc = failure(grpc.StatusCode.UNAVAILABLE)
    assert 0.1 <= retry_pause(exc, True, 1, POLICY) <= 0.2  # type: ignore[operator]
    assert 0.2 <= retry_pause(exc, True, 2, POLICY) <= 0.4  # type: ignore[operator]


def test_what_is_never_tried_again() -> None:
    unavailable = failure(grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE", retry_after_ms=1000)
    assert retry_pause(unavailable, False, 1, POLICY) is None  # a submit without an idempotency key
    assert retry_pause(unavailable, True, 3, POLICY) is None  # the policy's tries spent
    rate = failure(grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", retry_after_ms=200)
    assert retry_pause(rate, True, 1, POLICY) is None  # the application's to pace
    assert error_details(rate).retry_after_s == 0.2
    for code in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
    ):
        assert retry_pause(failure(code, "X"), True, 1, POLICY) is None


def test_error_details_read_without_details_keep_code_and_message() -> None:
    bare = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "gone")
    said = error_details(bare)
    assert (said.code, said.message, said.reason, said.retry_after_s) == (
        grpc.StatusCode.UNAVAILABLE,
        "gone",
        "",
        None,
    )
    assert str(said) == "UNAVAILABLE: gone"
