"""The operator's tools as an operator meets them (audit of `aitbc admin` and `aitbc-coordinator`).

docs/operations.md: "A bad value stops start-up with a message naming the setting (`aitbc-coordinator: bad
setting: NAME: ...` on stderr, exit 2)"; README: `aitbc admin` exits 1 for a refused call, 2 for bad
command-line input, one line each. Found wrong:

- a seconds setting of `inf` (or, for the keepalive pair, more than gRPC's int of milliseconds) was accepted:
  KEEPALIVE_* and RECONNECT_GRACE_SECONDS died at start with an OverflowError traceback (exit 1), and
  LEASE_SECONDS or HEARTBEAT_TIMEOUT_SECONDS started a coordinator whose every miner `Connect` failed INTERNAL;
- a key file, a receipt seed file or the `--env-file` that is not UTF-8 text: a UnicodeDecodeError traceback;
- DATABASE_URL `sqlite:///` (no path): a traceback (`no such table: signing_keys`), exit 1;
- `keys rotate` on a file that is no SQLite database, or on a PostgreSQL it cannot reach: a traceback, exit 1;
- `aitbc admin top` against an unreachable coordinator: asyncio's "unhandled exception during asyncio.run()
  shutdown" and two tracebacks before its one line (the other call of the refresh was left running);
- `aitbc admin top --interval nan` redrew without pausing until the rate limit refused it (exit 1), and
  `--timeout inf` waited forever on an unreachable coordinator (`1e12`: DEADLINE_EXCEEDED at once), and
  `--iterations -1` stopped after one refresh.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from aitbc.cli import main as aitbc_main
from ops_support import free_port

from coordinator.config import SettingsError, load_settings

NOT_UTF8 = b"\xff\xfe not text\n"


def coordinator(
    tmp_path: Path, *argv: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coordinator", *argv], capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )  # fmt: skip


def serve(tmp_path: Path, *flags: str, **settings: str) -> subprocess.CompletedProcess[str]:
    env_file = tmp_path / "env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    return coordinator(tmp_path, "serve", "--env-file", str(env_file), "--port", "0",
                       "--database", f"sqlite:///{tmp_path / 'c.db'}", *flags)  # fmt: skip


def assert_one_line(done: subprocess.CompletedProcess[str], code: int, starts: str) -> None:
    assert done.returncode == code and "Traceback" not in done.stderr, (done.returncode, done.stderr)
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(starts), done.stderr


# ---------------------------------------------------------------------- aitbc-coordinator: settings
@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("KEEPALIVE_TIME_SECONDS", "inf"),
        ("KEEPALIVE_TIME_SECONDS", "3000000"),  # 3e9 ms: more than gRPC's int of milliseconds
        ("KEEPALIVE_TIMEOUT_SECONDS", "inf"),
        ("LEASE_SECONDS", "inf"),
        ("LEASE_SECONDS", "1e300"),  # the welcome's Duration cannot hold it
        ("HEARTBEAT_TIMEOUT_SECONDS", "inf"),
        ("RECONNECT_GRACE_SECONDS", "inf"),
        ("SHUTDOWN_GRACE_SECONDS", "inf"),
        ("RETRY_BACKOFF_MAX_SECONDS", "inf"),
        ("STREAM_THROTTLE_CUTOFF_SECONDS", "inf"),
    ],
)
def test_a_seconds_setting_past_what_can_be_used_is_refused_naming_it(setting: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"^{setting}: "):
        load_settings(env={setting: value}, env_file=None)


@pytest.mark.parametrize("setting", ["KEEPALIVE_TIME_SECONDS", "LEASE_SECONDS", "RECONNECT_GRACE_SECONDS"])
def test_serve_refuses_an_infinite_setting_with_one_line(tmp_path: Path, setting: str) -> None:
    done = serve(tmp_path, **{setting: "inf"})
    assert_one_line(done, 2, f"aitbc-coordinator: bad setting: {setting}: ")
    assert not (tmp_path / "c.db").exists()


@pytest.mark.parametrize("setting", ["CLIENT_API_KEYS_FILE", "RECEIPT_SIGNING_KEY_FILE"])
def test_a_file_setting_that_is_not_text_is_refused_naming_it(tmp_path: Path, setting: str) -> None:
    path = tmp_path / "binary"
    path.write_bytes(NOT_UTF8)
    with pytest.raises(SettingsError, match=f"^{setting}: cannot read {path}: "):
        load_settings(env={setting: str(path)}, env_file=None)


def test_an_env_file_that_is_not_text_is_refused_with_one_line(tmp_path: Path) -> None:
    env_file = tmp_path / "binary.env"
    env_file.write_bytes(b"APP_PORT=" + NOT_UTF8)
    done = coordinator(
        tmp_path, "serve", "--env-file", str(env_file), "--database", f"sqlite:///{tmp_path / 'c.db'}"
    )
    assert_one_line(done, 2, f"aitbc-coordinator: bad setting: --env-file: cannot read {env_file}: ")


def test_a_sqlite_url_without_a_path_is_refused_with_one_line(tmp_path: Path) -> None:
    done = serve(tmp_path, "--database", "sqlite:///")
    assert_one_line(done, 2, "aitbc-coordinator: bad setting: DATABASE_URL: ")
    assert [p.name for p in tmp_path.iterdir()] == ["env"]


# ---------------------------------------------------------------------- aitbc-coordinator keys rotate
def test_keys_rotate_on_a_file_that_is_no_store_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "junk.db").write_text("not a database\n")
    done = coordinator(tmp_path, "keys", "rotate", "--database", "sqlite:///junk.db")
    assert_one_line(
        done, 2, "aitbc-coordinator: cannot open sqlite:///junk.db: the file is not a SQLite database"
    )
    assert (tmp_path / "junk.db").read_text() == "not a database\n"


def test_keys_rotate_on_an_unreachable_store_is_one_line(tmp_path: Path) -> None:
    url = f"postgresql://nobody@127.0.0.1:{free_port()}/none"
    done = coordinator(tmp_path, "keys", "rotate", "--database", url)
    assert_one_line(done, 1, "aitbc-coordinator: the store could not be reached: ")


# ---------------------------------------------------------------------- aitbc admin
def test_admin_top_against_an_unreachable_coordinator_is_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "aitbc.cli", "admin", "top", "--address", f"127.0.0.1:{free_port()}",
         "--api-key", "k", "--timeout", "1"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("aitbc admin: UNAVAILABLE") and done.stderr.count("\n") == 1, done.stderr


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (("top", "--interval", "nan"), "--interval"),
        (("top", "--interval", "inf"), "--interval"),
        (("top", "--iterations", "-1"), "--iterations"),
        (("stats", "--timeout", "inf"), "--timeout"),
        (("stats", "--timeout", "1e12"), "--timeout"),
        (("stats", "--timeout", "soon"), "--timeout: a number of seconds is needed, not 'soon'"),
    ],
)
def test_bad_admin_seconds_are_refused_as_bad_usage(
    argv: tuple[str, ...], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused before anything connects (a closed port: a call made would fail UNAVAILABLE, exit 1)."""
    try:
        code = aitbc_main(["admin", *argv, "--address", f"127.0.0.1:{free_port()}", "--api-key", "k"])
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert says in err.strip().splitlines()[-1] and "Traceback" not in err, err


def test_an_env_file_named_but_missing_is_refused_not_ignored(tmp_path: Path) -> None:
    """`serve --env-file settings.env` with the file missing (a typo, the wrong directory) started on the default
    settings, with no API keys at all; only the default .env may be absent."""
    done = coordinator(
        tmp_path,
        "serve",
        "--env-file",
        str(tmp_path / "setings.env"),
        "--database",
        f"sqlite:///{tmp_path / 'c.db'}",
    )
    assert_one_line(
        done, 2, f"aitbc-coordinator: bad setting: --env-file: no such file: {tmp_path / 'setings.env'}"
    )
    assert not (tmp_path / "c.db").exists()


def test_an_app_host_that_does_not_resolve_is_said_so_not_blamed_on_a_port(tmp_path: Path) -> None:
    """`--host nosuchhost.invalid` was refused as `cannot listen on ... (in use by another process?)`."""
    done = coordinator(
        tmp_path, "serve", "--env-file", str(env_file_of(tmp_path, "")), "--host", "nosuchhost.invalid", "--port", "0",
        "--database", f"sqlite:///{tmp_path / 'c.db'}",
    )  # fmt: skip
    assert_one_line(done, 2, "aitbc-coordinator: bad setting: APP_HOST, APP_PORT: cannot listen on")
    assert "'nosuchhost.invalid' is no address of this host that resolves" in done.stderr, done.stderr


def env_file_of(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.env"
    path.write_text(text)
    return path


def test_an_env_file_of_dev_null_is_no_settings_file_and_an_empty_name_is_refused(tmp_path: Path) -> None:
    """`--env-file /dev/null` (no settings file at all) was refused as "no such file" by the check of a missing
    one; `--env-file ""` skipped ./.env before that check and read it after: now it is refused."""
    (tmp_path / ".env").write_text("APP_PORT=notanumber\n")
    done = coordinator(tmp_path, "serve", "--env-file", "", "--database", f"sqlite:///{tmp_path / 'c.db'}")
    assert_one_line(done, 2, "aitbc-coordinator: bad setting: --env-file: an empty name")
    done = coordinator(tmp_path, "serve", "--env-file", "/dev/null", "--port", "70000",
                       "--database", f"sqlite:///{tmp_path / 'c.db'}")  # fmt: skip
    assert_one_line(
        done, 2, "aitbc-coordinator: bad setting: APP_PORT"
    )  # (past the settings file: ./.env unread)
