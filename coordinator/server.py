"""Assembles and runs the coordinator: store, keys, scheduler, servicers, health and reflection."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
from dataclasses import dataclass

import grpc
from aitbc.coordinator.v1 import (
    admin_service_pb2,
    admin_service_pb2_grpc,
    job_service_pb2,
    job_service_pb2_grpc,
    miner_service_pb2,
    miner_service_pb2_grpc,
    receipt_service_pb2,
    receipt_service_pb2_grpc,
)
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .config import Settings, SettingsError, host_port, load_settings, parse_rate_limits
from .domain.validation import Limits
from .logs import redact_url
from .observability import Observability, RequestContextInterceptor
from .observability import setup as setup_observability
from .receipts.issuer import ReceiptIssuer
from .receipts.keyring import load_keys
from .scheduler.engine import Scheduler, SchedulerSettings
from .security.interceptor import AuthInterceptor, Policy
from .security.keys import KeyRing
from .security.tls import server_credentials
from .services.admin import AdminServicer
from .services.jobs import JobServicer
from .services.miners import MinerServicer
from .services.receipts import ReceiptServicer
from .services.registration import generic_only
from .store import Store, open_store
from .store.base import StoreFenced, StoreUnusable

log = logging.getLogger("coordinator")

SERVICE_NAMES = (
    job_service_pb2.DESCRIPTOR.services_by_name["JobService"].full_name,
    miner_service_pb2.DESCRIPTOR.services_by_name["MinerService"].full_name,
    receipt_service_pb2.DESCRIPTOR.services_by_name["ReceiptService"].full_name,
    admin_service_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
)

MAX_MESSAGE_BYTES = 8 << 20
# On shutdown, added to the grace of calls in flight: time for the go-away messages to reach the miners.
GO_AWAY_SEND_S = 0.05

# Keepalive: the server pings idle connections to find half-open ones, and accepts client pings every 5 s
# or more (the miner runtime pings every 20 s), strictly below the clients' interval: no too_many_pings.
SERVER_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    # what closes a connection whose ping goes unanswered (a half-open one): with grpcio 1.85,
    # keepalive_timeout_ms alone leaves it open indefinitely (tests/integration/test_half_open.py)
    ("grpc.http2.ping_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_concurrent_streams", 10_000),
    ("grpc.so_reuseport", 0),
    # A restart brings every miner back at once: with the default (1000 calls waiting for the server to
    # take them) a reconnect storm of thousands of streams is answered CANCELLED. Let them queue instead.
    ("grpc.server.max_pending_requests", 50_000),
    ("grpc.server.max_pending_requests_hard_limit", 100_000),
]


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """SERVER_OPTIONS with the message size bounds and the keepalive of settings.

    gRPC itself refuses messages over twice MAX_MESSAGE_BYTES; between the two, the interceptor answers
    RESOURCE_EXHAUSTED with details (reason MESSAGE_TOO_LARGE), having read the size of the bytes.
    """
    hard = min(2 * settings.max_message_bytes, (1 << 31) - 1)
    chosen = {
        "grpc.max_receive_message_length": hard, "grpc.max_send_message_length": hard,
        "grpc.keepalive_time_ms": round(settings.keepalive_time_seconds * 1000),
        "grpc.keepalive_timeout_ms": round(settings.keepalive_timeout_seconds * 1000),
        "grpc.http2.ping_timeout_ms": round(settings.keepalive_timeout_seconds * 1000),
    }  # fmt: skip
    return [(k, chosen.get(k, v)) for k, v in SERVER_OPTIONS]


@dataclass
class Coordinator:
    settings: Settings
    server: grpc.aio.Server
    scheduler: Scheduler
    issuer: ReceiptIssuer
    health: health.aio.HealthServicer
    port: int
    keyring: KeyRing | None = None
    miner_port: int = 0  # the mutual-TLS miner listener (TLS_MINER_ADDRESS), 0 when there is none

    def reload_keys(self, settings: Settings) -> int:
        """Replace the API keys (and HMAC_SECRET) with those of settings; returns how many keys there are.

        Keys disabled by AdminService.SetApiKeyEnabled stay disabled; removed keys stop working at once.
        """
        assert self.keyring is not None
        self.keyring.load(settings.api_keys, settings.hmac_secret)
        log.info("API keys reloaded: %d keys", len(self.keyring))
        return len(self.keyring)

    observability: Observability | None = None  # metrics, tracing, job log lines
    # set when the store refuses every write for good (another process held it while this one's connection to
    # it was lost): health is NOT_SERVING from then on, and serve() stops and raises it (exit 3)
    store_lost: asyncio.Future[StoreFenced] | None = None

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING, no new calls taken, go-away to every miner, then stop; jobs stay safe in the
        store."""
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        try:
            await self.health.enter_graceful_shutdown()
            # gRPC stops taking calls (an HTTP/2 GOAWAY on every connection, the listeners closed) before any
            # miner is told to go away: a miner reconnects 1 s after its go-away, over the connection it has,
            # and with thousands of streams the go-aways took longer than that to send, so Connects reached
            # this stopping process and were cut off as it stopped (bench scenario 5: hundreds to thousands per
            # restart, ending INTERNAL "Failed execute_batch", CANCELLED, UNAVAILABLE). Calls in flight, the
            # miners' streams among them, run on for the grace; GO_AWAY_SEND_S more for the go-aways.
            stopping = asyncio.ensure_future(self.server.stop(grace + GO_AWAY_SEND_S))
            try:
                await asyncio.sleep(0)  # the stop's first step: gRPC's shutdown begins
                await self.scheduler.stop()
            finally:
                await stopping
            await self.issuer.stop()
        finally:  # whatever failed above, the store is closed (and its lock freed for the next coordinator)
            await self.scheduler.store.close()
        if self.observability is not None:
            await self.observability.stop()


async def start(settings: Settings) -> Coordinator:
    """Open the store, rebuild the queues, and serve; health turns SERVING only when all of it is ready."""
    store = open_store(settings.database_url, settings.sqlite_synchronous, pool_size=settings.database_pool_size,
                       read_timeout_s=settings.database_read_timeout_seconds)  # fmt: skip
    try:
        await store.open()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, StoreUnusable) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise SettingsError(f"DATABASE_URL: cannot open {redact_url(settings.database_url)}: {why}") from None
    try:
        return await _start_on(settings, store)
    except BaseException:
        # a failed start must not leave the store's threads holding the process open, nor a new empty store
        await store.close_unused()
        raise


async def _start_on(settings: Settings, store: Store) -> Coordinator:
    keys = await load_keys(store, settings.receipt_signing_key_hex, settings.receipt_attestation_key_hex,
                           f"aitbc.coordinator/{settings.coordinator_id}")  # fmt: skip
    issuer = ReceiptIssuer(store, keys, settings.coordinator_id, settings.chain_id)
    await issuer.load()
    scheduler = Scheduler(
        store,
        SchedulerSettings(
            heartbeat_interval_s=settings.heartbeat_interval_seconds,
            heartbeat_timeout_s=settings.heartbeat_timeout_seconds,
            lease_s=settings.lease_seconds, grace_s=settings.reconnect_grace_seconds,
            max_reassignments=settings.max_reassignments,
            retry_backoff_base_s=settings.retry_backoff_base_seconds,
            retry_backoff_max_s=settings.retry_backoff_max_seconds,
        ),
        receipts=issuer,
    )  # fmt: skip
    limits = Limits(max_payload_bytes=settings.max_payload_bytes, max_result_bytes=settings.max_payload_bytes,
                    max_message_bytes=settings.max_message_bytes,
                    default_ttl_s=int(settings.job_ttl_seconds), default_max_attempts=settings.job_max_attempts,
                    default_execution_timeout_s=int(settings.job_execution_timeout_seconds))  # fmt: skip
    keyring = KeyRing(settings.api_keys, settings.hmac_secret, parse_rate_limits(settings.rate_limits))
    if not settings.api_keys:
        log.warning("no API keys configured: every authenticated call will be refused")
    server = grpc.aio.server(interceptors=[RequestContextInterceptor(), AuthInterceptor(keyring, Policy.from_settings(settings))],
                             options=server_options(settings), maximum_concurrent_rpcs=None)  # fmt: skip
    observability = setup_observability(settings, scheduler, issuer)  # observers: before any transition
    health_servicer = health.aio.HealthServicer()
    registry = generic_only(server)  # no registered method handlers: see services/registration.py
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, registry)
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    store_lost = _watch_store(store, health_servicer)
    job_service_pb2_grpc.add_JobServiceServicer_to_server(
        JobServicer(scheduler, limits, issuer.accounts), registry
    )
    miner_service_pb2_grpc.add_MinerServiceServicer_to_server(
        MinerServicer(scheduler, limits, issuer), registry
    )
    receipt_service_pb2_grpc.add_ReceiptServiceServicer_to_server(
        ReceiptServicer(scheduler, issuer), registry
    )
    admin_service_pb2_grpc.add_AdminServiceServicer_to_server(
        AdminServicer(scheduler, issuer, keyring), registry
    )
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    try:  # (before the gRPC ports: a listener bound by a server never started stays bound until the process ends)
        await observability.start()  # /metrics (METRICS_PORT) answers from here on
    except BaseException as exc:  # (a port in use, or a stop signal during start-up: nothing left listening)
        await observability.stop()
        if not isinstance(exc, OSError):
            raise
        raise SettingsError(f"METRICS_HOST, METRICS_PORT: cannot listen on {settings.metrics_host}:"
                            f"{settings.metrics_port}: {exc.strerror or exc}") from None  # fmt: skip
    try:
        port, miner_port = _listen(settings, server)
        await scheduler.start()
        await server.start()
    except BaseException:
        await _release_listeners(server)
        await scheduler.stop()
        await observability.stop()
        raise
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("coordinator %s serving on %s (store %s)", settings.coordinator_id,
             listeners(settings, port, miner_port, observability.metrics_port), redact_url(settings.database_url))  # fmt: skip
    return Coordinator(settings, server, scheduler, issuer, health_servicer, port, keyring, miner_port,
                       observability=observability, store_lost=store_lost)  # fmt: skip


def listeners(settings: Settings, port: int, miner_port: int, metrics_port: int) -> str:
    """Every listener the coordinator serves on, as the "serving on" line names them: an operator reads there
    which ports are open, with which security (the TLS miner listener and /metrics are easy to forget)."""
    if not settings.tls_cert_file:
        security = "plaintext"
    else:  # (mutual on the main listener only when miners have no listener of their own: _listen)
        security = "mutual TLS" if settings.tls_client_ca_file and not settings.tls_miner_address else "TLS"
    said = f"{host_port(settings.app_host, port)} ({security})"
    if miner_port:
        host = settings.tls_miner_address.rpartition(":")[0]
        said += f", miners on {host}:{miner_port} (mutual TLS)"
    if metrics_port:
        said += f", metrics on http://{host_port(settings.metrics_host, metrics_port)}/metrics"
    return said


def _listen(settings: Settings, server: grpc.aio.Server) -> tuple[int, int]:
    """Bind the gRPC listeners: the port, and the TLS miner port (0 without one)."""
    address = host_port(settings.app_host, settings.app_port)
    credentials = None
    if settings.tls_cert_file:  # mutual TLS here too unless miners have their own listener
        mutual = bool(settings.tls_client_ca_file) and not settings.tls_miner_address
        credentials = server_credentials(settings, require_client_cert=mutual)
    try:
        if credentials is not None:
            port = server.add_secure_port(address, credentials)
        else:
            port = server.add_insecure_port(address)
    except RuntimeError:  # grpcio raises it for a port it cannot bind (older versions returned 0)
        port = 0
    if port == 0:
        raise SettingsError(f"APP_HOST, APP_PORT: cannot listen on {address} ({_why_not(settings.app_host)})")
    if not settings.tls_cert_file and settings.app_host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening in plaintext on %s: use TLS for anything but loopback", settings.app_host)
    miner_port = 0
    if settings.tls_miner_address:
        creds = server_credentials(settings, require_client_cert=True)
        try:
            miner_port = server.add_secure_port(settings.tls_miner_address, creds)
        except RuntimeError:
            miner_port = 0
        if miner_port == 0:
            host = settings.tls_miner_address.rpartition(":")[0].strip("[]")
            raise SettingsError(
                f"TLS_MINER_ADDRESS: cannot listen on {settings.tls_miner_address} ({_why_not(host)})"
            )
    return port, miner_port


def _why_not(host: str) -> str:
    """Why a listener on host could not bind, as far as can be told: a name that resolves to nothing (an
    unresolvable APP_HOST was reported as a port in use), else most likely the port."""
    try:
        socket.getaddrinfo(host or None, 0, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return f"{host!r} is no address of this host that resolves"
    return "in use by another process, or not an address of this host?"


async def _release_listeners(server: grpc.aio.Server) -> None:
    """Free the ports a server not serving yet has bound: grpcio frees them only on a stop after a start
    (a retry in the same process was refused its own leftover port). Nothing is answered meanwhile: health
    is NOT_SERVING, and stop(None) cancels whatever came in."""
    with contextlib.suppress(Exception):  # (already started: the stop alone does)
        await server.start()
    await server.stop(None)


def _watch_store(store: Store, health_servicer: health.aio.HealthServicer) -> asyncio.Future[StoreFenced]:
    """The store refusing every write for good (StoreFenced): what this coordinator holds in memory may no
    longer match the store, so it must not serve on. Health turns NOT_SERVING at once (for good: a later
    set(SERVING) is ignored); the returned future, set, makes serve() stop and exit 3, so that a supervisor
    starts it again and it reloads its state from the store."""
    lost: asyncio.Future[StoreFenced] = asyncio.get_running_loop().create_future()

    def on_lost(exc: StoreFenced) -> None:
        if lost.done():
            return
        log.error("store lost: health NOT_SERVING; this coordinator must be restarted: %s", exc)
        lost.set_result(exc)
        not_serving = asyncio.ensure_future(health_servicer.enter_graceful_shutdown())
        _background.add(not_serving)
        not_serving.add_done_callback(_background.discard)

    store.on_lost = on_lost
    return lost


_background: set[asyncio.Future] = set()  # tasks nobody awaits, kept from the garbage collector until done


# The cyclic garbage collector's default thresholds (700, 10, 10) scan the young objects every 700
# allocations and everything every 70,000. With 10,000 miner streams (millions of live objects) that cost
# a third of the time to connect them and to shut down (bench scenario 5, same minutes: 8.4-10.7 s against
# 13.6-15.7 s to connect 10,000; 4.2-5.5 s against 6.4-6.8 s to shut down). Garbage is freed by reference
# counting as before; only cycles wait longer.
GC_THRESHOLDS = (50_000, 20, 10)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def serve(settings: Settings, env_file: str | None = ".env") -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully. SIGHUP reloads the API keys.

    The signals are taken from the start on, rather than killing the process mid-way (their default action):
    a stop signal during start-up (a PostgreSQL store's wait for its holder, a migration) ends it cleanly,
    before serving; a SIGHUP then reloads the keys once the coordinator serves."""
    gc.set_threshold(*GC_THRESHOLDS)
    loop = asyncio.get_running_loop()
    signals: asyncio.Queue[signal.Signals] = asyncio.Queue()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, signals.put_nowait, sig)
    reload_asked = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, reload_asked.set)
    try:
        coordinator = await _start_unless_stopped(settings, signals)
        if coordinator is None:
            return
        gc.freeze()  # what start loaded (the store's live jobs, the keys) lives on: full collections skip it
        loop.add_signal_handler(signal.SIGHUP, reload_keys, coordinator, env_file)
        if reload_asked.is_set():  # (a SIGHUP during start-up: the key files may have changed since read)
            reload_keys(coordinator, env_file)
        await _serve_until_stopped(coordinator, signals)
    finally:
        for sig in (*STOP_SIGNALS, signal.SIGHUP):
            loop.remove_signal_handler(sig)


async def _start_unless_stopped(
    settings: Settings, signals: asyncio.Queue[signal.Signals]
) -> Coordinator | None:
    """start(settings), or None when a stop signal came first (the start undone: nothing left bound or open)."""
    starting = asyncio.ensure_future(start(settings))
    signalled = asyncio.ensure_future(signals.get())
    await asyncio.wait({starting, signalled}, return_when=asyncio.FIRST_COMPLETED)
    if not signalled.done():
        signalled.cancel()
        return starting.result()
    log.warning("%s during start-up: stopping before serving", signalled.result().name)
    starting.cancel()
    await asyncio.wait({starting})
    if not starting.cancelled():  # done starting as the signal came (or failed: its error is raised)
        await starting.result().stop()
    log.info("coordinator stopped")
    return None


async def _serve_until_stopped(coordinator: Coordinator, signals: asyncio.Queue[signal.Signals]) -> None:
    signalled = asyncio.ensure_future(signals.get())
    lost = coordinator.store_lost
    assert lost is not None
    await asyncio.wait({signalled, lost}, return_when=asyncio.FIRST_COMPLETED)
    if lost.done():
        signalled.cancel()
        log.error("shutting down: the store was lost (see above); go-away to miners; exiting to be restarted")
    else:
        log.info("%s: shutting down: health NOT_SERVING, go-away to miners, in-flight calls get %g s",
                 signalled.result().name, coordinator.settings.shutdown_grace_seconds)  # fmt: skip
    stopping = asyncio.ensure_future(coordinator.stop())
    while not stopping.done():  # a repeated signal changes nothing: said, so that nobody takes it for a hang
        again = asyncio.ensure_future(signals.get())
        await asyncio.wait({stopping, again}, return_when=asyncio.FIRST_COMPLETED)
        if again.done():
            log.warning("%s again: already shutting down", again.result().name)
        else:
            again.cancel()
    stopping.result()
    if lost.done():
        raise lost.result()
    log.info("coordinator stopped")


def reload_keys(coordinator: Coordinator, env_file: str | None) -> None:
    """SIGHUP: re-read the key settings (the .env file, *_API_KEYS_FILE files, HMAC_SECRET).

    A bad setting is logged and the keys in force stay as they were.
    """
    try:
        coordinator.reload_keys(load_settings(env_file=env_file))
    except (SettingsError, OSError) as exc:
        log.error("key reload refused, the keys in force are unchanged: %s", exc)
