"""AdminService: the operator's view (stats, jobs, miners, accounts) and controls (drain, key switch)."""

from __future__ import annotations

import grpc
from aitbc.coordinator.v1 import admin_service_pb2 as pb
from aitbc.coordinator.v1 import admin_service_pb2_grpc, job_service_pb2

from ..domain.clock import now_us
from ..domain.errors import CoordinatorError, Kind, invalid
from ..domain.model import JobState
from ..receipts.issuer import ReceiptIssuer, from_nano
from ..scheduler.engine import Scheduler
from ..scheduler.sessions import Session
from ..security.keys import KeyRing
from ..store.base import JobFilter
from .convert import capabilities_message, job_message, timestamp
from .jobs import decode_page_token, page_of, page_size, states_filter

WINDOWS_S = (60, 300, 3600)


def percentile(values: list[int], q: float) -> int:
    if not values:
        return 0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def latency(samples, since_us: int) -> pb.LatencySummary:  # type: ignore[no-untyped-def]
    values = [v for at, v in samples if at >= since_us]
    out = pb.LatencySummary(samples=len(values))
    out.p50.FromMicroseconds(percentile(values, 0.50))
    out.p95.FromMicroseconds(percentile(values, 0.95))
    return out


def miner_info(s: Session) -> pb.MinerInfo:
    status = pb.MINER_STATUS_DRAINING if s.draining else pb.MINER_STATUS_ONLINE
    return pb.MinerInfo(
        miner_id=s.miner_id, session_id=s.session_id, transport=s.transport, status=status,
        capabilities=capabilities_message(s.caps), running_jobs=len(s.held) + s.reserved, connected_at=timestamp(s.connected_us),
        last_seen_at=timestamp(s.last_seen_us), completed=s.completed, failed=s.failed, offered_slots=s.offered,
    )  # fmt: skip


def account_message(row: dict) -> job_service_pb2.Account:
    return job_service_pb2.Account(
        account_id=row["account_id"], kind=row["kind"], balance=from_nano(row["balance_nano"]),
        receipts=row["receipts"], units=from_nano(row["units_nano"]), updated_at=timestamp(row["updated_us"] or 0),
    )  # fmt: skip


class AdminServicer(admin_service_pb2_grpc.AdminServiceServicer):
    def __init__(self, scheduler: Scheduler, issuer: ReceiptIssuer, keyring: KeyRing) -> None:
        self.scheduler = scheduler
        self.issuer = issuer
        self.keyring = keyring

    async def GetStats(
        self, request: pb.GetStatsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetStatsResponse:
        s = self.scheduler
        now = now_us()
        counts = await s.store.count_by_state()
        sessions = list(s.by_miner.values())
        windows = []
        for seconds in WINDOWS_S:
            w = pb.WindowCounts(**await s.transitions_since(now - seconds * 1_000_000))
            w.window.FromSeconds(seconds)
            windows.append(w)
        hour_ago = now - 3600 * 1_000_000
        return pb.GetStatsResponse(
            jobs_by_state=[pb.StateCount(state=int(st), count=counts.get(st, 0)) for st in JobState],
            queue_depth=s.queues.depth, miners_online=len(sessions),
            miners_draining=s.miners_draining(),  # (away ones with a drain pending too: it is not over)
            slots_free=sum(max(0, x.free) for x in sessions if not x.draining),
            slots_busy=sum(len(x.held) for x in sessions), windows=windows,
            queue_wait=latency(s.samples_wait, hour_ago), run_time=latency(s.samples_run, hour_ago),
            as_of=timestamp(now),
        )  # fmt: skip

    async def ListJobs(
        self, request: pb.AdminServiceListJobsRequest, context: grpc.aio.ServicerContext
    ) -> pb.AdminServiceListJobsResponse:
        flt = JobFilter(client_id=request.client_id or None, miner_id=request.miner_id or None,
                        states=states_filter(request.states))  # fmt: skip
        size = page_size(request.page_size)
        after = decode_page_token(request.page_token, flt)
        # (by client and miner, a page may hold fewer jobs than size, even none, and a token: see page_of)
        page = await self.scheduler.list_jobs(flt, size + 1, after)
        messages, token = page_of(page, size, flt, lambda j: job_message(j, with_payload=False))
        return pb.AdminServiceListJobsResponse(jobs=messages, next_page_token=token)

    async def ListMiners(
        self, request: pb.ListMinersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListMinersResponse:
        s = self.scheduler
        miners = [miner_info(session) for session in s.by_miner.values()]
        miners += [self._away(miner_id) for miner_id in s.miners_away()]
        return pb.ListMinersResponse(miners=sorted(miners, key=lambda m: m.miner_id))

    def _away(self, miner_id: str) -> pb.MinerInfo:
        """A miner disconnected within its grace period: its jobs wait for it, and maybe a drain."""
        return pb.MinerInfo(miner_id=miner_id, status=pb.MINER_STATUS_DISCONNECTED,
                            running_jobs=len(self.scheduler.orphans.get(miner_id, {})),
                            drain_pending=miner_id in self.scheduler.drains_pending())  # fmt: skip

    async def DrainMiner(
        self, request: pb.DrainMinerRequest, context: grpc.aio.ServicerContext
    ) -> pb.DrainMinerResponse:
        if not request.miner_id:
            raise invalid("miner_id is required", [("miner_id", "required")])
        # (stored first: a write that fails drains nothing, and is answered as any store error, UNAVAILABLE
        # STORE_UNAVAILABLE when the store cannot be reached)
        session = await self.scheduler.drain_miner(request.miner_id)
        if session is None:  # away within its grace period: drained when it comes back
            return pb.DrainMinerResponse(miner=self._away(request.miner_id))
        return pb.DrainMinerResponse(miner=miner_info(session))

    async def SetApiKeyEnabled(
        self, request: pb.SetApiKeyEnabledRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetApiKeyEnabledResponse:
        if request.role not in ("client", "miner", "admin"):
            raise invalid("role must be client, miner or admin", [("role", "client, miner or admin")])
        if not self.keyring.set_enabled(request.role, request.name, request.enabled):
            raise CoordinatorError(
                Kind.NOT_FOUND, "KEY_NOT_FOUND", f"no {request.role} key named {request.name!r}"
            )
        return pb.SetApiKeyEnabledResponse(enabled=request.enabled)

    async def ListAccounts(
        self, request: pb.ListAccountsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAccountsResponse:
        rows = sorted(self.issuer.accounts.values(), key=lambda r: (r["kind"], r["account_id"]))
        return pb.ListAccountsResponse(accounts=[account_message(r) for r in rows])
