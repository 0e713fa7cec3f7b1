"""Settings from the environment and a `.env` file (the original's names), validated at start-up.

A bad setting stops start-up with a message naming it. Flags of `aitbc-coordinator serve` override both.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from dotenv import dotenv_values


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it."""


@dataclass(frozen=True, slots=True)
class ApiKeyEntry:
    name: str
    role: str  # client | miner | admin
    secret: str


@dataclass(frozen=True)
class Settings:
    app_host: str = "127.0.0.1"
    app_port: int = 50051
    database_url: str = "sqlite:///aitbc-coordinator.db"
    sqlite_synchronous: str = "FULL"
    client_api_keys: tuple[ApiKeyEntry, ...] = ()
    miner_api_keys: tuple[ApiKeyEntry, ...] = ()
    admin_api_keys: tuple[ApiKeyEntry, ...] = ()
    job_ttl_seconds: float = 900.0
    job_max_attempts: int = 3
    job_execution_timeout_seconds: float = 3600.0
    max_payload_bytes: int = 1 << 20
    heartbeat_interval_seconds: float = 10.0
    heartbeat_timeout_seconds: float = 30.0
    lease_seconds: float = 30.0
    reconnect_grace_seconds: float = 30.0
    max_reassignments: int = 5
    retry_backoff_base_seconds: float = 1.0
    retry_backoff_max_seconds: float = 60.0
    shutdown_grace_seconds: float = 10.0
    receipt_signing_key_hex: str = field(default="", repr=False)
    receipt_attestation_key_hex: str = field(default="", repr=False)
    receipt_key_file: str = ""
    coordinator_id: str = "coord-local"
    chain_id: str = "aitbc-local"
    hmac_secret: str = field(default="", repr=False)
    log_level: str = "INFO"
    log_format: str = "text"
    metrics_port: int = 0  # Prometheus /metrics on this port; 0: off (docs/operations.md)
    metrics_host: str = "127.0.0.1"

    @property
    def api_keys(self) -> tuple[ApiKeyEntry, ...]:
        return self.client_api_keys + self.miner_api_keys + self.admin_api_keys

    def replace(self, **changes: object) -> Settings:
        from dataclasses import replace

        return replace(self, **changes)


_KEY_LISTS = {"client_api_keys": "client", "miner_api_keys": "miner", "admin_api_keys": "admin"}


def parse_key_list(env_name: str, role: str, raw: str) -> tuple[ApiKeyEntry, ...]:
    """`name:key,name2:key2` -> entries. The name is the identity; the key is never an identity."""
    entries = []
    seen: set[str] = set()
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        name, sep, secret = item.partition(":")
        if not sep or not name or not secret:
            raise SettingsError(
                f"{env_name}: each entry must be NAME:KEY (got an entry without a name or key)"
            )
        if name in seen:
            raise SettingsError(f"{env_name}: the name {name!r} appears twice")
        if len(secret) < 8:
            raise SettingsError(f"{env_name}: the key of {name!r} is shorter than 8 characters")
        seen.add(name)
        entries.append(ApiKeyEntry(name, role, secret))
    return tuple(entries)


def load_settings(env: Mapping[str, str] | None = None, env_file: str | Path | None = ".env") -> Settings:
    """Settings from env_file (if present), overridden by the process environment (or env)."""
    merged: dict[str, str] = {}
    if env_file is not None and Path(env_file).is_file():
        merged.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    merged.update(os.environ if env is None else env)
    values: dict[str, object] = {}
    for f in fields(Settings):
        name = f.name.upper()
        if name not in merged:
            continue
        raw = merged[name].strip()
        if f.name in _KEY_LISTS:
            values[f.name] = parse_key_list(name, _KEY_LISTS[f.name], raw)
        elif f.type in ("int", int):
            values[f.name] = _number(name, raw, int)
        elif f.type in ("float", float):
            values[f.name] = _number(name, raw, float)
        else:
            values[f.name] = raw
    settings = Settings(**values)  # type: ignore[arg-type]
    validate(settings)
    return settings


def _number(name: str, raw: str, kind: type) -> int | float:
    try:
        return kind(raw)
    except ValueError:
        raise SettingsError(f"{name}: expected a number, got {raw!r}") from None


def validate(s: Settings) -> None:
    positive = {
        "APP_PORT": s.app_port >= 0 and s.app_port < 65536,
        "JOB_TTL_SECONDS": s.job_ttl_seconds >= 1,
        "JOB_MAX_ATTEMPTS": 1 <= s.job_max_attempts <= 100,
        "JOB_EXECUTION_TIMEOUT_SECONDS": s.job_execution_timeout_seconds >= 1,
        "MAX_PAYLOAD_BYTES": 1 <= s.max_payload_bytes <= 64 << 20,
        "HEARTBEAT_INTERVAL_SECONDS": s.heartbeat_interval_seconds > 0,
        "HEARTBEAT_TIMEOUT_SECONDS": s.heartbeat_timeout_seconds > s.heartbeat_interval_seconds,
        "LEASE_SECONDS": s.lease_seconds > s.heartbeat_interval_seconds,
        "RECONNECT_GRACE_SECONDS": s.reconnect_grace_seconds >= 0,
        "MAX_REASSIGNMENTS": s.max_reassignments >= 0,
        "RETRY_BACKOFF_BASE_SECONDS": s.retry_backoff_base_seconds >= 0,
        "RETRY_BACKOFF_MAX_SECONDS": s.retry_backoff_max_seconds >= s.retry_backoff_base_seconds,
        "SHUTDOWN_GRACE_SECONDS": s.shutdown_grace_seconds >= 0,
    }
    for name, ok in positive.items():
        if not ok:
            hint = (
                " (must exceed HEARTBEAT_INTERVAL_SECONDS)" if "HEARTBEAT" in name or "LEASE" in name else ""
            )
            raise SettingsError(f"{name}: value out of range{hint}")
    if s.sqlite_synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise SettingsError("SQLITE_SYNCHRONOUS: one of OFF, NORMAL, FULL, EXTRA")
    if s.log_format not in ("text", "json"):
        raise SettingsError("LOG_FORMAT: 'text' or 'json'")
    if not 0 <= s.metrics_port < 65536:
        raise SettingsError("METRICS_PORT: a TCP port (1-65535), or 0 for no metrics endpoint")
    if s.metrics_port and s.metrics_port == s.app_port:
        raise SettingsError("METRICS_PORT: must differ from APP_PORT")
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
        raise SettingsError("DATABASE_URL: expected sqlite:///PATH")
    names: dict[str, str] = {}
    for entry in s.api_keys:
        if entry.secret in names:
            raise SettingsError(
                f"{entry.role.upper()}_API_KEYS: the key of {entry.name!r} is also {names[entry.secret]!r}'s"
            )
        names[entry.secret] = entry.name
