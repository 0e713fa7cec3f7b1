"""Keepalive settings of the SDK's channels and of the server agree: clients never ping more often than the
server permits (a server that receives pings too often answers GOAWAY too_many_pings and drops every miner)."""

from __future__ import annotations

from aitbc.channel import KEEPALIVE_OPTIONS, SERVER_MIN_PING_INTERVAL_S

from coordinator.server import SERVER_OPTIONS


def test_clients_ping_less_often_than_the_server_permits() -> None:
    server, client = dict(SERVER_OPTIONS), dict(KEEPALIVE_OPTIONS)
    assert client["grpc.keepalive_time_ms"] > server["grpc.http2.min_ping_interval_without_data_ms"]
    assert server["grpc.http2.min_ping_interval_without_data_ms"] == SERVER_MIN_PING_INTERVAL_S * 1000
    assert (
        client["grpc.keepalive_permit_without_calls"] == 1
        and server["grpc.keepalive_permit_without_calls"] == 1
    )
    # the server pings idle miners too, to find half-open connections
    assert server["grpc.keepalive_time_ms"] <= 60_000 and server["grpc.keepalive_timeout_ms"] <= 20_000


def test_a_reconnect_storm_is_not_cancelled_by_the_pending_request_limit() -> None:
    assert dict(SERVER_OPTIONS)["grpc.server.max_pending_requests"] >= 10_000


def test_an_unanswered_ping_closes_the_connection_on_both_sides() -> None:
    """grpcio closes a connection whose ping goes unanswered after ping_timeout_ms (keepalive_timeout_ms alone
    does not): both sides set it to their keepalive timeout."""
    for options in (dict(SERVER_OPTIONS), dict(KEEPALIVE_OPTIONS)):
        assert options["grpc.http2.ping_timeout_ms"] == options["grpc.keepalive_timeout_ms"]
