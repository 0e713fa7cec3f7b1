"""Which ended streams the SDK miner counts against the unacknowledged results on them.

A write on a connection that broke (a coordinator restart, a network blip) makes grpc.aio end the call itself
with INTERNAL "Internal error from Core" (measured in bench scenario 5: 1,206-1,576 such ends in one restart of
10,000 miners). Counted as the coordinator refusing a message, three of them dropped a valid result."""

from __future__ import annotations

import grpc
import pytest
from aitbc.miner import refused_by_coordinator


def ended(code: grpc.StatusCode, details: str, debug: str = "") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details, debug)


def test_a_failed_local_write_is_not_the_coordinator_refusing() -> None:
    local = ended(grpc.StatusCode.INTERNAL, "Internal error from Core",
                  "Failed \"execute_batch\": (<grpc._cython.cygrpc.SendMessageOperation object>,)")  # fmt: skip
    assert not refused_by_coordinator(local)


@pytest.mark.parametrize(
    "code, details",
    [
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max (9000000 vs. 8388608)"),
        (grpc.StatusCode.INTERNAL, "unexpected error handling the stream"),
    ],
)
def test_the_coordinator_ending_a_stream_for_a_message_counts(code: grpc.StatusCode, details: str) -> None:
    assert refused_by_coordinator(ended(code, details))


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                                  grpc.StatusCode.DEADLINE_EXCEEDED])  # fmt: skip
def test_transport_ends_do_not_count(code: grpc.StatusCode) -> None:
    assert not refused_by_coordinator(ended(code, "Socket closed"))
