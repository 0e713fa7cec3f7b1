"""W3C trace context for the SDK's calls, when the application uses OpenTelemetry (optional).

With opentelemetry-api installed and a span active, every Client call and a Miner's Connect stream carry
`traceparent` (and `tracestate`) metadata, so the coordinator's spans join the caller's trace. A Miner runs
each job inside an `aitbc.miner.run` span whose parent is the trace context that came with the assignment
(in the job's metadata map), so the miner's spans join the job's trace. Without OpenTelemetry, or without a
configured tracer provider, these helpers do nothing measurable.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

try:
    from opentelemetry import propagate, trace
except ImportError:  # pragma: no cover - tracing is optional
    propagate = trace = None  # type: ignore[assignment]

TRACE_KEYS = ("traceparent", "tracestate")


def with_trace_context(metadata: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """metadata plus the current span's W3C trace context (unchanged when no span is active)."""
    if trace is None or not trace.get_current_span().get_span_context().is_valid:
        return metadata
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return metadata + tuple(carrier.items())


@contextmanager
def job_span(job: Any, attempt: int) -> Iterator[Any]:
    """A span around running job, a child of the trace context its assignment carried (if any)."""
    metadata: Mapping[str, str] = job.metadata
    if trace is None or "traceparent" not in metadata:
        yield None
        return
    parent = propagate.extract({k: metadata[k] for k in TRACE_KEYS if k in metadata})
    tracer = trace.get_tracer("aitbc.miner")
    with tracer.start_as_current_span(
        "aitbc.miner.run", context=parent, kind=trace.SpanKind.CONSUMER,
        attributes={"aitbc.job_id": job.job_id, "aitbc.attempt": attempt},
    ) as span:  # fmt: skip
        yield span
