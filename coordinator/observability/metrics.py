"""Prometheus metrics: counters and histograms fed by the scheduler's observers and the store's commit hook,
gauges read from live state at scrape time. Served by `observability.http` on METRICS_PORT.

Names follow Prometheus conventions: an `aitbc_` prefix, base units in the name (`_seconds`), `_total` on
counters (the client library appends it), and only bounded label sets: states, message types, reason codes
and configured API-key names. No job, session or client ids are ever labels.

The module-level functions (`rate_limited`, `stream_received`, `stream_sent`, `dispatched`) are hooks for
code that has no handle on the coordinator (the miner servicer, the rate limiter): they update the metrics
of the running coordinator, and cost one `is None` test when metrics are off.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..domain.clock import MICROS, now_us
from ..domain.model import Event, Job, JobState

if TYPE_CHECKING:
    from ..receipts.issuer import ReceiptIssuer
    from ..scheduler.engine import Scheduler
    from ..scheduler.sessions import Session

FINISHED_STATES = {
    JobState.COMPLETED: "completed",
    JobState.FAILED: "failed",
    JobState.CANCELED: "canceled",
    JobState.EXPIRED: "expired",
}
ACTIVE_STATES = {JobState.QUEUED: "queued", JobState.ASSIGNED: "assigned", JobState.RUNNING: "running"}
STREAM_IN_TYPES = (
    "hello",
    "results",
    "heartbeat",
    "accept",
    "reject",
    "failure",
    "progress",
    "drain",
    "capacity",
    "empty",
)
STREAM_OUT_TYPES = ("welcome", "assignments", "cancel", "result_ack", "drain", "go_away")
# Reasons a job goes back to the queue that the coordinator itself names; anything else is a code chosen
# by a miner for a retryable failure, counted as MINER_FAILURE so the label set stays bounded.
REQUEUE_REASONS = (
    "LEASE_EXPIRED",
    "MINER_GONE",
    "MINER_LOST_JOB",
    "REJECTED",
    "EXECUTION_TIMEOUT",
    "HEARTBEAT_TIMEOUT",
    "MINER_FAILURE",
)
DISCONNECT_REASONS = (
    "STREAM_CLOSED",
    "STREAM_CANCELLED",
    "HEARTBEAT_TIMEOUT",
    "SESSION_REPLACED",
    "DRAINED",
    "OUTBOX_OVERFLOW",
    "STREAM_STALLED",
    "SHUTTING_DOWN",
    "OTHER",
)
MAX_KEY_LABELS = 200  # distinct rate-limit key names before the rest are counted as "other"

QUEUE_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)
DISPATCH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
RUN_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800, 3600, 14400, 86400)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
GROUP_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)


class Metrics:
    """The coordinator's metrics, in a registry of their own (one per coordinator)."""

    def __init__(self, scheduler: Scheduler, issuer: ReceiptIssuer | None, coordinator_id: str) -> None:
        self.scheduler = scheduler
        disable_created_metrics()  # no `_created` series: they double the series count for little use
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.jobs_submitted = Counter("aitbc_jobs_submitted", "Jobs accepted by SubmitJob/SubmitJobs.",
                                      registry=r)  # fmt: skip
        self.jobs_finished = Counter(
            "aitbc_jobs_finished", "Jobs that reached a terminal state, by that state.", ["state"], registry=r
        )
        self.requeues = Counter(
            "aitbc_job_requeues",
            "Jobs sent back to the queue, by reason (miner-chosen failure codes count as MINER_FAILURE).",
            ["reason"],
            registry=r,
        )
        self.receipts_issued = Counter(
            "aitbc_receipts_issued", "Signed receipts issued and committed.", registry=r
        )
        self.stream_in = Counter("aitbc_stream_messages_received",
                                 "Messages received on miner Connect streams, by type.", ["type"], registry=r)  # fmt: skip
        self.stream_out = Counter("aitbc_stream_messages_sent",
                                  "Messages sent on miner Connect streams, by type.", ["type"], registry=r)  # fmt: skip
        self.rate_limited_total = Counter(
            "aitbc_rate_limited_requests",
            "Requests refused by a rate limit, by API key name and limit group.",
            ["key", "group"],
            registry=r,
        )
        self.miner_connections = Counter(
            "aitbc_miner_connections", "Miner sessions opened, by transport.", ["transport"], registry=r
        )
        self.miner_disconnections = Counter(
            "aitbc_miner_disconnections", "Miner sessions closed, by reason.", ["reason"], registry=r
        )
        self.queue_wait = Histogram(
            "aitbc_job_queue_wait_seconds",
            "Time from entering the queue (submission or requeue) to assignment.",
            buckets=QUEUE_WAIT_BUCKETS,
            registry=r,
        )
        self.dispatch_latency = Histogram(
            "aitbc_job_dispatch_latency_seconds",
            "Time from the assignment decision to the assignment leaving for the miner "
            "(stream write or PollJob answer); includes the store commit.",
            buckets=DISPATCH_BUCKETS,
            registry=r,
        )
        self.run_time = Histogram(
            "aitbc_job_run_seconds",
            "Time from the assignment of an attempt to its accepted result (the miner's run and delivery).",
            buckets=RUN_BUCKETS,
            registry=r,
        )
        self.commit_latency = Histogram(
            "aitbc_store_commit_seconds",
            "Duration of one group commit of the store's writer.",
            buckets=COMMIT_BUCKETS,
            registry=r,
        )
        self.commit_group = Histogram(
            "aitbc_store_commit_group_size",
            "Units of work written by one group commit.",
            buckets=GROUP_BUCKETS,
            registry=r,
        )
        for state in FINISHED_STATES.values():
            self.jobs_finished.labels(state)
        for reason in REQUEUE_REASONS:
            self.requeues.labels(reason)
        for kind in STREAM_IN_TYPES:
            self.stream_in.labels(kind)
        for kind in STREAM_OUT_TYPES:
            self.stream_out.labels(kind)
        for transport in ("stream", "unary"):
            self.miner_connections.labels(transport)
        for reason in DISCONNECT_REASONS:
            self.miner_disconnections.labels(reason)
        self._assigned_us: dict[str, int] = {}  # job id -> when its current attempt was assigned
        self._key_labels: set[str] = set()
        self._key_lock = threading.Lock()
        ProcessCollector(registry=r)  # process_resident_memory_bytes, CPU, open fds (Linux /proc)
        r.register(LiveStateCollector(scheduler, issuer, coordinator_id))

    # ------------------------------------------------------------------ scheduler observer
    def observe(self, kind: str, obj: Any, extra: Any) -> None:
        if kind == "transition":
            self._transition(obj, extra)
        elif kind == "receipts":
            self.receipts_issued.inc(len(obj))
        elif kind == "session_open":
            self.miner_connections.labels("unary" if obj.transport == "unary" else "stream").inc()
        elif kind == "session_close":
            reason = extra if extra in DISCONNECT_REASONS else "OTHER"
            self.miner_disconnections.labels(reason).inc()

    def _transition(self, job: Job, event: Event) -> None:
        to = event.to_state
        if event.from_state is None:
            self.jobs_submitted.inc()
        elif to is JobState.QUEUED:
            reason = event.reason if event.reason in REQUEUE_REASONS else "MINER_FAILURE"
            self.requeues.labels(reason).inc()
        elif to is JobState.ASSIGNED:
            self._assigned_us[job.job_id] = event.occurred_us
            if job.queued_us:
                self.queue_wait.observe(max(0, event.occurred_us - job.queued_us) / MICROS)
        elif to in FINISHED_STATES:
            self.jobs_finished.labels(FINISHED_STATES[to]).inc()
            assigned = self._assigned_us.pop(job.job_id, 0) or job.started_us  # started_us: after a restart
            if to is JobState.COMPLETED and assigned:
                self.run_time.observe(max(0, event.occurred_us - assigned) / MICROS)
        if to is JobState.QUEUED:
            self._assigned_us.pop(job.job_id, None)

    # ------------------------------------------------------------------ other hooks
    def store_commit(self, group_size: int, seconds: float) -> None:
        """Called from the store's writer thread (prometheus_client metrics are thread-safe)."""
        self.commit_group.observe(group_size)
        self.commit_latency.observe(seconds)

    def dispatched(self, assignments: Iterable[Any]) -> None:
        now = now_us()
        for a in assignments:
            job = a.job
            # still ASSIGNED at this attempt: updated_us is the moment of the assignment decision
            if job.state is JobState.ASSIGNED and job.attempt == a.attempt:
                self.dispatch_latency.observe(max(0, now - job.updated_us) / MICROS)

    def rate_limited(self, key: str, group: str) -> None:
        self.rate_limited_total.labels(self._bounded_key(key or "anonymous"), (group or "default")[:64]).inc()

    def _bounded_key(self, key: str) -> str:
        key = key[:64]
        if key in self._key_labels:
            return key
        with self._key_lock:
            if len(self._key_labels) >= MAX_KEY_LABELS:
                return "other"
            self._key_labels.add(key)
        return key


class LiveStateCollector(Collector):
    """Gauges read from the scheduler and the receipt log when scraped (on the event loop)."""

    def __init__(self, scheduler: Scheduler, issuer: ReceiptIssuer | None, coordinator_id: str) -> None:
        self.scheduler = scheduler
        self.issuer = issuer
        self.coordinator_id = coordinator_id
        self.version = _version()

    def describe(self) -> Iterator[Metric]:
        return iter(())  # collected only on scrape: describing would read live state at registration

    def collect(self) -> Iterator[Metric]:
        s = self.scheduler
        info = GaugeMetricFamily("aitbc_coordinator_info", "Constant 1, labelled with the coordinator's "
                                 "id and version.", labels=["coordinator_id", "version"])  # fmt: skip
        info.add_metric([self.coordinator_id, self.version], 1)
        yield info
        counts = {name: s.active_counts[state] for state, name in ACTIVE_STATES.items()}
        jobs = GaugeMetricFamily(
            "aitbc_jobs", "Jobs not yet finished, by state (finished jobs: aitbc_jobs_finished_total).",
            labels=["state"],
        )  # fmt: skip
        for name, count in counts.items():
            jobs.add_metric([name], count)
        yield jobs
        depth = s.queues.depth_by_priority()
        queue = GaugeMetricFamily(
            "aitbc_queue_depth", "Jobs waiting in the ready queues, by priority (0-9).", labels=["priority"]
        )
        for priority in range(10):
            queue.add_metric([str(priority)], depth.get(priority, 0))
        yield queue
        sessions: list[Session] = list(s.by_miner.values())
        yield GaugeMetricFamily("aitbc_miners_connected", "Miners with a live session (draining included).",
                                value=len(sessions))  # fmt: skip
        yield GaugeMetricFamily("aitbc_miners_draining", "Miners whose drain is not over: connected and draining, "
                                "or away with a drain pending.", value=s.miners_draining())  # fmt: skip
        yield GaugeMetricFamily(
            "aitbc_miners_disconnected",
            "Miners gone within their reconnect grace period (their jobs, or a drain, wait for them).",
            value=len(s.miners_away()),
        )
        keys = s.stored_keys
        lookups = CounterMetricFamily(
            "aitbc_idempotency_store_lookups", "Idempotency keys of submits not held in memory, by whether the "
            "store was read for them (read) or the key was surely new (skipped).", labels=["outcome"],
        )  # fmt: skip
        lookups.add_metric(["read"], keys.read)
        lookups.add_metric(["skipped"], keys.skipped)
        yield lookups
        slots = GaugeMetricFamily("aitbc_miner_slots", "Job slots of connected miners, free or busy "
                                  "(draining miners' free slots are not counted).", labels=["state"])  # fmt: skip
        slots.add_metric(["free"], sum(max(0, x.free) for x in sessions if not x.draining))
        slots.add_metric(["busy"], sum(len(x.held) for x in sessions))
        yield slots
        if self.issuer is not None:
            yield GaugeMetricFamily("aitbc_receipt_log_leaves",
                                    "Receipts in the committed Merkle log (its tree size).",
                                    value=self.issuer.committed_size)  # fmt: skip
            checkpoint = self.issuer.checkpoint
            yield GaugeMetricFamily("aitbc_receipt_checkpoint_leaves",
                                    "Tree size covered by the latest signed checkpoint.",
                                    value=checkpoint.tree_size if checkpoint else 0)  # fmt: skip


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("aitbc-coordinator")
    except Exception:  # pragma: no cover - not installed as a distribution
        return "unknown"


# ---------------------------------------------------------------------- hooks for code without a handle
_current: Metrics | None = None


def activate(metrics: Metrics | None) -> None:
    global _current
    _current = metrics


def current() -> Metrics | None:
    return _current


def rate_limited(key_name: str, group: str) -> None:
    """Count a request refused by a rate limit. key_name: the API key's identity name (never the key)."""
    m = _current
    if m is not None:
        m.rate_limited(key_name, group)


def stream_received(kind: str | None) -> None:
    m = _current
    if m is not None:
        m.stream_in.labels(kind if kind in STREAM_IN_TYPES else "empty").inc()


_OUT_TYPES = {
    "CancelOut": "cancel",
    "AckOut": "result_ack",
    "DrainOut": "drain",
    "GoAwayOut": "go_away",
}


def stream_sent(message: object) -> None:
    """A message written to a Connect stream: a scheduler Outbound, or a type name ("welcome")."""
    m = _current
    if m is None:
        return
    if isinstance(message, str):
        m.stream_out.labels(message).inc()
    elif isinstance(message, list):
        m.stream_out.labels("assignments").inc()
        m.dispatched(message)
    else:
        kind = _OUT_TYPES.get(type(message).__name__)
        if kind is not None:
            m.stream_out.labels(kind).inc()


def dispatched(assignments: Iterable[Any]) -> None:
    """Assignments handed to a miner outside the stream (PollJob answers)."""
    m = _current
    if m is not None:
        m.dispatched(assignments)
