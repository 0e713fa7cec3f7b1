"""Bench worker processes: `python -m bench.worker ROLE JSON_ARGS`.

Every load generator runs in a process of its own, so the coordinator under test shares the machine with
its clients and miners exactly as in production on one host. A worker prints JSON lines on stdout (events
and replies) and takes JSON commands on stdin, one per line; EOF on stdin ends it.

Roles:
  bare-server   bare grpcio: a unary echo and a server stream of N messages (the baseline's server)
  bare-unary    calls the echo with C calls in flight for D seconds: calls/s
  bare-stream   reads N streamed messages: messages/s
  bare-pipeline-server   a job's messages with no work (Submit, then down and up a worker's stream)
  bare-pipeline-workers  streams taking those jobs and returning results, counting acks
  bare-pipeline-submit   Submit calls, one job each or batched, C in flight
  miners        SDK miners (aitbc.miner.Miner): streaming, echo runner, counting accepted results
  submit        an SDK client (aitbc.client.Client): unary, batched or paced submissions
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

Handler = Callable[[dict[str, Any]], Awaitable[None]]

BARE_SERVICE = "bench.Bare"
BARE_PAYLOAD = b"x" * 96  # about a small SubmitJob request


def emit(event: str, **data: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **data}, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def commands() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def serve_commands(handlers: dict[str, Handler]) -> None:
    """Run commands until {"cmd": "exit"} or EOF; each handler emits its own reply."""
    reader = await commands()
    while True:
        line = await reader.readline()
        if not line:
            return
        cmd = json.loads(line)
        name = cmd.pop("cmd")
        if name == "exit":
            return
        await handlers[name](cmd)


# ---------------------------------------------------------------------------------------------- bare grpcio
async def bare_server(args: dict[str, Any]) -> None:
    async def echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    async def flood(request: bytes, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
        spec = json.loads(request)
        payload = b"y" * spec["size"]
        for _ in range(spec["count"]):
            yield payload

    await serve_bare(BARE_SERVICE, {"Echo": grpc.unary_unary_rpc_method_handler(echo),
                                    "Flood": grpc.unary_stream_rpc_method_handler(flood)})  # fmt: skip


async def serve_bare(service: str, methods: dict[str, grpc.RpcMethodHandler]) -> None:
    """Serve methods on a free loopback port (printed as ready) until the commands end."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, methods),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    emit("ready", port=port, pid=os.getpid())
    await serve_commands({})
    await server.stop(0)


async def bare_unary(args: dict[str, Any]) -> None:
    async with grpc.aio.insecure_channel(args["address"]) as channel:
        echo = channel.unary_unary(f"/{BARE_SERVICE}/Echo")
        await echo(BARE_PAYLOAD)
        emit("ready")

        async def run(cmd: dict[str, Any]) -> None:
            stop_at = time.monotonic() + cmd["warmup_s"] + cmd["duration_s"]
            measure_from = time.monotonic() + cmd["warmup_s"]
            counted = 0

            async def loop() -> None:
                nonlocal counted
                while True:
                    await echo(BARE_PAYLOAD)
                    now = time.monotonic()
                    if now >= stop_at:
                        return
                    if now >= measure_from:
                        counted += 1

            await asyncio.gather(*(loop() for _ in range(cmd["concurrency"])))
            emit("run", calls=counted, seconds=cmd["duration_s"], rate=counted / cmd["duration_s"])

        await serve_commands({"run": run})


async def bare_stream(args: dict[str, Any]) -> None:
    async with grpc.aio.insecure_channel(args["address"]) as channel:
        flood = channel.unary_stream(f"/{BARE_SERVICE}/Flood")
        async for _ in flood(json.dumps({"count": 10, "size": 96}).encode()):
            pass
        emit("ready")

        async def run(cmd: dict[str, Any]) -> None:
            count, warmup = cmd["count"], cmd["warmup"]
            seen = 0
            started = 0.0
            async for _ in flood(json.dumps({"count": count + warmup, "size": 96}).encode()):
                seen += 1
                if seen == warmup:
                    started = time.monotonic()
            elapsed = time.monotonic() - started
            emit("run", messages=count, seconds=elapsed, rate=count / elapsed)

        await serve_commands({"run": run})


# ------------------------------------------------------------------------------------ bare job pipeline
# A job's transport with no work: a unary Submit (one job, or a batch) queues it; one message down a worker's
# stream carries it, with whatever else is ready for that worker; one message up carries its result, with the
# others that finished together; one message down acks them. The coordinator's protocol, without protobuf,
# authentication, scheduling rules, a store or receipts: what the end-to-end scenarios are bounded by.
PIPE_SERVICE = "bench.BarePipe"
JOB_ID_SIZE = 16
RESULT_SIZE = JOB_ID_SIZE + 32  # an id and a digest


async def bare_pipeline_server(args: dict[str, Any]) -> None:
    from collections import deque

    ready: deque[bytes] = deque()  # job ids (the payload is carried along as the coordinator would)
    workers: list[_PipeWorker] = []
    seq = 0
    turn = 0

    def dispatch() -> None:
        nonlocal turn
        n = len(workers)
        for i in range(n):
            if not ready:
                break
            w = workers[(turn + i) % n]
            took = False
            while w.free and ready:
                w.outbox.append(ready.popleft())
                w.free -= 1
                took = True
            if took:
                w.wake.set()
        turn += 1

    async def submit(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        nonlocal seq
        ids = []
        for offset in range(0, len(request), len(BARE_PAYLOAD)):
            seq += 1
            job = seq.to_bytes(JOB_ID_SIZE, "big") + request[offset : offset + len(BARE_PAYLOAD)]
            ready.append(job)
            ids.append(job[:JOB_ID_SIZE])
        dispatch()
        return b"".join(ids)

    async def work(request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        hello = await context.read()
        worker = _PipeWorker(int(hello))
        workers.append(worker)

        async def results() -> None:
            try:
                await read_results()
            finally:
                worker.wake.set()  # the writer loop ends with the stream

        async def read_results() -> None:
            while True:
                message = await context.read()
                if message is grpc.aio.EOF:
                    return
                ids = [message[i : i + JOB_ID_SIZE] for i in range(0, len(message), RESULT_SIZE)]
                worker.free += len(ids)
                worker.acks.append(b"A" + b"".join(ids))
                worker.wake.set()
                dispatch()

        reader = asyncio.create_task(results())
        try:
            while not reader.done():
                await worker.wake.wait()
                worker.wake.clear()
                for ack in worker.acks:
                    await context.write(ack)
                worker.acks.clear()
                if worker.outbox:
                    jobs, worker.outbox = worker.outbox, []
                    await context.write(b"J" + b"".join(jobs))
        finally:
            reader.cancel()
            workers.remove(worker)

    await serve_bare(PIPE_SERVICE, {"Submit": grpc.unary_unary_rpc_method_handler(submit),
                                    "Work": grpc.stream_stream_rpc_method_handler(work)})  # fmt: skip


class _PipeWorker:
    def __init__(self, slots: int) -> None:
        self.free = slots
        self.outbox: list[bytes] = []
        self.acks: list[bytes] = []
        self.wake = asyncio.Event()


async def bare_pipeline_workers(args: dict[str, Any]) -> None:
    """args: address, streams, slots. Each stream on a connection of its own, like the SDK's miners."""
    import hashlib

    acked = 0
    last_ack_at = 0.0

    async def one(index: int) -> None:
        nonlocal acked, last_ack_at
        options = [("grpc.use_local_subchannel_pool", 1), ("bench.stream", index)]
        async with grpc.aio.insecure_channel(args["address"], options=options) as channel:
            call = channel.stream_stream(f"/{PIPE_SERVICE}/Work")()
            await call.write(str(args["slots"]).encode())
            while True:
                message = await call.read()
                if message is grpc.aio.EOF:
                    return
                if message[:1] == b"A":
                    acked += (len(message) - 1) // JOB_ID_SIZE
                    last_ack_at = time.monotonic()
                    continue
                size = JOB_ID_SIZE + len(BARE_PAYLOAD)
                results = [
                    message[i : i + JOB_ID_SIZE]
                    + hashlib.sha256(message[i + JOB_ID_SIZE : i + size]).digest()
                    for i in range(1, len(message), size)
                ]
                await call.write(b"".join(results))

    tasks = [asyncio.create_task(one(i)) for i in range(args["streams"])]
    emit("ready", pid=os.getpid())

    async def stats(cmd: dict[str, Any]) -> None:
        emit("stats", acked=acked, last_ack_at=last_ack_at)

    await serve_commands({"stats": stats})
    for task in tasks:
        task.cancel()


async def bare_pipeline_submit(args: dict[str, Any]) -> None:
    async with grpc.aio.insecure_channel(args["address"]) as channel:
        call = channel.unary_unary(f"/{PIPE_SERVICE}/Submit")
        emit("ready")

        async def run(cmd: dict[str, Any]) -> None:
            left, batch = cmd["n"], cmd["batch"]
            first = time.monotonic()

            async def loop() -> None:
                nonlocal left
                while left > 0:
                    k = min(batch, left)
                    left -= k
                    await call(BARE_PAYLOAD * k)

            await asyncio.gather(*(loop() for _ in range(cmd["concurrency"])))
            emit("run", first=first, last=time.monotonic())

        await serve_commands({"run": run})


# ------------------------------------------------------------------------------------------------ miners
async def miners(args: dict[str, Any]) -> None:
    """SDK miners. args: address, miners [[name, key]...], slots, channels (0: one per miner), pace_per_s."""
    from aitbc.channel import open_channel
    from aitbc.coordinator.v1 import miner_service_pb2
    from aitbc.miner import Miner, Outcome, job_input

    assigned_at: dict[str, float] = {}
    recording = False

    async def runner(job):  # type: ignore[no-untyped-def]
        if recording:
            assigned_at[job.job_id] = time.monotonic()
        return Outcome(job_input(job), units="1", unit_type="jobs")

    session_ends: Counter[str] = (
        Counter()
    )  # why sessions ended (go-away reasons, status codes of failed connects)

    class _CountEnded(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.msg.startswith("miner session ended") and record.args:
                session_ends[str(record.args[0])] += 1

    miner_log = logging.getLogger("aitbc.miner")
    miner_log.addHandler(_CountEnded())
    miner_log.setLevel(logging.INFO)
    miner_log.propagate = False

    ack_times: list[float] = []  # time.monotonic() of every accepted result, in order

    # Connect attempts that ended in an error: (time.monotonic(), status code, channel index), so that the
    # orchestrator can tell those against the stopping coordinator from those against the new one; the first
    # few of each code are logged with gRPC's debug string (what ended them).
    attempt_errors: list[tuple[float, str, int]] = []
    logged: Counter[str] = Counter()

    class TimedMiner(Miner):
        channel_index = -1

        def _acked(self, acks) -> None:  # type: ignore[no-untyped-def]
            super()._acked(acks)
            now = time.monotonic()
            ack_times.extend(now for a in acks if a.accepted)

        async def _session(self, channel: grpc.aio.Channel) -> tuple[str, float]:
            try:
                return await super()._session(channel)
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
                attempt_errors.append((time.monotonic(), code, self.channel_index))
                if logged[code] < 5:
                    logged[code] += 1
                    print(f"miners: connect ended {code} at {time.monotonic():.3f} on channel "
                          f"{self.channel_index} ({channel.get_state().name}): {exc.details()!r} "
                          f"{exc.debug_error_string()}", file=sys.stderr, flush=True)  # fmt: skip
                raise

    address = args["address"]
    n_channels = args.get("channels", 0)
    channels = [open_channel(address, own_connection=True) for _ in range(n_channels)]
    fleet: list[Miner] = []
    for i, (_name, key) in enumerate(args["miners"]):
        caps = miner_service_pb2.MinerCapabilities(slots=args["slots"], cpu_cores=2, memory_gb=4)
        fleet.append(
            TimedMiner(
                address,
                key,
                runner=runner,
                capabilities=caps,
                channel=channels[i % n_channels] if channels else None,
                own_connection=not channels,
            )
        )
        fleet[-1].channel_index = i % n_channels if channels else i  # type: ignore[attr-defined]
    tasks: list[asyncio.Task] = []
    failures: dict[str, str] = {}

    def ended(miner: Miner, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            failures[miner.api_key] = repr(task.exception())[:200]

    pace = args.get("pace_per_s", 0)
    for i, miner in enumerate(fleet):
        task = asyncio.create_task(miner.run())
        task.add_done_callback(lambda t, m=miner: ended(m, t))
        tasks.append(task)
        if pace and i % 100 == 99:
            await asyncio.sleep(100 / pace)
    deadline = time.monotonic() + args.get("connect_timeout_s", 60)
    while sum(1 for m in fleet if m.connects) < len(fleet) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)  # polls counters the miners keep
    marks = [m.connects for m in fleet]
    emit("ready", connected=sum(1 for m in fleet if m.connects), pid=os.getpid(), failed=len(failures),
         ended=dict(session_ends), failures=list(failures.values())[:3])  # fmt: skip

    async def stats(cmd: dict[str, Any]) -> None:
        emit("stats", acked=sum(m.acked for m in fleet), last_ack_at=max(m.last_ack_at for m in fleet),
             completed=sum(m.completed for m in fleet), connected=sum(1 for m in fleet if m.connects),
             back=sum(1 for m, c in zip(fleet, marks, strict=True) if m.connects > c), failed=len(failures),
             failures=list(failures.values())[:3], ended=dict(session_ends),
             attempt_errors=attempt_errors if cmd.get("attempt_errors") else [])  # fmt: skip

    async def mark(cmd: dict[str, Any]) -> None:
        marks[:] = [m.connects for m in fleet]
        emit("mark")

    async def record(cmd: dict[str, Any]) -> None:
        nonlocal recording
        recording = cmd["on"]
        times = dict(assigned_at)
        assigned_at.clear()
        emit("record", assigned_at=times)

    async def acks(cmd: dict[str, Any]) -> None:
        emit("acks", times=ack_times[: cmd.get("first", len(ack_times))])

    await serve_commands({"stats": stats, "mark": mark, "record": record, "acks": acks})
    for miner in fleet:
        miner.stop()
    await asyncio.wait(tasks, timeout=5)
    for channel in channels:
        await channel.close()


# ---------------------------------------------------------------------------------------------- clients
async def submit(args: dict[str, Any]) -> None:
    """An SDK client. Commands: unary (n, concurrency), batched (n, batch, concurrency), paced (rate, seconds)."""
    from aitbc.channel import open_channel
    from aitbc.client import Client

    client = Client(args["address"], args["key"], channel=open_channel(args["address"], own_connection=True))
    await client.submit({"warm": 1})
    emit("ready")
    seq = 0

    def payload() -> dict[str, Any]:
        nonlocal seq
        seq += 1
        return {"n": seq, "task": "echo"}

    async def unary(cmd: dict[str, Any]) -> None:
        left = cmd["n"]
        latencies: list[float] = []
        first = time.monotonic()

        async def loop() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                t = time.monotonic()
                await client.submit(payload())
                latencies.append(time.monotonic() - t)

        await asyncio.gather(*(loop() for _ in range(cmd["concurrency"])))
        last = time.monotonic()
        emit("unary", first=first, last=last, n=cmd["n"], rate=cmd["n"] / (last - first),
             latency_p50_ms=_pct(latencies, 50) * 1e3)  # fmt: skip

    async def batched(cmd: dict[str, Any]) -> None:
        left, size = cmd["n"], cmd["batch"]
        first = time.monotonic()

        async def loop() -> None:
            nonlocal left
            while left > 0:
                k = min(size, left)
                left -= k
                await client.submit_many([payload() for _ in range(k)])

        await asyncio.gather(*(loop() for _ in range(cmd["concurrency"])))
        last = time.monotonic()
        emit("batched", first=first, last=last, n=cmd["n"], rate=cmd["n"] / (last - first))

    async def paced(cmd: dict[str, Any]) -> None:
        """Open loop: one SubmitJob every 1/rate s (whether or not earlier ones returned)."""
        rate, seconds = cmd["rate"], cmd["seconds"]
        n = max(1, int(rate * seconds))
        samples: list[tuple[str, float, float]] = []
        pending: set[asyncio.Task] = set()

        async def one() -> None:
            t = time.monotonic()
            job = await client.submit(payload())
            samples.append((job.job_id, t, time.monotonic()))

        start = time.monotonic()
        for i in range(n):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one())
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.wait(pending)
        emit("paced", samples=samples, seconds=time.monotonic() - start)

    await serve_commands({"unary": unary, "batched": batched, "paced": paced})
    await client.close()


def _pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


ROLES: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] = {
    "bare-server": bare_server,
    "bare-unary": bare_unary,
    "bare-stream": bare_stream,
    "bare-pipeline-server": bare_pipeline_server,
    "bare-pipeline-workers": bare_pipeline_workers,
    "bare-pipeline-submit": bare_pipeline_submit,
    "miners": miners,
    "submit": submit,
}


def main() -> None:
    role, raw = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "{}"
    args = json.loads(raw) if not raw.startswith("@") else json.loads(open(raw[1:]).read())
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format=f"{role} %(levelname)s %(name)s %(message)s")  # fmt: skip
    random.seed(os.getpid())
    asyncio.run(ROLES[role](args))


if __name__ == "__main__":
    main()
