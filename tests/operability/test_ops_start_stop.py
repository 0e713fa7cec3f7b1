"""What an operator meets starting and stopping a coordinator (review round 27): a refused start says why in one
line naming the setting (exit 2) and leaves nothing behind (no new empty store, no port bound in the process);
a stop signal during start-up ends it cleanly; a repeated stop signal is said in the log, and the log says
when the coordinator has stopped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ops_support import free_port, make_settings

from coordinator.config import SettingsError
from coordinator.server import start
from coordinator.store.postgres import PostgresStore
from tests.security.sec_support import Pki
from tests.store.store_support import create_schema, drop_schema, pg_admin, pg_url

ROOT = Path(__file__).resolve().parents[2]


def serve(tmp_path: Path, database_url: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`aitbc-coordinator serve` run to its end (a refused start)."""
    env_file = tmp_path / "settings.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in {"APP_PORT": "0", **env}.items()))
    return subprocess.run(
        [sys.executable, "-m", "coordinator", "serve", "--env-file", str(env_file), "--database", database_url],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip


def refused_in_one_line(done: subprocess.CompletedProcess[str], *words: str) -> str:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    last = lines[-1]
    assert last.startswith("aitbc-coordinator: bad setting: DATABASE_URL: "), lines
    assert all(w in last for w in words), last
    return last


async def a_store_in(directory: Path) -> Path:
    coordinator = await start(make_settings(directory))
    await coordinator.stop(grace=0)
    return directory / "coordinator.db"


def sqlite_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("coordinator.db"))


async def test_a_read_only_sqlite_url_is_refused_in_one_line(tmp_path: Path) -> None:
    """`?mode=ro` (a read-only URI) died with sqlite3's 'attempt to write a readonly database' traceback."""
    db = await a_store_in(tmp_path)
    done = await asyncio.to_thread(serve, tmp_path, f"sqlite:///file:{db}?mode=ro")
    refused_in_one_line(done, "read-only")


async def test_a_directory_as_the_sqlite_store_is_refused_in_one_line(tmp_path: Path) -> None:
    """It died with sqlite3's 'unable to open database file' traceback (and left a DIR.lock beside it)."""
    (tmp_path / "store").mkdir()
    done = await asyncio.to_thread(serve, tmp_path, f"sqlite:///{tmp_path / 'store'}")
    refused_in_one_line(done, "a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["settings.env", "store"]


async def test_a_file_that_is_no_sqlite_database_is_refused_in_one_line_and_left_as_it_was(
    tmp_path: Path,
) -> None:
    """A mistyped DATABASE_URL naming some other file: sqlite3's 'file is not a database' traceback."""
    other = tmp_path / "notes.txt"
    other.write_text("not a database\n")
    done = await asyncio.to_thread(serve, tmp_path, f"sqlite:///{other}")
    refused_in_one_line(done, "not a SQLite database")
    assert other.read_text() == "not a database\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "settings.env"]


async def test_a_store_with_a_schema_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    """A downgrade: the older code served on a schema it does not know (SQLite), silently."""
    db = await a_store_in(tmp_path)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA user_version = 999")
    with pytest.raises(SettingsError, match=r"DATABASE_URL: .*schema is version 999, newer than this"):
        await start(make_settings(tmp_path))
    with contextlib.closing(sqlite3.connect(db)) as conn:  # untouched
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 999


async def test_a_postgres_store_with_a_schema_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    """PostgreSQL found it, and said it with a RuntimeError's traceback (exit 1)."""
    schema = await create_schema()
    settings = make_settings(tmp_path).replace(database_url=pg_url(schema))
    try:
        coordinator = await start(settings)
        await coordinator.stop(grace=0)
        admin = await pg_admin()
        try:
            await admin.execute(f'INSERT INTO "{schema}".schema_version VALUES (999, 0)')
        finally:
            await admin.close()
        with pytest.raises(SettingsError, match=r"DATABASE_URL: .*schema version 999 is newer than this"):
            await start(settings)
    finally:
        await drop_schema(schema)


def test_a_postgres_store_that_cannot_be_reached_at_start_is_said_in_one_line(tmp_path: Path) -> None:
    """A start whose store refuses the connection (PostgreSQL down) exits 1 with one line: no traceback."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = serve(tmp_path, f"postgresql://postgres@127.0.0.1:{port}/test")
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("aitbc-coordinator: the store could not be reached: "), last


async def test_a_start_refused_for_a_port_in_use_leaves_no_new_store_behind(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        busy = held.getsockname()[1]
        with pytest.raises(SettingsError, match="APP_PORT"):
            await start(make_settings(tmp_path, app_port=busy))
        assert sqlite_files(tmp_path) == []
        # an existing store is kept as it was, of course
        db = await a_store_in(tmp_path)
        before = db.read_bytes()
        with pytest.raises(SettingsError, match="APP_PORT"):
            await start(make_settings(tmp_path, app_port=busy))
        assert db.read_bytes() == before


async def test_a_start_refused_for_a_busy_tls_miner_port_can_be_retried(tmp_path: Path) -> None:
    """The app port, bound before the miner listener was refused, stayed bound within the process: a retry,
    once the miner port was free, was refused 'APP_HOST, APP_PORT: cannot listen' on its own leftover."""
    pki = Pki(tmp_path / "pki")
    cert, key = pki.issue("coordinator.test", server=True)
    app_port = free_port()
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        miner_port = held.getsockname()[1]
        settings = make_settings(tmp_path, app_port=app_port, tls_cert_file=str(cert), tls_key_file=str(key),
                                 tls_client_ca_file=str(pki.ca), tls_miner_address=f"127.0.0.1:{miner_port}")  # fmt: skip
        with pytest.raises(SettingsError, match="TLS_MINER_ADDRESS"):
            await start(settings)
    coordinator = await start(settings)
    try:
        assert (coordinator.port, coordinator.miner_port) == (app_port, miner_port)
    finally:
        await coordinator.stop(grace=0)


def test_a_metrics_port_equal_to_the_tls_miner_port_is_a_bad_setting(tmp_path: Path) -> None:
    """It was found only at the bind, and said as 'TLS_MINER_ADDRESS: ... in use by another process?'."""
    port = free_port()
    with pytest.raises(SettingsError, match="METRICS_PORT: must differ from the port of TLS_MINER_ADDRESS"):
        make_settings(tmp_path, metrics_port=port, tls_miner_address=f"127.0.0.1:{port}",
                      tls_cert_file=__file__, tls_key_file=__file__, tls_client_ca_file=__file__)  # fmt: skip
    with pytest.raises(SettingsError, match="TLS_MINER_ADDRESS: its port must differ from APP_PORT"):
        make_settings(tmp_path, app_port=port, tls_miner_address=f"127.0.0.1:{port}",
                      tls_cert_file=__file__, tls_key_file=__file__, tls_client_ca_file=__file__)  # fmt: skip


async def serving_process(env_file: Path, *extra: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "coordinator", "serve", "--env-file", str(env_file), "--host", "127.0.0.1",
        "--port", "0", *extra, cwd=ROOT, env={"PATH": "/usr/bin:/bin"},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def read_until(proc: asyncio.subprocess.Process, text: str, seen: list[str]) -> None:
    assert proc.stderr is not None
    while True:
        line = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
        assert line, f"the coordinator ended before logging {text!r}: {seen}"
        seen.append(line)
        if text in line:
            return


async def end_of(proc: asyncio.subprocess.Process, seen: list[str]) -> str:
    assert proc.stderr is not None
    rest = await asyncio.wait_for(proc.stderr.read(), 60)
    await asyncio.wait_for(proc.wait(), 60)
    return "".join(seen) + rest.decode()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_stop_signal_during_start_up_ends_it_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    """A coordinator waiting at start-up for its PostgreSQL store's holder to go: SIGTERM killed it on the spot
    (the signal's default action: exit -15, nothing in the log); now it stops before serving, says so, exit 0."""
    schema = await create_schema()
    holder = PostgresStore(pg_url(schema), lock_wait_s=0)  # another process holds the store
    await holder.open()
    env_file = tmp_path / "settings.env"
    env_file.write_text(f"DATABASE_URL={pg_url(schema)}\n")
    proc = await serving_process(env_file)
    seen: list[str] = []
    try:
        await read_until(proc, "waiting for it", seen)
        proc.send_signal(sig)
        log = await end_of(proc, seen)
        assert proc.returncode == 0, log
        assert f"{sig.name} during start-up: stopping before serving" in log, log
        assert "coordinator stopped" in log and "Traceback" not in log, log
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await holder.close()
        await drop_schema(schema)


async def test_a_sighup_during_start_up_reloads_the_keys_once_serving(tmp_path: Path) -> None:
    """SIGHUP (`systemctl reload`) during start-up killed the coordinator (the signal's default action): its
    handler was installed only once it served."""
    schema = await create_schema()
    holder = PostgresStore(pg_url(schema), lock_wait_s=0)  # holds the store: the start waits
    await holder.open()
    env_file = tmp_path / "settings.env"
    env_file.write_text(f"DATABASE_URL={pg_url(schema)}\nCLIENT_API_KEYS=alice:alice-key-0001\n")
    proc = await serving_process(env_file)
    seen: list[str] = []
    try:
        await read_until(proc, "waiting for it", seen)
        proc.send_signal(signal.SIGHUP)
        await holder.close()  # the start goes on
        await read_until(proc, "serving on", seen)
        await read_until(proc, "API keys reloaded: 1 keys", seen)
        proc.send_signal(signal.SIGTERM)
        log = await end_of(proc, seen)
        assert proc.returncode == 0 and "coordinator stopped" in log, log
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await holder.close()
        await drop_schema(schema)


async def test_a_second_sigterm_while_stopping_is_logged_and_the_stop_completes(tmp_path: Path) -> None:
    """The stop is held open by a call in flight (a health watch), for as long as the test needs: with nothing in
    flight it took ~15 ms, and a test process paused that long (a loaded host) sent its second SIGTERM to a
    process gone, or one whose handlers were removed (killed by it: exit -15)."""
    env_file = tmp_path / "settings.env"
    # (the stop waits for the watch until the test cancels it: the grace only bounds a test gone wrong)
    env_file.write_text("SHUTDOWN_GRACE_SECONDS=60\n")
    proc = await serving_process(env_file, "--database", f"sqlite:///{tmp_path / 'c.db'}")
    seen: list[str] = []
    try:
        await read_until(proc, "serving on", seen)
        address = re.search(r"serving on (127\.0\.0\.1:\d+) ", seen[-1])
        assert address, seen[-1]
        async with grpc.aio.insecure_channel(address.group(1)) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            assert (await asyncio.wait_for(watch.read(), 10)).status == health_pb2.HealthCheckResponse.SERVING
            proc.send_signal(signal.SIGTERM)
            await read_until(proc, "SIGTERM: shutting down", seen)
            proc.send_signal(signal.SIGTERM)  # while the stop waits for the watch
            await read_until(proc, "SIGTERM again: already shutting down", seen)
            assert proc.returncode is None and "coordinator stopped" not in "".join(seen)
            watch.cancel()  # the last call in flight ends: the stop completes
        log = await end_of(proc, seen)
        assert proc.returncode == 0, log
        lines = log.splitlines()
        stopped = [i for i, line in enumerate(lines) if "coordinator stopped" in line]
        assert len(stopped) == 1 and stopped[0] == len(lines) - 1, log  # the last word
        assert "Traceback" not in log
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@contextlib.contextmanager
def small_file_system(directory: Path, size: str = "256k") -> Iterator[Path]:
    """A real tmpfs of `size` mounted at directory (root only; skipped elsewhere)."""
    directory.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=True)


def test_a_sqlite_store_on_a_read_only_file_system_is_refused_in_one_line(tmp_path: Path) -> None:
    """open(PATH.lock) failed with EROFS, an OSError none of the expected ones: a traceback, exit 1."""
    with small_file_system(tmp_path / "ro") as directory:
        subprocess.run(["mount", "-o", "remount,ro", str(directory)], check=True)
        done = serve(tmp_path, f"sqlite:///{directory / 'c.db'}")
    refused_in_one_line(done, "Read-only file system")


def test_a_sqlite_store_on_a_full_disk_is_refused_in_one_line_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    with small_file_system(tmp_path / "full") as directory:
        with contextlib.suppress(OSError), (directory / "filler").open("wb") as filler:
            while True:
                filler.write(b"\0" * 4096)
                filler.flush()
        done = serve(tmp_path, f"sqlite:///{directory / 'c.db'}")
        left = sorted(p.name for p in directory.iterdir())
    refused_in_one_line(done, "full")
    assert left == ["filler"]


def port_bound(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


async def test_a_start_stopped_as_its_metrics_listener_opens_leaves_the_port_free(tmp_path: Path) -> None:
    """A stop signal during start-up cancels the start: cancelled in asyncio's start_server after it had bound
    METRICS_PORT (it yields once, already serving), the listener was left open and nobody's: a retry in the
    same process was refused 'METRICS_HOST, METRICS_PORT: cannot listen' on its own leftover."""
    settings = make_settings(tmp_path, metrics_port=free_port())
    starting = asyncio.ensure_future(start(settings))
    loop = asyncio.get_running_loop()

    def stop_once_bound() -> None:  # each loop turn: the first turn the port is bound, the start is cancelled
        if starting.done():
            return
        if port_bound(settings.metrics_port):
            starting.cancel()
        else:
            loop.call_soon(stop_once_bound)

    loop.call_soon(stop_once_bound)
    with pytest.raises(asyncio.CancelledError):
        await starting
    assert not port_bound(settings.metrics_port)
    assert sqlite_files(tmp_path) == []
    coordinator = await start(settings)
    await coordinator.stop(grace=0)


async def test_a_start_stopped_during_the_store_migration_reports_no_error_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    """A stop signal while the SQLite writer migrated a new store: the start stopped cleanly, but the writer,
    done migrating, set the start's cancelled wait, and asyncio logged 'Exception in callback
    Future.set_result(None) ... InvalidStateError' with a traceback."""
    loop = asyncio.get_running_loop()
    errors: list[dict] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    starting = asyncio.ensure_future(start(make_settings(tmp_path)))

    class StopAtFirstMigration(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:  # (in the writer thread)
            if record.getMessage() == "store migrated to schema version 1":
                loop.call_soon_threadsafe(starting.cancel)

    store_log = logging.getLogger("coordinator.store.sqlite")
    handler = StopAtFirstMigration()
    store_log.addHandler(handler)
    level = store_log.level
    store_log.setLevel(logging.INFO)
    try:
        with pytest.raises(asyncio.CancelledError):
            await starting
        for _ in range(3):  # (the writer's last callbacks, queued as it ended)
            await asyncio.sleep(0)
    finally:
        store_log.removeHandler(handler)
        store_log.setLevel(level)
        loop.set_exception_handler(None)
    assert errors == []
    assert sqlite_files(tmp_path) == []
