"""Settings from the environment and a `.env` file (the original's names), validated at start-up.

A bad setting stops start-up with a message naming it. Flags of `aitbc-coordinator serve` override both.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from dotenv import dotenv_values


def host_port(host: str, port: int) -> str:
    """HOST:PORT as gRPC binds it and as a URL names it: an IPv6 literal in brackets ("[::1]:50051"; "::1:50051"
    was bound by gRPC as another address, or refused, and is no URL)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it."""


@dataclass(frozen=True, slots=True)
class ApiKeyEntry:
    """One API key: its identity name, role, the SHA-256 of the key, and an optional HMAC signing secret.

    A plain key given as `secret` is hashed here and dropped: the settings never hold it.
    """

    name: str
    role: str  # client | miner | admin
    secret: str = field(default="", repr=False)  # a plain key: hashed at construction, then blanked
    key_hash: bytes = field(default=b"", repr=False)
    hmac_secret: str = field(default="", repr=False)  # per-key request signing secret (overrides HMAC_SECRET)

    def __post_init__(self) -> None:
        if self.secret:
            object.__setattr__(self, "key_hash", hashlib.sha256(self.secret.encode()).digest())
            object.__setattr__(self, "secret", "")


@dataclass(frozen=True)
class Settings:
    app_host: str = "127.0.0.1"
    app_port: int = 50051
    database_url: str = "sqlite:///aitbc-coordinator.db"
    sqlite_synchronous: str = "FULL"
    database_pool_size: int = 10  # PostgreSQL: read connections
    database_read_timeout_seconds: float = 5.0  # PostgreSQL: a call's read (tried twice), then UNAVAILABLE
    client_api_keys: tuple[ApiKeyEntry, ...] = ()
    miner_api_keys: tuple[ApiKeyEntry, ...] = ()
    admin_api_keys: tuple[ApiKeyEntry, ...] = ()
    job_ttl_seconds: float = 900.0
    job_max_attempts: int = 3
    job_execution_timeout_seconds: float = 3600.0
    max_payload_bytes: int = 1 << 20
    heartbeat_interval_seconds: float = 10.0
    heartbeat_timeout_seconds: float = 30.0
    # HTTP/2 keepalive of the server: a connection whose ping goes unanswered this long is closed (its
    # streams end, their miners' jobs wait out the reconnect grace). Finds half-open TCP connections.
    keepalive_time_seconds: float = 20.0
    keepalive_timeout_seconds: float = 10.0
    lease_seconds: float = 30.0
    reconnect_grace_seconds: float = 30.0
    max_reassignments: int = 5
    retry_backoff_base_seconds: float = 1.0
    retry_backoff_max_seconds: float = 60.0
    shutdown_grace_seconds: float = 10.0
    receipt_signing_key_hex: str = field(default="", repr=False)
    receipt_attestation_key_hex: str = field(default="", repr=False)
    receipt_signing_key_file: str = ""  # a file holding the seed as hex (instead of the _HEX setting)
    receipt_attestation_key_file: str = ""
    coordinator_id: str = "coord-local"
    chain_id: str = "aitbc-local"
    hmac_secret: str = field(default="", repr=False)
    log_level: str = "INFO"
    log_format: str = "text"
    metrics_port: int = 0  # Prometheus /metrics on this port; 0: off (docs/operations.md)
    metrics_host: str = "127.0.0.1"
    # security (docs/security.md)
    client_api_keys_file: str = ""
    miner_api_keys_file: str = ""
    admin_api_keys_file: str = ""
    hmac_replay_window_seconds: float = 300.0
    hmac_nonce_cache_size: int = 100_000
    rate_limits: str = ""  # e.g. "submit=200/s:burst=400,read=500/s,miner=1000/s,admin=50/s,stream=500/s"
    auth_failure_peer_cache_size: int = 100_000  # peers whose failed authentications are remembered
    stream_throttle_cutoff_seconds: float = 10.0
    max_message_bytes: int = 8 << 20
    max_concurrent_calls_per_key: int = 512
    max_streams_per_identity: int = 256
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    tls_miner_address: str = ""

    @property
    def api_keys(self) -> tuple[ApiKeyEntry, ...]:
        return self.client_api_keys + self.miner_api_keys + self.admin_api_keys

    def replace(self, **changes: object) -> Settings:
        from dataclasses import replace

        return replace(self, **changes)


_KEY_LISTS = {"client_api_keys": "client", "miner_api_keys": "miner", "admin_api_keys": "admin"}
_KEY_FILES = {"client_api_keys_file": "client_api_keys", "miner_api_keys_file": "miner_api_keys",
              "admin_api_keys_file": "admin_api_keys"}  # fmt: skip
MIN_HMAC_SECRET = 16


def parse_key_entry(env_name: str, role: str, item: str) -> ApiKeyEntry:
    """`NAME:KEY` or `NAME:sha256:HEX` (the key's SHA-256), optionally followed by `;hmac=SECRET`."""
    main, _, options = item.partition(";")
    hmac_secret = ""
    if options:
        option, sep, value = options.strip().partition("=")
        if option != "hmac" or not sep:
            raise SettingsError(f"{env_name}: unknown option {option!r} (only ';hmac=SECRET')")
        if len(value) < MIN_HMAC_SECRET:
            raise SettingsError(f"{env_name}: an HMAC secret must be at least {MIN_HMAC_SECRET} characters")
        hmac_secret = value
    name, sep, key = main.strip().partition(":")
    if not sep or not name or not key:
        raise SettingsError(
            f"{env_name}: each entry must be NAME:KEY or NAME:sha256:HEX (got an entry without a name or key)"
        )
    if len(name) > 128 or any(c.isspace() for c in name):
        raise SettingsError(f"{env_name}: names are 1 to 128 characters without spaces")
    if key.startswith("sha256:"):
        try:
            digest = bytes.fromhex(key[7:])
        except ValueError:
            digest = b""
        if len(digest) != 32:
            raise SettingsError(f"{env_name}: the hash of {name!r} must be 64 hex characters after 'sha256:'")
        return ApiKeyEntry(name, role, key_hash=digest, hmac_secret=hmac_secret)
    if len(key) < 8:
        raise SettingsError(f"{env_name}: the key of {name!r} is shorter than 8 characters")
    return ApiKeyEntry(name, role, key, hmac_secret=hmac_secret)


def parse_key_list(env_name: str, role: str, raw: str) -> tuple[ApiKeyEntry, ...]:
    """`name:key,name2:sha256:HEX` -> entries. The name is the identity; the key is never an identity."""
    return _unique(env_name, [parse_key_entry(env_name, role, item) for item in _items(raw.split(","))])


def parse_key_file(env_name: str, role: str, path: str) -> tuple[ApiKeyEntry, ...]:
    """A key file: one entry per line (the grammar of parse_key_entry); blank lines and # comments skipped."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SettingsError(f"{env_name}: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise SettingsError(f"{env_name}: cannot read {path}: not UTF-8 text") from None
    lines = (line.split("#", 1)[0] if line.lstrip().startswith("#") else line for line in text.splitlines())
    return _unique(env_name, [parse_key_entry(env_name, role, item) for item in _items(lines)])


def _items(parts) -> list[str]:  # type: ignore[no-untyped-def]
    return [p.strip() for p in parts if p.strip()]


def _unique(env_name: str, entries: list[ApiKeyEntry]) -> tuple[ApiKeyEntry, ...]:
    seen: set[str] = set()
    for entry in entries:
        if entry.name in seen:
            raise SettingsError(f"{env_name}: the name {entry.name!r} appears twice")
        seen.add(entry.name)
    return tuple(entries)


# Per key: submit, read, miner, admin; per stream: stream; per peer address: auth_failures (calls refused for
# a missing, unknown or disabled key or a bad signature; docs/security.md).
RATE_GROUPS = ("submit", "read", "miner", "admin", "stream", "auth_failures")
DEFAULT_RATE_LIMITS: dict[str, tuple[float, float] | None] = {
    "submit": (200.0, 400.0), "read": (500.0, 1000.0), "miner": (1000.0, 2000.0), "admin": (50.0, 100.0),
    "stream": (500.0, 1000.0), "auth_failures": (10.0, 50.0),
}  # fmt: skip
_PER = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate_limits(raw: str) -> dict[str, tuple[float, float] | None]:
    """RATE_LIMITS: `GROUP=N/s[:burst=B]` entries (also /m, /h), or `GROUP=off`; the rest keep defaults.

    Returns group -> (tokens per second, burst), None for unlimited. The burst defaults to one second's
    worth (at least 1).
    """
    limits = dict(DEFAULT_RATE_LIMITS)
    for item in _items(raw.split(",")):
        group, sep, spec = item.partition("=")
        group = group.strip()
        if not sep or group not in RATE_GROUPS:
            raise SettingsError(f"RATE_LIMITS: unknown group {group!r} (groups: {', '.join(RATE_GROUPS)})")
        if spec.strip() == "off":
            limits[group] = None
            continue
        rate_part, _, burst_part = spec.partition(":")
        amount, slash, unit = rate_part.strip().partition("/")
        try:
            rate = float(amount) / _PER[unit.strip()] if slash else float("nan")
            burst = float(burst_part.strip().removeprefix("burst=")) if burst_part else max(1.0, rate)
            if burst_part and not burst_part.strip().startswith("burst="):
                raise ValueError
        except (ValueError, KeyError):
            raise SettingsError(
                f"RATE_LIMITS: {item!r} is not GROUP=N/s[:burst=B] (units s, m, h) or GROUP=off"
            ) from None
        if not (math.isfinite(rate) and rate > 0 and math.isfinite(burst) and burst >= 1):
            raise SettingsError(f"RATE_LIMITS: {item!r}: the rate must be positive and the burst at least 1")
        limits[group] = (rate, burst)
    return limits


def load_settings(env: Mapping[str, str] | None = None, env_file: str | Path | None = ".env") -> Settings:
    """Settings from env_file (if present), overridden by the process environment (or env)."""
    merged: dict[str, str] = {}
    if env_file is not None and Path(env_file).is_file():
        try:
            merged.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
        except UnicodeDecodeError:
            raise SettingsError(f"--env-file: cannot read {env_file}: not UTF-8 text") from None
    merged.update(os.environ if env is None else env)
    values: dict[str, object] = {}
    for f in fields(Settings):
        name = f.name.upper()
        if name not in merged:
            continue
        raw = merged[name].strip()
        if f.name in _KEY_LISTS:
            values[f.name] = parse_key_list(name, _KEY_LISTS[f.name], raw)
        elif f.name in _KEY_FILES and raw:
            values[f.name] = raw
            target = _KEY_FILES[f.name]
            listed = values.get(target, ())  # the *_API_KEYS field comes first: already parsed
            values[target] = _unique(name, [*listed, *parse_key_file(name, _KEY_LISTS[target], raw)])  # type: ignore[misc]
        elif f.type in ("int", int):
            values[f.name] = _number(name, raw, int)
        elif f.type in ("float", float):
            values[f.name] = _number(name, raw, float)
        else:
            values[f.name] = raw
    _read_seed_files(values)
    settings = Settings(**values)  # type: ignore[arg-type]
    validate(settings)
    return settings


def _read_seed_files(values: dict[str, object]) -> None:
    """RECEIPT_*_KEY_FILE: the seed's hex read from a file (kept out of the environment)."""
    for role in ("signing", "attestation"):
        path = values.get(f"receipt_{role}_key_file")
        if not path:
            continue
        name = f"RECEIPT_{role.upper()}_KEY_FILE"
        if values.get(f"receipt_{role}_key_hex"):
            raise SettingsError(f"{name}: set either it or RECEIPT_{role.upper()}_KEY_HEX, not both")
        try:
            values[f"receipt_{role}_key_hex"] = Path(str(path)).read_text().strip()
        except OSError as exc:
            raise SettingsError(f"{name}: cannot read {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise SettingsError(f"{name}: cannot read {path}: not UTF-8 text") from None


def _number(name: str, raw: str, kind: type) -> int | float:
    try:
        return kind(raw)
    except ValueError:
        raise SettingsError(f"{name}: expected a number, got {raw!r}") from None


_DATABASE_RANGES = {"DATABASE_POOL_SIZE": " (1 to 1000)", "DATABASE_READ_TIMEOUT_SECONDS": " (0.1 to 300)"}
MAX_JOB_SECONDS = 7 * 24 * 3600  # a job's time to live and execution timeout (domain.validation.Limits)


# The longest any seconds setting may be (about 31 years): each becomes integer microseconds, a protobuf
# Duration or Timestamp (a lease in a welcome, a deadline in an assignment), or a timer; inf or 1e300 broke them.
MAX_SETTING_SECONDS = 1e9
# gRPC takes its keepalive settings as an int of milliseconds (2**31 - 1 ms: about 24.8 days)
MAX_KEEPALIVE_SECONDS = (2**31 - 1) // 1000


def _seconds_problem(s: Settings) -> str | None:
    """The first float (seconds) setting that is not finite or is longer than can be used, if any."""
    for f in fields(s):
        if f.type not in ("float", float):
            continue
        value = getattr(s, f.name)
        name = f.name.upper()
        limit = MAX_KEEPALIVE_SECONDS if name.startswith("KEEPALIVE_") else MAX_SETTING_SECONDS
        if not (math.isfinite(value) and abs(value) <= limit):
            return f"{name}: value out of range (a finite number of seconds, at most {limit:g})"
    return None


def validate(s: Settings) -> None:
    if problem := _seconds_problem(s):
        raise SettingsError(problem)
    positive = {
        "APP_PORT": s.app_port >= 0 and s.app_port < 65536,
        # at most what a request may ask for (7 days): a default above it refused every submit leaving it unset
        "JOB_TTL_SECONDS": 1 <= s.job_ttl_seconds <= MAX_JOB_SECONDS,
        "JOB_MAX_ATTEMPTS": 1 <= s.job_max_attempts <= 100,
        "JOB_EXECUTION_TIMEOUT_SECONDS": 1 <= s.job_execution_timeout_seconds <= MAX_JOB_SECONDS,
        "MAX_PAYLOAD_BYTES": 1 <= s.max_payload_bytes <= 64 << 20,
        "HEARTBEAT_INTERVAL_SECONDS": s.heartbeat_interval_seconds > 0,
        "HEARTBEAT_TIMEOUT_SECONDS": s.heartbeat_timeout_seconds > s.heartbeat_interval_seconds,
        "KEEPALIVE_TIME_SECONDS": s.keepalive_time_seconds >= 0.1,
        "KEEPALIVE_TIMEOUT_SECONDS": s.keepalive_timeout_seconds >= 0.1,
        "LEASE_SECONDS": s.lease_seconds > s.heartbeat_interval_seconds,
        "RECONNECT_GRACE_SECONDS": s.reconnect_grace_seconds >= 0,
        "MAX_REASSIGNMENTS": s.max_reassignments >= 0,
        "RETRY_BACKOFF_BASE_SECONDS": s.retry_backoff_base_seconds >= 0,
        "RETRY_BACKOFF_MAX_SECONDS": s.retry_backoff_max_seconds >= s.retry_backoff_base_seconds,
        "SHUTDOWN_GRACE_SECONDS": s.shutdown_grace_seconds >= 0,
        "DATABASE_POOL_SIZE": 1 <= s.database_pool_size <= 1000,
        # (tried twice: past about half a client's deadline, the client gives up before the coordinator answers)
        "DATABASE_READ_TIMEOUT_SECONDS": 0.1 <= s.database_read_timeout_seconds <= 300,
    }
    for name, ok in positive.items():
        if not ok:
            hint = (
                " (must exceed HEARTBEAT_INTERVAL_SECONDS)" if "HEARTBEAT" in name or "LEASE" in name
                else " (1 s to 7 days)" if name in ("JOB_TTL_SECONDS", "JOB_EXECUTION_TIMEOUT_SECONDS")
                else _DATABASE_RANGES.get(name, "")
            )  # fmt: skip
            raise SettingsError(f"{name}: value out of range{hint}")
    if s.sqlite_synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise SettingsError("SQLITE_SYNCHRONOUS: one of OFF, NORMAL, FULL, EXTRA")
    if s.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise SettingsError("LOG_LEVEL: one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    if s.log_format not in ("text", "json"):
        raise SettingsError("LOG_FORMAT: 'text' or 'json'")
    if not 0 <= s.metrics_port < 65536:
        raise SettingsError("METRICS_PORT: a TCP port (1-65535), or 0 for no metrics endpoint")
    if s.metrics_port and s.metrics_port == s.app_port:
        raise SettingsError("METRICS_PORT: must differ from APP_PORT")
    # (else found only at the bind, and said as a port "in use by another process")
    miner_port = _port_of(s.tls_miner_address)
    if miner_port and s.metrics_port == miner_port:
        raise SettingsError("METRICS_PORT: must differ from the port of TLS_MINER_ADDRESS")
    if miner_port and s.app_port == miner_port:
        raise SettingsError("TLS_MINER_ADDRESS: its port must differ from APP_PORT")
    if s.metrics_port and not s.metrics_host:
        raise SettingsError("METRICS_HOST: an address to listen on, e.g. 127.0.0.1 or 0.0.0.0")
    for name, value in (("RECEIPT_SIGNING_KEY_HEX", s.receipt_signing_key_hex),
                        ("RECEIPT_ATTESTATION_KEY_HEX", s.receipt_attestation_key_hex)):  # fmt: skip
        if value:
            try:
                if len(bytes.fromhex(value)) != 32:
                    raise ValueError
            except ValueError:
                raise SettingsError(f"{name}: expected 64 hex characters (a 32-byte Ed25519 seed)") from None
    if not (
        s.database_url.startswith("sqlite:///") or s.database_url.startswith(("postgres://", "postgresql://"))
    ):
        raise SettingsError(
            "DATABASE_URL: expected sqlite:///PATH or postgresql://USER@HOST:PORT/DB[?schema=NAME]"
        )
    if s.database_url.startswith("sqlite:///") and not s.database_url[len("sqlite:///") :].strip():
        raise SettingsError(
            "DATABASE_URL: sqlite:/// names no file: sqlite:///PATH (a relative or /absolute path)"
        )
    names: dict[bytes, str] = {}
    identities: set[tuple[str, str]] = set()
    for entry in s.api_keys:
        if entry.key_hash in names:
            raise SettingsError(
                f"{entry.role.upper()}_API_KEYS: the key of {entry.name!r} is also {names[entry.key_hash]!r}'s"
            )
        if (entry.role, entry.name) in identities:  # (the keyring keeps one key per identity)
            raise SettingsError(f"{entry.role.upper()}_API_KEYS: {entry.name!r} has two keys; a name has one "
                                "(to rotate a key, replace it and reload)")  # fmt: skip
        names[entry.key_hash] = entry.name
        identities.add((entry.role, entry.name))
    validate_security(s)


def _port_of(address: str) -> int | None:
    """The port of HOST:PORT ([V6]:PORT too); None when there is none to compare."""
    _, sep, port = address.rpartition(":")
    return int(port) if sep and port.isdigit() else None


def validate_security(s: Settings) -> None:
    for entry in s.api_keys:
        if len(entry.key_hash) != 32:
            raise SettingsError(f"{entry.role.upper()}_API_KEYS: {entry.name!r} has no key or key hash")
    if s.hmac_secret and len(s.hmac_secret) < MIN_HMAC_SECRET:
        raise SettingsError(f"HMAC_SECRET: at least {MIN_HMAC_SECRET} characters")
    ranges = {
        "HMAC_REPLAY_WINDOW_SECONDS": 1 <= s.hmac_replay_window_seconds <= 86_400,
        "HMAC_NONCE_CACHE_SIZE": 1_000 <= s.hmac_nonce_cache_size <= 10_000_000,
        "AUTH_FAILURE_PEER_CACHE_SIZE": 1_000 <= s.auth_failure_peer_cache_size <= 10_000_000,
        "STREAM_THROTTLE_CUTOFF_SECONDS": s.stream_throttle_cutoff_seconds > 0,
        "MAX_MESSAGE_BYTES": 4096 <= s.max_message_bytes <= 256 << 20,
        "MAX_CONCURRENT_CALLS_PER_KEY": s.max_concurrent_calls_per_key >= 1,
        "MAX_STREAMS_PER_IDENTITY": s.max_streams_per_identity >= 1,
    }
    for name, ok in ranges.items():
        if not ok:
            raise SettingsError(f"{name}: value out of range")
    if s.max_message_bytes < s.max_payload_bytes:
        raise SettingsError("MAX_MESSAGE_BYTES: must be at least MAX_PAYLOAD_BYTES")
    parse_rate_limits(s.rate_limits)
    if bool(s.tls_cert_file) != bool(s.tls_key_file):
        raise SettingsError("TLS_CERT_FILE and TLS_KEY_FILE: set both or neither")
    if s.tls_client_ca_file and not s.tls_cert_file:
        raise SettingsError("TLS_CLIENT_CA_FILE: needs TLS_CERT_FILE and TLS_KEY_FILE (mutual TLS is TLS)")
    if s.tls_miner_address and not s.tls_client_ca_file:
        raise SettingsError("TLS_MINER_ADDRESS: needs TLS_CLIENT_CA_FILE (it is the mutual-TLS listener)")
    for name, path in (("TLS_CERT_FILE", s.tls_cert_file), ("TLS_KEY_FILE", s.tls_key_file),
                       ("TLS_CLIENT_CA_FILE", s.tls_client_ca_file)):  # fmt: skip
        if path and not Path(path).is_file():
            raise SettingsError(f"{name}: no such file {path}")
    if s.tls_cert_file:
        _check_tls_files(s.tls_cert_file, s.tls_key_file, s.tls_client_ca_file)


def _check_tls_files(cert: str, key: str, ca: str) -> None:
    """The certificate and its key, and the client CA, as gRPC will need them. Told otherwise, the listener's
    bind failed, and the start blamed APP_HOST, APP_PORT ("in use by another process?")."""
    import ssl  # (only with TLS)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # Whether the files are a pair, not OpenSSL's policy: gRPC's own TLS serves a 1024-bit RSA key that this
    # machine's OpenSSL refuses by default (EE_KEY_TOO_SMALL).
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    try:  # (an encrypted key: the empty password fails it, where none would prompt on the terminal)
        context.load_cert_chain(cert, key, password=b"")
    except (ssl.SSLError, OSError) as exc:
        raise SettingsError(f"TLS_CERT_FILE, TLS_KEY_FILE: not a PEM certificate and its (unencrypted) private "
                            f"key: {exc}") from None  # fmt: skip
    if ca:
        try:
            context.load_verify_locations(cafile=ca)
        except (ssl.SSLError, OSError) as exc:
            raise SettingsError(f"TLS_CLIENT_CA_FILE: not PEM certificates: {exc}") from None
