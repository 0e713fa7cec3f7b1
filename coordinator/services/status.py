"""Domain errors -> gRPC status with google.rpc details (ErrorInfo always; BadRequest, RetryInfo as fitting)."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from ..domain.errors import CoordinatorError, Kind

DOMAIN = "coordinator.aitbc"

GRPC_CODES = {kind: getattr(grpc.StatusCode, kind.value) for kind in Kind}


def _pack(message) -> any_pb2.Any:  # type: ignore[no-untyped-def]
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def status_for(error: CoordinatorError) -> tuple[grpc.StatusCode, status_pb2.Status]:
    code = GRPC_CODES[error.kind]
    details = [
        _pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata))
    ]
    if error.field_violations:
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                        for f, d in error.field_violations
                    ]
                )
            )
        )
    if error.retry_after_s is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(error.retry_after_s * 1e9))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    status = status_pb2.Status(
        code=getattr(code_pb2, error.kind.value), message=error.message, details=details
    )
    return code, status


async def abort(context: grpc.aio.ServicerContext, error: CoordinatorError) -> None:
    code, status = status_for(error)
    await context.abort(
        code, error.message, trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),)
    )
