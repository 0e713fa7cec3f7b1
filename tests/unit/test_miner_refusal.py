"""Which ended streams the SDK miner counts against the unacknowledged results on them (past the welcome).

A write on a connection that broke (a coordinator restart, a network blip) makes grpc.aio end the call itself
with INTERNAL "Internal error from Core" (measured in bench scenario 5: 1,206-1,576 such ends in one restart of
10,000 miners). Counted as the coordinator refusing a message, three of them dropped a valid result. What the
coordinator itself sends carries its google.rpc.ErrorInfo (domain coordinator.aitbc): that is what counts."""

from __future__ import annotations

import grpc
import pytest
from aitbc.miner import coordinator_reason, refused_by_coordinator
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2


def ended(code: grpc.StatusCode, details: str, reason: str | None = None,
          domain: str = "coordinator.aitbc") -> grpc.aio.AioRpcError:  # fmt: skip
    trailing = grpc.aio.Metadata()
    if reason is not None:
        info = any_pb2.Any()
        info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=domain))
        status = status_pb2.Status(code=code.value[0], message=details, details=[info])
        trailing = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details, "")


def test_the_coordinators_reason_is_read_from_its_error_info_only() -> None:
    assert coordinator_reason(ended(grpc.StatusCode.INTERNAL, "x", "INTERNAL")) == "INTERNAL"
    assert coordinator_reason(ended(grpc.StatusCode.INTERNAL, "x", "INTERNAL", domain="proxy.example")) == ""
    assert coordinator_reason(ended(grpc.StatusCode.INTERNAL, "x")) == ""
    garbled = grpc.aio.AioRpcError(grpc.StatusCode.INTERNAL, grpc.aio.Metadata(),
                                   grpc.aio.Metadata(("grpc-status-details-bin", b"\xff\x00garbage")), "x", "")  # fmt: skip
    assert coordinator_reason(garbled) == ""


@pytest.mark.parametrize(
    "code, details, reason",
    [
        (grpc.StatusCode.INTERNAL, "Internal error from Core", None),  # a write found the connection gone
        (grpc.StatusCode.INTERNAL, "Received RST_STREAM with error code 2", None),  # a proxy reset the stream
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "stream message rate exceeded", "STREAM_RATE_EXCEEDED"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limit reached", "RATE_LIMITED"),
        (grpc.StatusCode.UNAVAILABLE, "Socket closed", None),
        (grpc.StatusCode.UNAVAILABLE, "the miner stopped reading its stream", "STREAM_STALLED"),
        (grpc.StatusCode.CANCELLED, "CANCELLED", None),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", None),
    ],
)
def test_ends_not_about_a_message_do_not_count(
    code: grpc.StatusCode, details: str, reason: str | None
) -> None:
    assert not refused_by_coordinator(ended(code, details, reason))


@pytest.mark.parametrize(
    "code, details, reason",
    [
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max (9000000 vs. 8388608)", None),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "the request is 9000000 bytes", "MESSAGE_TOO_LARGE"),
        (grpc.StatusCode.INVALID_ARGUMENT, "failure.message: at most 4096 characters", "INVALID_ARGUMENT"),
        (grpc.StatusCode.INVALID_ARGUMENT, "the request is not a valid ConnectRequest", "MALFORMED_REQUEST"),
        (grpc.StatusCode.INTERNAL, "internal error; see the coordinator log", "INTERNAL"),
    ],
)
def test_the_coordinator_ending_a_stream_for_a_message_counts(
    code: grpc.StatusCode, details: str, reason: str | None
) -> None:
    assert refused_by_coordinator(ended(code, details, reason))
