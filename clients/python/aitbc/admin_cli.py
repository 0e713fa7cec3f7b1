"""`aitbc admin`: the operator's commands (stats, jobs, miners, drain, top, accounts, keys). Needs an admin
API key.

Tables for people; `--json` for scripts (plain numbers, seconds as floats, times as RFC 3339 UTC with `Z`, as
protobuf's JSON mapping and the rest of `aitbc` write them).
`aitbc admin top` redraws a live view in the terminal every --interval seconds until Ctrl-C (or
--iterations refreshes). Every call has a deadline (--timeout, 30 s); the reads wait out a coordinator that is
restarting until then, a drain does not (see AdminClient).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO

import grpc

from .channel import connection_options, open_channel
from .client import DEFAULT_RETRY, DEFAULT_TIMEOUT_S, RetryingCalls, RetryPolicy, error_details
from .coordinator.v1 import admin_service_pb2 as pb
from .coordinator.v1 import admin_service_pb2_grpc, job_pb2, job_service_pb2
from .signing import SigningChannel

STATES = {
    job_pb2.JOB_STATE_QUEUED: "queued",
    job_pb2.JOB_STATE_ASSIGNED: "assigned",
    job_pb2.JOB_STATE_RUNNING: "running",
    job_pb2.JOB_STATE_COMPLETED: "completed",
    job_pb2.JOB_STATE_FAILED: "failed",
    job_pb2.JOB_STATE_CANCELED: "canceled",
    job_pb2.JOB_STATE_EXPIRED: "expired",
}
MINER_STATUS = {
    pb.MINER_STATUS_ONLINE: "online",
    pb.MINER_STATUS_DRAINING: "draining",
    pb.MINER_STATUS_DISCONNECTED: "disconnected",
}
MAX_PAGE = 1000
KEY_ROLES = ("client", "miner", "admin")  # a key is named by its role and identity name
CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear screen


class AdminUsageError(Exception):
    """Bad input on the command line: one line on stderr, exit 2 (as `aitbc`'s; 1 is a refused call)."""


def _nothing_was_done(exc: grpc.aio.AioRpcError) -> bool:
    """A drain's failure after which it is safe to make it again: the coordinator could not reach its store
    and says nothing was changed (the drain is stored before it takes effect: a failed write drains nothing)."""
    return error_details(exc).reason == "STORE_UNAVAILABLE"


class AdminClient(RetryingCalls):
    """AdminService over one channel. Use as `async with AdminClient(address, key) as admin:`.

    Each call has a deadline (timeout_s, all its tries included). The reads (stats, jobs, miners) are made
    again after UNAVAILABLE (the coordinator restarting, its store briefly out) or a CANCELLED of a stopping
    coordinator, as the client's calls are (see RetryPolicy). A drain is made again only after
    STORE_UNAVAILABLE (nothing was stored): after a cut connection it may have landed, and once its miner has
    drained to its end and left, a repeat drains the session it comes back with (or answers MINER_NOT_FOUND)."""

    def __init__(self, address: str, api_key: str, *, channel: grpc.aio.Channel | None = None,
                 hmac_secret: str | bytes | None = None, tls_ca: bytes | str | None = None,
                 tls_cert: bytes | str | None = None, tls_key: bytes | str | None = None,
                 channel_options: dict[str, Any] | None = None,
                 timeout_s: float | None = DEFAULT_TIMEOUT_S, retry: RetryPolicy = DEFAULT_RETRY) -> None:  # fmt: skip
        """As Client's: tls_* and channel_options (open_channel's other settings) unless channel is given."""
        channel = channel or open_channel(address, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key,
                                          **(channel_options or {}))  # fmt: skip
        super().__init__(channel, api_key, timeout_s=timeout_s, retry=retry)
        calls = SigningChannel(self.channel, hmac_secret) if hmac_secret else self.channel
        self.stub = admin_service_pb2_grpc.AdminServiceStub(calls)

    async def __aenter__(self) -> AdminClient:
        return self

    async def stats(self) -> pb.GetStatsResponse:
        return await self._unary(self.stub.GetStats, pb.GetStatsRequest(), repeatable=True)

    async def jobs(self, states: Sequence[int] = (), client_id: str = "", miner_id: str = "",
                   limit: int = 20) -> list[job_pb2.Job]:  # fmt: skip
        """Newest first, up to limit, following pages as needed (each page a call with its own deadline)."""
        jobs: list[job_pb2.Job] = []
        token = ""
        while len(jobs) < limit:
            request = pb.AdminServiceListJobsRequest(states=list(states), client_id=client_id, miner_id=miner_id,
                                                     page_size=min(MAX_PAGE, limit - len(jobs)), page_token=token)  # fmt: skip
            page = await self._unary(self.stub.ListJobs, request, repeatable=True)
            jobs.extend(page.jobs)
            token = page.next_page_token
            if not token:
                break
        return jobs[:limit]

    async def miners(self) -> list[pb.MinerInfo]:
        return list((await self._unary(self.stub.ListMiners, pb.ListMinersRequest(), repeatable=True)).miners)

    async def drain(self, miner_id: str) -> pb.MinerInfo:
        request = pb.DrainMinerRequest(miner_id=miner_id)
        return (await self._unary(self.stub.DrainMiner, request, repeatable=_nothing_was_done)).miner

    async def accounts(self) -> list[job_service_pb2.Account]:
        response = await self._unary(self.stub.ListAccounts, pb.ListAccountsRequest(), repeatable=True)
        return list(response.accounts)

    async def set_key_enabled(self, role: str, name: str, enabled: bool) -> bool:
        """The key's state now. Made again as the reads are: setting a state twice is setting it once."""
        request = pb.SetApiKeyEnabledRequest(name=name, role=role, enabled=enabled)
        return (await self._unary(self.stub.SetApiKeyEnabled, request, repeatable=True)).enabled


# ---------------------------------------------------------------------- plain data for --json
def _time(ts: Any) -> str | None:
    if not ts.seconds and not ts.nanos:
        return None
    moment = datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9, tz=UTC)
    return moment.isoformat(timespec="milliseconds").removesuffix("+00:00") + "Z"


def _seconds(d: Any) -> float:
    return round(d.seconds + d.nanos / 1e9, 6)


def stats_dict(s: pb.GetStatsResponse) -> dict[str, Any]:
    windows = []
    for w in s.windows:
        length = _seconds(w.window)
        windows.append({"window_s": length, "submitted": w.submitted, "completed": w.completed, "failed": w.failed,
                        "canceled": w.canceled, "expired": w.expired,
                        "completed_per_s": round(w.completed / length, 3) if length else 0.0})  # fmt: skip
    return {
        "as_of": _time(s.as_of),
        "jobs_by_state": {STATES.get(c.state, str(c.state)): c.count for c in s.jobs_by_state},
        "queue_depth": s.queue_depth, "miners_online": s.miners_online, "miners_draining": s.miners_draining,
        "slots_free": s.slots_free, "slots_busy": s.slots_busy, "windows": windows,
        "queue_wait": {"p50_s": _seconds(s.queue_wait.p50), "p95_s": _seconds(s.queue_wait.p95),
                       "samples": s.queue_wait.samples},
        "run_time": {"p50_s": _seconds(s.run_time.p50), "p95_s": _seconds(s.run_time.p95),
                     "samples": s.run_time.samples},
    }  # fmt: skip


def job_dict(j: job_pb2.Job) -> dict[str, Any]:
    return {"job_id": j.job_id, "state": STATES.get(j.state, str(j.state)), "client_id": j.client_id,
            "miner_id": j.miner_id or None, "priority": j.priority, "attempt": j.attempt,
            "created_at": _time(j.created_at), "updated_at": _time(j.updated_at),
            "finished_at": _time(j.finished_at), "terminal_reason": j.terminal_reason or None}  # fmt: skip


def miner_dict(m: pb.MinerInfo) -> dict[str, Any]:
    caps = m.capabilities
    # the slots it offers now (a Capacity message may lower them below the hello's); none while disconnected
    offered = None if m.status == pb.MINER_STATUS_DISCONNECTED else m.offered_slots
    return {"miner_id": m.miner_id, "status": MINER_STATUS.get(m.status, "unknown"), "transport": m.transport or None,
            "session_id": m.session_id or None, "running_jobs": m.running_jobs, "slots": caps.slots,
            "offered_slots": offered,
            "completed": m.completed, "failed": m.failed, "region": caps.region or None, "price": caps.price or None,
            "models": list(caps.models), "gpus": [f"{g.model}:{g.memory_gb}" for g in caps.gpus],
            "connected_at": _time(m.connected_at), "last_seen_at": _time(m.last_seen_at)}  # fmt: skip


def account_dict(a: job_service_pb2.Account) -> dict[str, Any]:
    # (balance and units stay decimal strings, as the proto has them: exact amounts, not floats)
    return {"account_id": a.account_id, "kind": a.kind, "balance": a.balance, "receipts": a.receipts,
            "units": a.units, "updated_at": _time(a.updated_at)}  # fmt: skip


# ---------------------------------------------------------------------- tables for people
def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[("-" if v is None or v == "" else str(v)) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(widths[i]) for i, h in enumerate(headers)).rstrip()]
    lines += ["  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in cells]
    return "\n".join(lines)


def _age(iso: str | None, now: float) -> str:
    if iso is None:
        return "-"
    seconds = max(0.0, now - datetime.fromisoformat(iso).timestamp())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _ms(seconds: float) -> str:
    if seconds < 0.01:
        return f"{seconds * 1000:.2g}ms"
    return f"{seconds * 1000:.0f}ms" if seconds < 10 else f"{seconds:.1f}s"


def stats_text(d: dict[str, Any]) -> str:
    by_state = "  ".join(f"{k} {v}" for k, v in d["jobs_by_state"].items())
    lines = [
        f"jobs         {by_state}",
        f"queue depth  {d['queue_depth']}",
        f"miners       {d['miners_online']} online ({d['miners_draining']} draining)   "
        f"slots {d['slots_busy']} busy / {d['slots_free']} free",
        f"queue wait   p50 {_ms(d['queue_wait']['p50_s'])}  p95 {_ms(d['queue_wait']['p95_s'])}  "
        f"({d['queue_wait']['samples']} in the last hour)",
        f"run time     p50 {_ms(d['run_time']['p50_s'])}  p95 {_ms(d['run_time']['p95_s'])}  "
        f"({d['run_time']['samples']} in the last hour)",
        "",
        table(["WINDOW", "SUBMITTED", "COMPLETED", "FAILED", "CANCELED", "EXPIRED", "COMPLETED/S"],
              [[f"{w['window_s']:g}s", w["submitted"], w["completed"], w["failed"], w["canceled"], w["expired"],
                f"{w['completed_per_s']:.2f}"] for w in d["windows"]]),
    ]  # fmt: skip
    return "\n".join(lines)


def jobs_text(jobs: list[dict[str, Any]], now: float) -> str:
    return table(["JOB", "STATE", "CLIENT", "MINER", "PRI", "ATTEMPT", "AGE", "UPDATED", "REASON"],
                 [[j["job_id"], j["state"], j["client_id"], j["miner_id"], j["priority"], j["attempt"],
                   _age(j["created_at"], now), _age(j["updated_at"], now), j["terminal_reason"]] for j in jobs])  # fmt: skip


def _slots(m: dict[str, Any]) -> str:
    """The hello's slots, and the fewer it offers now when it offers fewer ("1 of 4": a Capacity message)."""
    offered = m.get("offered_slots")
    if offered is None or offered == m["slots"]:
        return str(m["slots"])
    return f"{offered} of {m['slots']}"


def miners_text(miners: list[dict[str, Any]], now: float) -> str:
    return table(["MINER", "STATUS", "TRANSPORT", "RUNNING", "SLOTS", "DONE", "FAILED", "REGION", "PRICE", "SEEN"],
                 [[m["miner_id"], m["status"], m["transport"], m["running_jobs"], _slots(m), m["completed"],
                   m["failed"], m["region"], m["price"], _age(m["last_seen_at"], now)] for m in miners])  # fmt: skip


def accounts_text(accounts: list[dict[str, Any]], now: float) -> str:
    return table(["ACCOUNT", "KIND", "BALANCE", "RECEIPTS", "UNITS", "UPDATED"],
                 [[a["account_id"], a["kind"], a["balance"], a["receipts"], a["units"], _age(a["updated_at"], now)]
                  for a in accounts])  # fmt: skip


def top_frame(stats: dict[str, Any], miners: list[dict[str, Any]], address: str, rate: float | None,
              now: float, rows: int = 20) -> str:  # fmt: skip
    """One screen of `aitbc admin top`."""
    minute = next((w for w in stats["windows"] if w["window_s"] == 60), None)
    per_minute = minute["completed_per_s"] if minute else 0.0
    submitted = minute["submitted"] / 60 if minute else 0.0
    live = f"{rate:.2f}" if rate is not None else "-"
    states = stats["jobs_by_state"]
    clock = datetime.fromtimestamp(now, tz=UTC).strftime("%H:%M:%S")
    lines = [
        f"aitbc admin top  {address}  {clock} UTC",
        f"jobs/s       {live} finished (since the last refresh)   "
        f"{per_minute:.2f} completed, {submitted:.2f} submitted (1m average)",
        f"queue depth  {stats['queue_depth']}   queued {states.get('queued', 0)}  assigned "
        f"{states.get('assigned', 0)}  running {states.get('running', 0)}",
        f"miners       {stats['miners_online']} online  {stats['miners_draining']} draining   "
        f"slots {stats['slots_busy']} busy / {stats['slots_free']} free",
        f"queue wait   p50 {_ms(stats['queue_wait']['p50_s'])}  p95 {_ms(stats['queue_wait']['p95_s'])}   "
        f"run time p50 {_ms(stats['run_time']['p50_s'])}  p95 {_ms(stats['run_time']['p95_s'])}",
        "",
    ]
    busiest = sorted(miners, key=lambda m: (-m["running_jobs"], m["miner_id"]))
    lines.append(miners_text(busiest[:rows], now))
    if len(busiest) > rows:
        lines.append(f"... and {len(busiest) - rows} more miners")
    return "\n".join(lines)


async def _both(first: Awaitable[Any], second: Awaitable[Any]) -> tuple[Any, Any]:
    """Both answers; when one call fails (or this is cancelled), the other is ended and awaited before the error
    is raised (with a bare gather it ran on, and asyncio.run's shutdown printed its failure as a traceback)."""
    tasks = [asyncio.ensure_future(first), asyncio.ensure_future(second)]
    try:
        a, b = await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return a, b


async def top(admin: AdminClient, address: str, interval: float, iterations: int, as_json: bool,
              out: TextIO, clock: Callable[[], float] = time.time) -> None:  # fmt: skip
    """Redraw every interval seconds; iterations 0 means until interrupted."""
    previous: tuple[float, int] | None = None
    frame = 0
    tty = out.isatty()
    while True:
        stats_msg, miners_msg = await _both(admin.stats(), admin.miners())
        now = clock()
        stats = stats_dict(stats_msg)
        miners = [miner_dict(m) for m in miners_msg]
        done = stats["jobs_by_state"].get("completed", 0) + stats["jobs_by_state"].get("failed", 0)
        rate = None
        if previous is not None and now > previous[0]:
            rate = max(0, done - previous[1]) / (now - previous[0])
        previous = (now, done)
        if as_json:
            out.write(
                json.dumps({"time": now, "finished_per_s": rate, "stats": stats, "miners": miners}) + "\n"
            )
        else:
            rows = max(5, shutil.get_terminal_size((100, 40)).lines - 10)
            text = top_frame(stats, miners, address, rate, now, rows)
            out.write((CLEAR if tty else ("\n" if frame else "")) + text + "\n")
        out.flush()
        frame += 1
        if iterations and frame >= iterations:
            return
        await asyncio.sleep(interval)


# ---------------------------------------------------------------------- the command
def add_parser(commands: Any, common: Callable[[argparse.ArgumentParser], None]) -> argparse.ArgumentParser:
    """Register `admin` on the CLI's subparsers; common adds --address/--api-key to each command."""
    admin = commands.add_parser(
        "admin", help="operators: stats, jobs, miners, drain, top, accounts, keys (admin API key)"
    )
    sub = admin.add_subparsers(dest="admin_command", required=True)
    stats = sub.add_parser("stats", help="counts, queue depth, miners, recent rates and latencies")
    jobs = sub.add_parser("jobs", help="jobs across all clients, newest first")
    jobs.add_argument("--state", action="append", default=[],
                      help="queued, assigned, running, completed, failed, canceled, expired; repeatable")  # fmt: skip
    jobs.add_argument("--client", default="", help="only this client's jobs")
    jobs.add_argument("--miner", default="", help="only jobs held (or last held) by this miner")
    jobs.add_argument("--limit", type=int, default=20, help="most jobs to show (default 20)")
    miners = sub.add_parser("miners", help="connected, draining and recently disconnected miners")
    drain = sub.add_parser(
        "drain", help="drain a miner: no new jobs; its running jobs finish; then it leaves"
    )
    drain.add_argument("miner_id", metavar="MINER")
    live = sub.add_parser("top", help="a live view (jobs/s, queue depth, miners), redrawn until Ctrl-C")
    live.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes (default 2)")
    live.add_argument("--iterations", type=int, default=0, help="stop after N refreshes (default: never)")
    accounts = sub.add_parser(
        "accounts", help="usage accounts of every client and miner: balance, receipts, units"
    )
    keys = sub.add_parser("keys", help="enable or disable an API key at once, without a restart")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    switches = []
    for verb, text in (
        ("disable", "refuse the key's calls; its open streams end"),
        ("enable", "accept it again"),
    ):
        switch = key_commands.add_parser(verb, help=text)
        switch.add_argument("name", metavar="NAME", help="the key's identity name (as in *_API_KEYS)")
        switch.add_argument("--role", required=True, choices=KEY_ROLES, help="the key's role")
        switches.append(switch)
    for p in (stats, jobs, miners, drain, live, accounts, *switches):
        common(p)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument("--timeout", type=_positive_seconds, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                       help="deadline of each call, its tries included: a read waits out a coordinator that is "
                            f"restarting until then (default {DEFAULT_TIMEOUT_S:g})")  # fmt: skip
    admin.set_defaults(func=main)
    return admin


# (gRPC takes a deadline much further off than this as already past: DEADLINE_EXCEEDED at once)
MAX_TIMEOUT_S = 1e9


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number of seconds is needed, not {text!r}") from None
    if not 0 < value <= MAX_TIMEOUT_S:  # (inf waited forever; nan is no number of seconds)
        raise argparse.ArgumentTypeError(
            f"must be more than 0 seconds, at most {MAX_TIMEOUT_S:g}, not {text}"
        )
    return value


def parse_state(name: str) -> int:
    key = name.strip().upper()
    key = key if key.startswith("JOB_STATE_") else f"JOB_STATE_{key}"
    try:
        return job_pb2.JobState.Value(key)
    except ValueError:
        raise AdminUsageError(f"unknown state {name!r} (one of {', '.join(STATES.values())})") from None


async def run(args: argparse.Namespace, out: TextIO) -> int:
    now = time.time()
    options = connection_options(args)
    async with AdminClient(args.address, args.api_key, timeout_s=args.timeout, **options) as admin:
        command = args.admin_command
        if command == "stats":
            d = stats_dict(await admin.stats())
            out.write((json.dumps(d, indent=1) if args.json else stats_text(d)) + "\n")
        elif command == "jobs":
            if args.limit < 1:
                raise AdminUsageError("--limit must be at least 1")
            states = [parse_state(s) for s in args.state]
            jobs = [job_dict(j) for j in await admin.jobs(states, args.client, args.miner, args.limit)]
            out.write((json.dumps(jobs, indent=1) if args.json else jobs_text(jobs, now)) + "\n")
        elif command == "miners":
            miners = [miner_dict(m) for m in await admin.miners()]
            out.write((json.dumps(miners, indent=1) if args.json else miners_text(miners, now)) + "\n")
        elif command == "drain":
            m = miner_dict(await admin.drain(args.miner_id))
            if args.json:
                out.write(json.dumps(m, indent=1) + "\n")
            else:
                out.write(f"draining {m['miner_id']}: {m['running_jobs']} running jobs will finish, "
                          "then its session closes\n")  # fmt: skip
        elif command == "top":
            if not 0 < args.interval < math.inf:  # (nan: no pause between refreshes, until rate limited)
                raise AdminUsageError("--interval must be positive (and finite)")
            if args.iterations < 0:  # (-1 stopped after one refresh)
                raise AdminUsageError("--iterations must be 0 (until Ctrl-C) or more")
            await top(admin, args.address, args.interval, args.iterations, args.json, out)
        elif command == "accounts":
            accounts = [account_dict(a) for a in await admin.accounts()]
            out.write((json.dumps(accounts, indent=1) if args.json else accounts_text(accounts, now)) + "\n")
        elif command == "keys":
            enabled = await admin.set_key_enabled(args.role, args.name, args.keys_command == "enable")
            if args.json:
                out.write(
                    json.dumps({"role": args.role, "name": args.name, "enabled": enabled}, indent=1) + "\n"
                )
            else:
                out.write(f"{args.role} key {args.name}: {'enabled' if enabled else 'disabled'}\n")
    return 0


def main(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(run(args, sys.stdout))
    except grpc.aio.AioRpcError as exc:  # one line, with the ErrorInfo reason, as `aitbc` prints it
        print(f"aitbc admin: {error_details(exc)}", file=sys.stderr)
        return 1
    except AdminUsageError as exc:
        print(f"aitbc admin: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
