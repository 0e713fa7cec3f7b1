"""Channels to the coordinator with keepalive settings the server accepts (no too_many_pings)."""

from __future__ import annotations

import grpc

# The server permits client pings every 5 s or more; 20 s here leaves a wide margin.
KEEPALIVE_OPTIONS = [
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 8 << 20),
    ("grpc.max_send_message_length", 8 << 20),
]


def open_channel(address: str, *, own_connection: bool = False) -> grpc.aio.Channel:
    """An insecure channel to address. own_connection: do not share a TCP connection with other channels."""
    options = list(KEEPALIVE_OPTIONS)
    if own_connection:
        options.append(("grpc.use_local_subchannel_pool", 1))
    return grpc.aio.insecure_channel(address, options=options)


def auth_metadata(api_key: str) -> tuple[tuple[str, str], ...]:
    return (("x-api-key", api_key),)
