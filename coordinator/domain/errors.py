"""Domain errors: a kind (mapped to a gRPC code by the servicers), a stable reason and details."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Kind(enum.Enum):
    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    OUT_OF_RANGE = "OUT_OF_RANGE"  # past what exists now (it may exist later): a WatchJob resume past the end
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNAVAILABLE = "UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    INTERNAL = "INTERNAL"


@dataclass
class CoordinatorError(Exception):
    """An expected failure with a stable `reason` (part of the contract, e.g. JOB_NOT_FOUND)."""

    kind: Kind
    reason: str
    message: str
    field_violations: list[tuple[str, str]] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    retry_after_s: float | None = None

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


def invalid(
    message: str, violations: list[tuple[str, str]], reason: str = "INVALID_REQUEST"
) -> CoordinatorError:
    return CoordinatorError(Kind.INVALID_ARGUMENT, reason, message, field_violations=violations)


def job_not_found(job_id: str) -> CoordinatorError:
    return CoordinatorError(
        Kind.NOT_FOUND, "JOB_NOT_FOUND", f"job {job_id!r} not found", metadata={"job_id": job_id}
    )
