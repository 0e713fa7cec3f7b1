"""Channels to the coordinator with keepalive settings the server accepts (no too_many_pings)."""

from __future__ import annotations

import argparse
import math
import numbers
from typing import Any

import grpc

# The server permits client pings every 5 s or more; 20 s here leaves a wide margin.
SERVER_MIN_PING_INTERVAL_S = 5.0
# An unanswered ping closes the connection after grpc.http2.ping_timeout_ms: with grpcio 1.85,
# keepalive_timeout_ms alone leaves a silent (half-open) connection open indefinitely.
KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.ping_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 8 << 20),
    ("grpc.max_send_message_length", 8 << 20),
]
# How often a channel whose coordinator is unreachable tries to connect again: gRPC's default backoff
# (1 s growing 1.6x up to 120 s) leaves a miner idle for minutes after a restart. Capped here at a few
# seconds: one TCP connect per channel, shared by every call waiting on it (miners' streams wait for it).
RECONNECT_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 1_000),
    ("grpc.max_reconnect_backoff_ms", 5_000),
]


def open_channel(
    address: str,
    *,
    own_connection: bool = False,
    tls: bool = False,
    tls_ca: bytes | str | None = None,
    tls_cert: bytes | str | None = None,
    tls_key: bytes | str | None = None,
    tls_server_name: str | None = None,
    keepalive_s: float = 20.0,
    keepalive_timeout_s: float = 10.0,
    reconnect_max_s: float = 5.0,
) -> grpc.aio.Channel:
    """A channel to address. own_connection: do not share a TCP connection with other channels.

    Every keepalive_s the channel pings the coordinator; a ping unanswered for keepalive_timeout_s ends the
    connection (its calls fail UNAVAILABLE; a miner reconnects). keepalive_s must stay above the server's
    minimum of 5 s, or the server answers too_many_pings.

    Plaintext unless tls is set or a CA or client certificate is given: then TLS, trusting tls_ca (PEM bytes
    or a file path; the system roots when omitted), presenting tls_cert/tls_key for mutual TLS.
    tls_server_name overrides the name the server certificate is checked against.
    While the coordinator is unreachable the channel tries to connect again after 1 s, growing to at most
    reconnect_max_s (with gRPC's jitter): calls made with wait_for_ready wait for that, not failing.
    """
    check_channel_settings(keepalive_s=keepalive_s, keepalive_timeout_s=keepalive_timeout_s,
                           reconnect_max_s=reconnect_max_s, tls=tls, tls_server_name=tls_server_name)  # fmt: skip
    timeout_ms = round(keepalive_timeout_s * 1000)
    chosen = {"grpc.keepalive_time_ms": round(keepalive_s * 1000), "grpc.keepalive_timeout_ms": timeout_ms,
              "grpc.http2.ping_timeout_ms": timeout_ms,
              "grpc.max_reconnect_backoff_ms": round(reconnect_max_s * 1000)}  # fmt: skip
    options = [(k, chosen.get(k, v)) for k, v in KEEPALIVE_OPTIONS + RECONNECT_OPTIONS]
    if own_connection:
        options.append(("grpc.use_local_subchannel_pool", 1))
    if not (tls or tls_ca or tls_cert):
        return grpc.aio.insecure_channel(address, options=options)
    if bool(tls_cert) != bool(tls_key):
        raise ValueError("tls_cert and tls_key go together")
    if tls_server_name:
        options.append(("grpc.ssl_target_name_override", tls_server_name))
    credentials = grpc.ssl_channel_credentials(_pem(tls_ca), _pem(tls_key), _pem(tls_cert))
    return grpc.aio.secure_channel(address, credentials, options=options)


def check_channel_settings(**settings: Any) -> None:
    """open_channel's settings among these (keepalive_s, keepalive_timeout_s, reconnect_max_s, tls,
    tls_server_name) as it takes them, or a TypeError or ValueError naming the first that is not. Also what
    Miner(channel_options=...) is held to when it is made: a miner opens channels itself, hours later (NaN or
    infinity passed a comparison, then failed converting to milliseconds)."""
    least_ping = SERVER_MIN_PING_INTERVAL_S
    rules = {  # name -> (what it must be, the test)
        "keepalive_s": (f"more than {least_ping:g} (the coordinator's least ping interval) and finite",
                        lambda x: least_ping < x < math.inf),
        "keepalive_timeout_s": ("more than 0 and finite", lambda x: 0 < x < math.inf),
        "reconnect_max_s": ("at least 1 (the first reconnect waits 1 s) and finite", lambda x: 1 <= x < math.inf),
    }  # fmt: skip
    for name, value in settings.items():
        if name in rules:
            rule, ok = rules[name]
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"{name} must be a number of seconds, {rule}, not {value!r}")
            if not ok(value):  # (NaN fails every comparison)
                raise ValueError(f"{name} must be {rule}, not {value!r}")
        elif name == "tls" and not isinstance(value, bool | int):  # (1 and 0 taken as ever; "no" would be on)
            raise TypeError(f"tls must be a bool, not {value!r}")
        elif name == "tls_server_name" and not isinstance(value, str | None):
            raise TypeError(f"tls_server_name must be a str, not {value!r}")
        elif name not in ("tls", "tls_server_name"):
            raise TypeError(f"open_channel takes no setting {name!r}")


def _pem(value: bytes | str | None) -> bytes | None:
    """PEM bytes as given, or read from a file path."""
    if value is None or value == "" or isinstance(value, bytes):
        return value or None
    with open(value, "rb") as f:
        return f.read()


# The CLI's flags for open_channel's settings: the parsed flag's name -> open_channel's keyword.
CHANNEL_FLAGS = {"tls": "tls", "tls_server_name": "tls_server_name", "keepalive": "keepalive_s",
                 "keepalive_timeout": "keepalive_timeout_s", "reconnect_max": "reconnect_max_s"}  # fmt: skip


def channel_options(args: argparse.Namespace) -> dict[str, Any]:
    """open_channel's keyword arguments set by parsed CLI flags (--tls, --tls-server-name, --keepalive,
    --keepalive-timeout, --reconnect-max): what Miner(channel_options=...) takes. Flags not given are left
    out, to open_channel's defaults."""
    given = ((keyword, getattr(args, flag, None)) for flag, keyword in CHANNEL_FLAGS.items())
    return {keyword: value for keyword, value in given if value}


def connection_options(args: argparse.Namespace) -> dict[str, Any]:
    """Client, AdminClient and Miner keyword arguments from parsed CLI flags: hmac_secret, the tls_* files and
    channel_options (a miner opens its connections itself: its first, and each one replacing a stale one)."""
    files = {
        name: getattr(args, name, None) or None for name in ("hmac_secret", "tls_ca", "tls_cert", "tls_key")
    }
    return {**files, "channel_options": channel_options(args)}


def auth_metadata(api_key: str) -> tuple[tuple[str, str], ...]:
    return (("x-api-key", api_key),)
