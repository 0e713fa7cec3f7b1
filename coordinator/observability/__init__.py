"""Operability: Prometheus metrics, OpenTelemetry tracing and per-transition log lines, wired to the
scheduler's observers and the store's commit hook by `setup`, served by `Observability.start`."""

from __future__ import annotations

import logging
from typing import Any

from ..config import Settings
from ..logs import flush_later
from ..receipts.issuer import ReceiptIssuer
from ..scheduler.engine import Scheduler
from . import joblog, metrics, tracing
from .interceptor import RequestContextInterceptor

__all__ = ["Observability", "RequestContextInterceptor", "setup"]

log = logging.getLogger("coordinator.observability")


class Observability:
    def __init__(self, settings: Settings, scheduler: Scheduler, issuer: ReceiptIssuer | None) -> None:
        self.settings = settings
        self.scheduler = scheduler
        self.metrics: metrics.Metrics | None = None
        self.tracer: tracing.JobTracer | None = None
        self.metrics_port = 0
        self._server: Any = None
        if settings.metrics_port:
            self.metrics = metrics.Metrics(scheduler, issuer, settings.coordinator_id)
        if tracing.configure():
            self.tracer = tracing.JobTracer()

    def observe(self, kind: str, obj: Any, extra: Any) -> None:
        """The scheduler observer: tracing first (its trace id goes in the log line), then log, then metrics."""
        if kind == "transition":
            trace_id = self.tracer.transition(obj, extra) if self.tracer is not None else None
            joblog.transition(obj, extra, trace_id)
        elif kind == "receipts" and self.tracer is not None:
            self.tracer.receipts(obj)
        if self.metrics is not None:
            self.metrics.observe(kind, obj, extra)

    async def start(self) -> None:
        """Serve /metrics (when METRICS_PORT is set) and make this coordinator the hooks' target."""
        if self.metrics is not None:
            from .http import MetricsServer

            server = MetricsServer(
                self.metrics.registry, self.settings.metrics_host, self.settings.metrics_port
            )
            self._server = server  # (before its start: stop() closes it even if the start is cancelled)
            self.metrics_port = await server.start()  # a port in use stops start-up here
        metrics.activate(self.metrics)
        tracing.activate(self.tracer)

    async def stop(self) -> None:
        flush_later()  # the last turn's lines
        if self._server is not None:
            await self._server.stop()
            self._server = None
        if metrics.current() is self.metrics:
            metrics.activate(None)
        if self.tracer is not None:
            tracing.activate(None)
            tracing.flush()


def setup(settings: Settings, scheduler: Scheduler, issuer: ReceiptIssuer | None = None) -> Observability:
    """Attach observers to scheduler (and the store's commit hook); call before scheduler.start()."""
    obs = Observability(settings, scheduler, issuer)
    scheduler.observers.append(obs.observe)
    if obs.metrics is not None and hasattr(scheduler.store, "commit_observer"):
        previous = scheduler.store.commit_observer
        m = obs.metrics
        if previous is None:
            scheduler.store.commit_observer = m.store_commit
        else:  # keep whoever was there first

            def both(group_size: int, seconds: float) -> None:
                previous(group_size, seconds)
                m.store_commit(group_size, seconds)

            scheduler.store.commit_observer = both
    return obs
