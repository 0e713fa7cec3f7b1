"""`python -m bench.hot_path`: the coordinator's per-job pure functions in process (no gRPC, no store), with
the inputs of the end-to-end bench (bench/worker.py): a client's `{"n": N, "task": "echo"}` job with a generated
idempotency key, batched 500 to a SubmitJobs call; an echo miner's result of the same value, units "1" of
"jobs", no receipt key of its own. Microseconds per job, best of several repeats (timeit). Figures only:
nothing is asserted (see bench/README.md)."""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable

from aitbc.coordinator.v1 import job_pb2, job_service_pb2, miner_service_pb2
from aitbc.receipts import Signer

from coordinator.domain.ids import uuid7
from coordinator.domain.model import Capabilities, Job, JobResult, JobState
from coordinator.domain.validation import Limits
from coordinator.receipts.issuer import ReceiptIssuer
from coordinator.receipts.keyring import ActiveKeys
from coordinator.receipts.tiled_log import TiledLog
from coordinator.scheduler.sessions import Session
from coordinator.security.bounds import check_bounds
from coordinator.services.convert import fill_job, job_message, job_spec, result_in, struct_digest
from coordinator.store.base import UnitOfWork

BATCH = 500  # jobs per SubmitJobs call, and results per miner message at most (scenario 3)
LIMITS = Limits()
NOW_US = 1_795_000_000_123_456


def submit_request(n: int) -> job_service_pb2.SubmitJobRequest:
    """As aitbc.client.Client.request + _keyed make it for the bench's payload."""
    req = job_service_pb2.SubmitJobRequest(
        constraints=job_pb2.Constraints(), idempotency_key=f"auto-{uuid7()}"
    )
    req.payload.SetInParent()
    req.payload.update({"n": n, "task": "echo"})
    return req


def miner_result(job: Job) -> miner_service_pb2.Result:
    """As aitbc.miner.Miner._result makes an echo runner's result (no signer)."""
    r = miner_service_pb2.Result(job_id=job.job_id, attempt=job.attempt, units="1", unit_type="jobs")
    r.result.MergeFromString(job.payload)
    return r


def stored_job(req: job_service_pb2.SubmitJobRequest) -> Job:
    """The job the scheduler makes of a submission, as a miner runs it (attempt 1, RUNNING)."""
    spec = job_spec(req, LIMITS)
    return Job(
        job_id=uuid7(), client_id="bench-client", state=JobState.RUNNING, payload=spec.payload,
        payload_kind=spec.payload_kind, input_sha256=spec.input_sha256, constraints=spec.constraints,
        priority=spec.priority, ttl_us=spec.ttl_us, max_attempts=spec.max_attempts,
        execution_timeout_us=spec.execution_timeout_us, idempotency_key=spec.idempotency_key,
        request_fingerprint=spec.fingerprint, created_us=NOW_US, updated_us=NOW_US + 900, metadata=spec.metadata,
        attempt=1, miner_id="miner-1", started_us=NOW_US + 900, queued_us=NOW_US,
    )  # fmt: skip


def issuer() -> tuple[ReceiptIssuer, Session]:
    """An issuer with a generated coordinator key (no attestation key), as the bench's coordinator; issue()
    writes to the unit of work only, so no store is opened."""
    keys = ActiveKeys(coordinator=Signer.generate(), attestation=None, log=Signer.generate(), rows=[])
    issuing = ReceiptIssuer(None, keys, "bench-coordinator", "aitbc-bench")  # type: ignore[arg-type]
    session = Session(session_id="s1", miner_id="miner-1", caps=Capabilities(slots=32), transport="stream",
                      connected_us=NOW_US)  # fmt: skip
    return issuing, session


def cases(jobs: int) -> list[tuple[str, Callable[[], object]]]:
    """(name, a callable doing that work for `jobs` jobs), in the order a job meets them."""
    requests = [submit_request(n) for n in range(1, jobs + 1)]
    batches = [
        job_service_pb2.SubmitJobsRequest(requests=requests[i : i + BATCH]) for i in range(0, jobs, BATCH)
    ]
    stored = [stored_job(r) for r in requests]
    results = [miner_result(j) for j in stored]
    uplinks = [
        miner_service_pb2.ConnectRequest(results=miner_service_pb2.Results(results=results[i : i + BATCH]))
        for i in range(0, jobs, BATCH)
    ]
    ins = [result_in(r, LIMITS) for r in results]
    job_results = [
        JobResult(j.job_id, j.attempt, r.output, r.output_kind, r.result_sha256, r.units, r.unit_type, "miner-1",
                  NOW_US + 2000)
        for j, r in zip(stored, ins, strict=True)
    ]  # fmt: skip
    issuing, session = issuer()

    def bounds_submit() -> None:
        for b in batches:
            check_bounds(b)

    def spec() -> None:
        for r in requests:
            job_spec(r, LIMITS)

    def digest() -> None:
        for r in requests:
            struct_digest(r.payload, LIMITS, "payload")

    def answer() -> None:  # SubmitJobs answers jobs without their payload
        for j in stored:
            job_message(j, with_payload=False)

    def assignment() -> None:  # an assignment's job is filled in place, with its payload
        for j in stored:
            fill_job(miner_service_pb2.Assignment(attempt=1).job, j)

    def bounds_results() -> None:
        for u in uplinks:
            check_bounds(u)

    def intake() -> None:
        for r in results:
            result_in(r, LIMITS)

    def issue() -> None:
        unit = UnitOfWork()
        for j, r in zip(stored, job_results, strict=True):
            issuing.issue(j, r, session, unit)

    unit = UnitOfWork()
    for j, r in zip(stored, job_results, strict=True):
        issuing.issue(j, r, session, unit)
    leaves = [row.leaf_hash for row in unit.receipts]

    def log() -> None:  # a committed receipt's leaf joins the in-memory log (a tile's root every 256)
        tree = TiledLog()
        for leaf in leaves:
            tree.append(leaf)

    return [
        ("check_bounds(SubmitJobsRequest)", bounds_submit),
        ("job_spec", spec),
        ("  of which struct_digest", digest),
        ("job_message(with_payload=False)", answer),
        ("fill_job (an assignment's job)", assignment),
        ("check_bounds(ConnectRequest results)", bounds_results),
        ("result_in", intake),
        ("ReceiptIssuer.issue", issue),
        ("TiledLog.append", log),
    ]


def measure(fn: Callable[[], object], jobs: int, repeats: int) -> float:
    """Best of `repeats` runs over `jobs` jobs, in microseconds per job."""
    return min(timeit.repeat(fn, number=1, repeat=repeats)) / jobs * 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--jobs", type=int, default=5000, help="jobs per run (a multiple of 500 is as batched)"
    )
    parser.add_argument("--repeats", type=int, default=7, help="runs of each; the best is shown")
    args = parser.parse_args(argv)
    rows = cases(args.jobs)
    total = 0.0
    print(f"{'function':<40} {'us/job':>8}   ({args.jobs:,} jobs, best of {args.repeats})")
    for name, fn in rows:
        fn()  # warm-up: caches, first-call costs
        us = measure(fn, args.jobs, args.repeats)
        if not name.startswith(" "):  # a part of the row above is not counted twice
            total += us
        print(f"{name:<40} {us:8.2f}")
    print(f"{'sum per job':<40} {total:8.2f}")


if __name__ == "__main__":
    main()
