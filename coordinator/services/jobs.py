"""JobService: clients submit and follow their jobs."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import grpc
from aitbc.coordinator.v1 import job_service_pb2 as pb
from aitbc.coordinator.v1 import job_service_pb2_grpc

from ..domain.errors import CoordinatorError, Kind, invalid
from ..domain.model import Event, Job, JobState
from ..domain.pricing import quote_cost
from ..domain.validation import Limits, check_constraints, check_decimal, check_id, raise_if
from ..scheduler.engine import Scheduler
from ..security.interceptor import identity
from ..store.base import JobFilter, JobPage
from .convert import constraints_from, event_message, job_message, job_spec, result_message

MAX_RESULT_WAIT_S = 900.0


def as_of(job: Job, event: Event) -> Job:
    """The job as it was right after event. A watcher's snapshot is taken when the event's commit lands, and
    the job in memory may be past it by then: events committed together (a result implying the accept), or
    decisions taken since and still being written (which must not be shown before they land)."""
    if job.event_seq == event.sequence:
        return job
    at, to = event.occurred_us, event.to_state
    ended = to.terminal and to is not JobState.COMPLETED
    return dataclasses.replace(
        job, state=to, attempt=event.attempt, miner_id=event.miner_id, event_seq=event.sequence, updated_us=at,
        started_us=at if to is JobState.RUNNING else (job.started_us if job.started_us <= at else 0),
        finished_us=at if to.terminal else 0, terminal_reason=event.reason if ended else "",
        terminal_message=event.message if ended else "",
    )  # fmt: skip


def watch_message(job: Job, event: Event | None) -> pb.WatchJobResponse:
    """A WatchJob message: the job as of event (the snapshot's own state when None), with the sequence a
    watcher resumes after."""
    if event is None:
        return pb.WatchJobResponse(job=job_message(job), sequence=job.event_seq)
    return pb.WatchJobResponse(
        job=job_message(as_of(job, event)), event=event_message(event), sequence=event.sequence
    )


def page_size(requested: int) -> int:
    if requested > 1000:
        raise invalid("page_size is too large", [("page_size", "1 to 1000")])
    return requested or 100


# A page stops short of page_size once its jobs (payloads included) pass this: it must fit the 8 MiB the SDK's
# channel and gRPC's default take (a page of 100 jobs of 1 MiB payloads did not), and our own send limit.
PAGE_BYTES = 4 << 20


def page_of(page: JobPage, size: int, flt: JobFilter, message: Callable[[Job], Any]) -> tuple[list[Any], str]:
    """The messages of a page of jobs (list_jobs asked for size + 1) and the token of the next page ("" if last):
    at most size jobs, and fewer if they would pass PAGE_BYTES (one at least, whatever its size), or if the store
    stopped looking short of them (JobPage.scanned_to; AIP-158: fewer than page_size, even none, with a token)."""
    jobs = page.jobs
    out: list[Any] = []
    total = 0
    for i, job in enumerate(jobs[:size]):
        m = message(job)
        total += m.ByteSize()
        if out and total > PAGE_BYTES:
            return out, encode_page_token(jobs[i - 1].job_id, flt)
        out.append(m)
    if len(jobs) > size:
        return out, encode_page_token(jobs[size - 1].job_id, flt)
    return out, encode_page_token(page.scanned_to, flt) if page.scanned_to else ""


def encode_page_token(last_job_id: str, flt: JobFilter) -> str:
    body = json.dumps({"after": last_job_id, "f": filter_digest(flt)}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(body).decode().rstrip("=")


def decode_page_token(token: str, flt: JobFilter) -> str | None:
    """The last job id of the previous page; INVALID_ARGUMENT for tokens not made with these filters."""
    if not token:
        return None
    try:
        body = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        after = body["after"]
        # (the token is the caller's to forge: its id goes to the store only if it is one we could have issued)
        if body["f"] != filter_digest(flt) or not isinstance(after, str) or not _ISSUED_ID.fullmatch(after):
            raise ValueError
        return body["after"]
    except (ValueError, KeyError, TypeError):
        raise invalid("page_token was not issued for this query", [("page_token", "not from a previous call with these filters")],
                      reason="INVALID_PAGE_TOKEN") from None  # fmt: skip


_ISSUED_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")  # a job id (UUIDv7)


def filter_digest(flt: JobFilter) -> str:
    text = f"{flt.client_id}|{flt.miner_id}|{sorted(int(s) for s in flt.states)}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def states_filter(values) -> frozenset[JobState]:  # type: ignore[no-untyped-def]
    try:
        return frozenset(JobState(v) for v in values if v)
    except ValueError:
        raise invalid("unknown job state in the filter", [("states", "values 1 to 7")]) from None


def name_reused_key(error: CoordinatorError, batched: bool) -> None:
    """error, if the scheduler's IDEMPOTENCY_KEY_REUSED, made to name the request's field: the scheduler names the
    entry by its position (metadata `index`, and `first_index` for a key twice in one batch), knowing no field
    paths, and a client with a batch of hundreds must learn which entry it was."""
    index = error.metadata.get("index")
    if error.reason != "IDEMPOTENCY_KEY_REUSED" or index is None:
        return
    used_before = "used before for a different request"
    if not batched:  # (one request: no position to name)
        del error.metadata["index"]
        error.field_violations = [("idempotency_key", used_before)]
        return
    first = error.metadata.get("first_index")
    if first is None:
        error.message = f"requests[{index}]: {error.message}"
        description = used_before
    else:
        error.message = f"requests[{index}] repeats the idempotency key of requests[{first}]"
        description = f"the key of requests[{first}] too"
    error.field_violations = [(f"requests[{index}].idempotency_key", description)]


class JobServicer(job_service_pb2_grpc.JobServiceServicer):
    def __init__(self, scheduler: Scheduler, limits: Limits, accounts: dict) -> None:
        self.scheduler = scheduler
        self.limits = limits
        self.accounts = accounts  # the issuer's live ledger balances

    async def SubmitJob(
        self, request: pb.SubmitJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitJobResponse:
        spec = job_spec(request, self.limits)
        try:
            [(job, created)] = await self.scheduler.submit(identity().name, [spec])
        except CoordinatorError as exc:
            name_reused_key(exc, batched=False)
            raise
        return pb.SubmitJobResponse(job=job_message(job), created=created)

    async def SubmitJobs(
        self, request: pb.SubmitJobsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SubmitJobsResponse:
        limit = self.limits.max_batch
        if not 1 <= len(request.requests) <= limit:
            raise invalid(f"requests: 1 to {limit} per call", [("requests", f"1 to {limit} entries")])
        specs = [job_spec(r, self.limits, prefix=f"requests[{i}].") for i, r in enumerate(request.requests)]
        try:
            done = await self.scheduler.submit(identity().name, specs)
        except CoordinatorError as exc:
            name_reused_key(exc, batched=True)
            raise
        return pb.SubmitJobsResponse(
            responses=[
                pb.SubmitJobResponse(job=job_message(job, with_payload=False), created=c) for job, c in done
            ]
        )

    async def GetJob(self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext) -> pb.GetJobResponse:
        check_id("job_id", request.job_id)
        job = await self.scheduler.get_job(request.job_id, identity().name)
        return pb.GetJobResponse(job=job_message(job))

    async def GetJobResult(
        self, request: pb.GetJobResultRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetJobResultResponse:
        check_id("job_id", request.job_id)
        remaining = context.time_remaining()
        # answered a little before the caller's deadline, so that it gets WAIT_TIMEOUT (with its details),
        # not its own timer's bare DEADLINE_EXCEEDED
        timeout = (
            MAX_RESULT_WAIT_S
            if remaining is None
            else min(remaining - min(0.25, remaining / 10), MAX_RESULT_WAIT_S)
        )
        try:
            job, result = await asyncio.wait_for(
                self.scheduler.get_result(request.job_id, identity().name, request.wait), timeout
            )
        except TimeoutError:
            raise CoordinatorError(Kind.DEADLINE_EXCEEDED, "WAIT_TIMEOUT",
                                   f"job {request.job_id} did not finish in time", metadata={"job_id": request.job_id}) from None  # fmt: skip
        return pb.GetJobResultResponse(job=job_message(job), result=result_message(result))

    async def CancelJob(
        self, request: pb.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.CancelJobResponse:
        check_id("job_id", request.job_id)
        if len(request.reason) > self.limits.max_long_string:
            raise invalid(
                "reason is too long", [("reason", f"at most {self.limits.max_long_string} characters")]
            )
        job = await self.scheduler.cancel(request.job_id, identity().name, request.reason)
        return pb.CancelJobResponse(job=job_message(job))

    async def ListJobs(
        self, request: pb.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListJobsResponse:
        flt = JobFilter(client_id=identity().name, states=states_filter(request.states))
        size = page_size(request.page_size)
        after = decode_page_token(request.page_token, flt)
        page = await self.scheduler.list_jobs(flt, size + 1, after)  # (a client's own: never stops short)
        messages, token = page_of(page, size, flt, job_message)
        return pb.ListJobsResponse(jobs=messages, next_page_token=token)

    async def WatchJob(self, request: pb.WatchJobRequest, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
        check_id("job_id", request.job_id)
        async for job, event in self.scheduler.watch(request.job_id, identity().name, request.after_sequence):
            yield watch_message(job, event)

    async def QuoteCost(
        self, request: pb.QuoteCostRequest, context: grpc.aio.ServicerContext
    ) -> pb.QuoteCostResponse:
        violations: list[tuple[str, str]] = []
        constraints = constraints_from(request.constraints)
        check_constraints(violations, "constraints", constraints, self.limits)
        check_decimal(violations, "units", request.units)
        raise_if(violations)
        sessions = self.scheduler.by_miner.values()
        q = quote_cost(
            constraints, (s.caps for s in sessions if not s.draining), Decimal(request.units or "1")
        )
        text = lambda d: "" if d is None else format(d.normalize(), "f")  # noqa: E731
        return pb.QuoteCostResponse(eligible_miners=q.eligible_miners, min_unit_price=text(q.min_unit_price),
                                    max_unit_price=text(q.max_unit_price), min_cost=text(q.min_cost),
                                    max_cost=text(q.max_cost))  # fmt: skip

    async def GetUsage(
        self, request: pb.GetUsageRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetUsageResponse:
        from .admin import account_message

        name = identity().name
        row = self.accounts.get((name, "client")) or {"account_id": name, "kind": "client", "balance_nano": 0,
                                                      "receipts": 0, "units_nano": 0, "updated_us": 0}  # fmt: skip
        return pb.GetUsageResponse(account=account_message(row))
