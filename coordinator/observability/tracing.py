"""OpenTelemetry tracing: off by default, on with the standard OTEL_* variables.

On when OTEL_TRACES_EXPORTER names an exporter other than `none` (`otlp`, `console`), or when
OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set; OTEL_SDK_DISABLED=true turns it off
whatever else is set. Everything else (sampler, resource attributes, service name, OTLP endpoint, headers,
protocol, batch sizes, propagators) is the SDK's own reading of the OTEL_* variables. Needs the `tracing`
extra: `pip install 'aitbc-coordinator[tracing]'`. An application that has already installed an SDK tracer
provider (or calls `enable(provider)`) keeps its own.

One trace per job. The submit span is a child of the caller's context, taken from the W3C `traceparent`
gRPC metadata of SubmitJob; its span context is kept in memory with the job (not in the store) until the
job is finished. Every later step of the job is a child span of it: `aitbc.job.assign` (from entering the
queue to the assignment: the queue wait), `aitbc.job.accept`, `aitbc.job.result` (from the assignment to the
accepted result: the attempt), `aitbc.job.receipt` (from issuing to the durable commit), and
`aitbc.job.requeue`, `aitbc.job.fail`, `aitbc.job.cancel`, `aitbc.job.expire` (until the commit). Assignments sent to a miner carry the
assignment span's `traceparent` in the job's metadata map, so the miner's own spans join the same trace.
A job rebuilt from the store after a restart continues in a new trace, rooted at an `aitbc.job.resume` span.

When off, nothing here is imported beyond this module and the hooks cost one boolean test.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

from ..domain.clock import now_us
from ..domain.model import Event, Job, JobState

log = logging.getLogger("coordinator.tracing")

ENABLED = False
_tracer: Any = None
_provider: Any = None
_owned_provider = False
_current: JobTracer | None = None

SPAN_NAMES = {
    JobState.ASSIGNED: "aitbc.job.assign",
    JobState.RUNNING: "aitbc.job.accept",
    JobState.COMPLETED: "aitbc.job.result",
    JobState.FAILED: "aitbc.job.fail",
    JobState.QUEUED: "aitbc.job.requeue",
    JobState.CANCELED: "aitbc.job.cancel",
    JobState.EXPIRED: "aitbc.job.expire",
}


def wanted(env: Mapping[str, str]) -> bool:
    """Do these OTEL_* variables ask for tracing?"""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters:
        return any(e.strip() not in ("", "none") for e in exporters.split(","))
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def configure(env: Mapping[str, str] | None = None) -> bool:
    """Turn tracing on if env (default: the process environment) asks for it. Returns whether it is on."""
    env = os.environ if env is None else env
    if ENABLED:
        return True
    if not wanted(env):
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError:
        log.warning("OTEL_* settings ask for tracing but OpenTelemetry is not installed: "
                    "pip install 'aitbc-coordinator[tracing]'; tracing stays off")  # fmt: skip
        return False
    provider = trace.get_tracer_provider()
    owned = False
    if not isinstance(provider, TracerProvider):
        provider = _build_provider(env)
        if provider is None:
            return False
        trace.set_tracer_provider(provider)
        owned = True
    enable(provider)
    global _owned_provider
    _owned_provider = owned
    log.info(
        "tracing on", extra={"event": "tracing.on", "exporters": env.get("OTEL_TRACES_EXPORTER", "otlp")}
    )
    return True


def _build_provider(env: Mapping[str, str]) -> Any:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    attributes = {} if env.get("OTEL_SERVICE_NAME") else {"service.name": "aitbc-coordinator"}
    provider = TracerProvider(resource=Resource.create(attributes))
    names = [n.strip() for n in (env.get("OTEL_TRACES_EXPORTER") or "otlp").lower().split(",")]
    added = 0
    for name in names:
        exporter: Any = None
        if name == "console":
            exporter = ConsoleSpanExporter()
        elif name == "otlp":
            protocol = (
                env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "grpc"
            )
            try:
                if protocol.startswith("http"):
                    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
                else:
                    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
                exporter = OTLPSpanExporter()
            except ImportError:
                log.warning("the OTLP exporter for protocol %s is not installed (the tracing extra has grpc)",
                            protocol)  # fmt: skip
        elif name not in ("", "none"):
            log.warning("unknown OTEL_TRACES_EXPORTER %r ignored (known: otlp, console, none)", name)
        if exporter is not None:
            provider.add_span_processor(BatchSpanProcessor(exporter))
            added += 1
    if not added:
        log.warning("no usable trace exporter: tracing stays off")
        return None
    return provider


def enable(provider: Any = None) -> None:
    """Turn tracing on with provider (default: the global one). For tests and embedding applications."""
    from opentelemetry import trace

    global ENABLED, _tracer, _provider
    _provider = provider or trace.get_tracer_provider()
    _tracer = _provider.get_tracer("aitbc.coordinator")
    ENABLED = True


def disable() -> None:
    global ENABLED, _tracer, _provider, _owned_provider
    ENABLED, _tracer, _provider, _owned_provider = False, None, None, False


def flush(timeout_ms: int = 5000) -> None:
    """Export what is pending (on shutdown)."""
    if ENABLED and _provider is not None and hasattr(_provider, "force_flush"):
        try:
            _provider.force_flush(timeout_ms)
        except Exception:  # pragma: no cover - an exporter's failure must not block shutdown
            log.warning("flushing traces failed", exc_info=True)


def _ns(us: int) -> int:
    return us * 1000


class JobTracer:
    """Spans for jobs, fed by the scheduler's observers (on the event loop)."""

    def __init__(self) -> None:
        from opentelemetry import trace

        self.trace = trace
        self.roots: dict[str, Any] = {}  # job id -> SpanContext of its submit (or resume) span
        self.assigned: dict[str, tuple[Any, int]] = {}  # job id -> (SpanContext, time) of its assignment

    def _parent(self, job: Job) -> Any:
        sc = self.roots.get(job.job_id)
        if sc is None:  # rebuilt after a restart: its submit context was in the old process's memory
            span = _tracer.start_span("aitbc.job.resume", context=self.trace.set_span_in_context(
                self.trace.INVALID_SPAN), attributes={"aitbc.job_id": job.job_id, "aitbc.client_id": job.client_id})  # fmt: skip
            span.end()
            sc = self.roots[job.job_id] = span.get_span_context()
        return self.trace.set_span_in_context(self.trace.NonRecordingSpan(sc))

    def transition(self, job: Job, event: Event) -> str | None:
        """Record the span of one transition; returns the job's trace id (hex) for the log line."""
        trace = self.trace
        if event.from_state is None:
            span = _tracer.start_span(
                "aitbc.job.submit", start_time=_ns(event.occurred_us),
                attributes={"aitbc.job_id": job.job_id, "aitbc.client_id": job.client_id,
                            "aitbc.priority": job.priority},
            )  # fmt: skip  # parent: the current context (the SubmitJob call, joined to the client's trace)
            span.end()
            sc = self.roots[job.job_id] = span.get_span_context()
            return format(sc.trace_id, "032x")
        to = event.to_state
        parent = self._parent(job)
        start = event.occurred_us
        if to is JobState.ASSIGNED and job.queued_us:
            start = min(start, job.queued_us)  # the span covers the queue wait
        elif to is JobState.COMPLETED:  # the span covers the attempt: from its assignment to the result
            assigned = self.assigned.get(job.job_id)
            start = min(start, assigned[1] if assigned else job.started_us or start)
        attributes = {"aitbc.job_id": job.job_id, "aitbc.attempt": event.attempt, "aitbc.reason": event.reason,
                      "aitbc.from_state": event.from_state.name, "aitbc.to_state": to.name}  # fmt: skip
        if event.miner_id:
            attributes["aitbc.miner_id"] = event.miner_id
        links = []
        current = trace.get_current_span().get_span_context()
        if current.is_valid and current.trace_id != self.roots[job.job_id].trace_id:
            links.append(trace.Link(current))  # e.g. the miner's Connect stream that delivered the result
        span = _tracer.start_span(SPAN_NAMES[to], context=parent, start_time=_ns(start), attributes=attributes,
                                  links=links)  # fmt: skip
        if to is JobState.FAILED or (to is JobState.QUEUED and event.reason != "REJECTED"):
            span.set_status(trace.Status(trace.StatusCode.ERROR, event.reason))
        # assign and result spans measure up to the decision; the others last until the commit made it durable
        span.end(end_time=_ns(event.occurred_us) if to in (JobState.ASSIGNED, JobState.COMPLETED) else None)
        if to is JobState.ASSIGNED:
            self.assigned[job.job_id] = (span.get_span_context(), event.occurred_us)
        elif to is not JobState.RUNNING:
            self.assigned.pop(job.job_id, None)
        sc = self.roots[job.job_id]
        if to.terminal:
            del self.roots[job.job_id]
        return format(sc.trace_id, "032x")

    def receipts(self, rows: list[Any]) -> None:
        end = now_us()
        for row in rows:
            sc = self.roots.get(row.job_id)
            if sc is None:
                continue
            context = self.trace.set_span_in_context(self.trace.NonRecordingSpan(sc))
            span = _tracer.start_span("aitbc.job.receipt", context=context, start_time=_ns(row.issued_us),
                                      attributes={"aitbc.job_id": row.job_id, "aitbc.receipt_id": row.receipt_id,
                                                  "aitbc.attempt": row.attempt, "aitbc.leaf_index": row.leaf_index})  # fmt: skip
            span.end(end_time=_ns(max(end, row.issued_us)))

    def carrier_for(self, job_id: str) -> dict[str, str]:
        """W3C trace context of the job's assignment, for the miner."""
        assigned = self.assigned.get(job_id)
        sc = assigned[0] if assigned else self.roots.get(job_id)
        if sc is None:
            return {}
        from opentelemetry import propagate

        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=self.trace.set_span_in_context(self.trace.NonRecordingSpan(sc)))
        return carrier


def activate(tracer: JobTracer | None) -> None:
    global _current
    _current = tracer


def decorate_assignment(message: Any) -> None:
    """Put the job's trace context into an outgoing Assignment's job metadata (when tracing is on)."""
    t = _current
    if t is not None:
        carrier = t.carrier_for(message.job.job_id)
        if carrier:
            message.job.metadata.update(carrier)


async def traced_call(method: Callable, request: Any, context: Any, method_name: str, metadata: Any) -> Any:
    """Run one RPC in the caller's trace context (W3C traceparent metadata); unary calls get a server span."""
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace

    carrier = {}
    for key, value in metadata or ():
        if isinstance(value, str):
            carrier[key] = value
    parent = propagate.extract(carrier)
    # Each RPC runs in a task of its own, so the attached context ends with the call.
    otel_context.attach(parent)
    result = method(request, context)
    if hasattr(result, "__aiter__") or hasattr(request, "__aiter__"):
        return result if hasattr(result, "__aiter__") else await result  # streams: no span of their own
    service, _, name = method_name.lstrip("/").rpartition("/")
    with _tracer.start_as_current_span(
        method_name.lstrip("/"), context=parent, kind=trace.SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
    ):  # fmt: skip
        return await result
