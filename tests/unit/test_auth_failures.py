"""The per-peer budget of failed authentications (coordinator/security/peers.py): which peers share a
budget, how the budget is spent and refilled, and that the map of peers stays bounded. Time is passed in
explicitly, so nothing here depends on how fast the machine is."""

from __future__ import annotations

import pytest

from coordinator.config import Settings, SettingsError, load_settings, parse_rate_limits
from coordinator.security.interceptor import Policy
from coordinator.security.limits import TokenBucket
from coordinator.security.peers import AuthFailures, peer_key


@pytest.mark.parametrize(
    ("peer", "key"),
    [
        ("ipv4:127.0.0.1:49538", "127.0.0.1"),
        ("ipv4:203.0.113.7:1", "203.0.113.7"),
        ("ipv6:%5B::1%5D:42680", "::/64"),  # how gRPC 1.5x+ writes it
        ("ipv6:[::1]:42680", "::/64"),  # older versions
        ("ipv6:%5B2001:db8:1:2:aaaa::1%5D:443", "2001:db8:1:2::/64"),
        ("ipv6:%5B2001:db8:1:2:ffff:ffff:ffff:ffff%5D:443", "2001:db8:1:2::/64"),  # same /64: one budget
        ("ipv6:%5B2001:db8:1:3::1%5D:443", "2001:db8:1:3::/64"),  # next /64: another
        ("ipv6:%5B::ffff:198.51.100.9%5D:5000", "198.51.100.9"),  # dual-stack listener: the IPv4 peer
        ("ipv6:%5Bfe80::1%25eth0%5D:5000", "fe80::/64"),  # a zone id is not part of the address
        ("unix:", "unix"),  # unnamed client sockets: the local host, one budget
        ("unix:/run/aitbc.sock", "unix"),
        ("unix-abstract:x", "unix-abstract"),
        ("ipv4:not-an-address:1", "ipv4:?"),
        ("", "unknown"),
    ],
)
def test_peer_key(peer: str, key: str) -> None:
    assert peer_key(peer) == key


def test_the_port_never_matters() -> None:
    assert peer_key("ipv4:192.0.2.1:1000") == peer_key("ipv4:192.0.2.1:2000")
    assert peer_key("ipv6:%5B2001:db8::5%5D:1000") == peer_key("ipv6:%5B2001:db8::5%5D:2000")


def test_due_peeks_without_taking() -> None:
    bucket = TokenBucket(1.0, 1.0, now=0.0)
    assert bucket.due(0.0) == 0.0 and bucket.due(0.0) == 0.0  # a peek, twice: still one token
    assert bucket.take(0.0) == 0.0
    assert bucket.due(0.25) == pytest.approx(0.75)
    assert bucket.due(0.5) == pytest.approx(0.5)  # the peek at 0.25 did not move the refill
    assert not bucket.full(0.5) and bucket.full(1.0)


def test_a_peer_is_refused_after_its_burst_and_refills_at_the_rate() -> None:
    failures = AuthFailures(rate=2.0, burst=3.0, capacity=1000)
    assert failures.wait("a", 0.0) == 0.0  # never failed: nothing to wait for, nothing stored
    assert len(failures) == 0
    for _ in range(3):
        assert failures.wait("a", 0.0) == 0.0
        failures.failed("a", 0.0)
    assert failures.wait("a", 0.0) == pytest.approx(0.5)  # one token at 2/s
    assert failures.wait("a", 0.3) == pytest.approx(0.2)  # asking again does not extend the wait
    assert failures.wait("b", 0.0) == 0.0  # another peer has its own budget
    assert failures.wait("a", 0.5) == 0.0
    failures.failed("a", 0.5)
    assert failures.wait("a", 0.5) == pytest.approx(0.5)


def test_the_map_stays_bounded_under_many_peers() -> None:
    failures = AuthFailures(rate=1.0, burst=5.0, capacity=1000)
    for i in range(50_000):  # 50,000 addresses failing within one second: all live, none refilled
        failures.failed(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", now=i / 50_000)
    assert len(failures) == 1000
    # the most recent failures are the ones remembered
    assert "10.0.195.79" in failures.buckets and "10.0.0.0" not in failures.buckets


def test_refilled_peers_are_forgotten_first_and_a_blocked_one_is_kept() -> None:
    failures = AuthFailures(rate=1.0, burst=2.0, capacity=3)
    failures.failed("old-1", 0.0)
    failures.failed("old-2", 0.0)
    for _ in range(2):
        failures.failed("blocked", 10.0)
    assert failures.wait("blocked", 10.0) > 0
    # at 10.0, old-1 and old-2 have refilled (a full bucket is the same as none): they make room, so the
    # peer that is over budget is not forgotten while three newcomers arrive
    failures.failed("new-1", 10.0)
    failures.failed("new-2", 10.0)
    assert set(failures.buckets) == {"blocked", "new-1", "new-2"}
    assert failures.wait("blocked", 10.0) > 0
    # with no refilled peer left, the least recently failing one goes
    failures.failed("new-3", 10.0)
    assert "blocked" not in failures.buckets and len(failures) == 3


def test_settings_default_off_and_cache_size() -> None:
    assert parse_rate_limits("")["auth_failures"] == (10.0, 50.0)
    assert parse_rate_limits("auth_failures=off")["auth_failures"] is None
    assert parse_rate_limits("auth_failures=60/m:burst=5")["auth_failures"] == (1.0, 5.0)
    assert parse_rate_limits("read=off")["auth_failures"] == (10.0, 50.0)  # other groups leave it alone
    with pytest.raises(SettingsError):
        parse_rate_limits("auth_failures=0/s")

    policy = Policy.from_settings(Settings())
    assert policy.auth_failure_rate == (10.0, 50.0) and policy.auth_failure_peers == 100_000
    assert Policy().auth_failure_rate == policy.auth_failure_rate  # the dataclass mirrors the settings

    env = {"RATE_LIMITS": "auth_failures=5/s:burst=20", "AUTH_FAILURE_PEER_CACHE_SIZE": "5000"}
    policy = Policy.from_settings(load_settings(env, env_file=None))
    assert policy.auth_failure_rate == (5.0, 20.0) and policy.auth_failure_peers == 5000
    off = Policy.from_settings(load_settings({"RATE_LIMITS": "auth_failures=off"}, env_file=None))
    assert off.auth_failure_rate is None
    with pytest.raises(SettingsError, match="AUTH_FAILURE_PEER_CACHE_SIZE"):
        load_settings({"AUTH_FAILURE_PEER_CACHE_SIZE": "10"}, env_file=None)
