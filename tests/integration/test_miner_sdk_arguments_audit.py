"""The SDK miner's public surface as an integrator meets it: `Miner(...)`'s arguments and `probe_capabilities(...)`
(helper 144's audit, against docs/miners.md).

A wrong argument is refused at once, by a TypeError or ValueError naming it, not found minutes later. Before this
round many were taken as given: `capabilities.slots` over 1024 had the coordinator refuse the hello
(`INVALID_ARGUMENT`, raised from run()); `max_result_bytes=0` failed every job `RESULT_TOO_LARGE`, for good; a
`channel_options` value open_channel refuses, with a `channel` of the caller's, raised from run() only when a stale
connection was replaced (the miner ended then); a signer given as its hex seed raised AttributeError from run();
`probe_capabilities(models="llama")` served five models, "l", "l", "a", "m", "a"; negative, zero, NaN or infinite
backoffs, a negative or NaN drain_ack_timeout_s, and values of the wrong type went through (a string of seconds
raised from deep in a timer, or compared as "'>' not supported").

What a runner returns is held to docs/miners.md's "Results": anything a result message cannot carry fails its job
(`INVALID_RESULT`, for good), the miner goes on and its slot is free.
"""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
from aitbc.coordinator.v1 import miner_service_pb2
from aitbc.miner import Miner, Outcome, echo_runner, job_input, probe_capabilities
from aitbc.receipts import Signer
from coord_support import COMPLETED, FAILED, Harness, eventually, miner_key, sdk_miner

NAN, INF = math.nan, math.inf
ADDRESS = "127.0.0.1:1"  # (nothing connects: a Miner made and checked only)


def make(**options: Any) -> Miner:
    defaults = {
        "address": ADDRESS,
        "api_key": "key",
        "capabilities": miner_service_pb2.MinerCapabilities(slots=1),
    }
    return Miner(**{**defaults, **options})


BAD_MINER_ARGUMENTS: list[tuple[str, Any]] = [
    ("address", None),
    ("address", ""),
    ("api_key", None),
    ("runner", None),
    ("runner", "echo"),
    ("capabilities", {"slots": 2}),
    ("capabilities", miner_service_pb2.MinerCapabilities(slots=1025)),
    ("signer", "ab" * 32),
    ("backoff_base_s", 0),
    ("backoff_base_s", -1.0),
    ("backoff_base_s", NAN),
    ("backoff_base_s", INF),
    ("backoff_base_s", "0.2"),
    ("backoff_max_s", 0.0),
    ("backoff_max_s", NAN),
    ("backoff_max_s", INF),
    ("backoff_max_s", None),
    ("hmac_secret", 5),
    ("tls_ca", 5),
    ("tls_cert", b"-----BEGIN CERTIFICATE-----"),  # (without tls_key)
    ("channel", ADDRESS),
    ("drain_ack_timeout_s", -1.0),
    ("drain_ack_timeout_s", NAN),
    ("drain_ack_timeout_s", "60"),
    ("unreachable_timeout_s", "10"),
    ("max_result_bytes", 0),
    ("max_result_bytes", -1),
    ("max_result_bytes", 1.5),
    ("max_result_bytes", "8388608"),
    ("stuck_timeout_s", "60"),
    ("stuck_timeout_s", None),
    ("poll_wait_s", "20"),
    ("poll_wait_s", True),
    ("welcome_timeout_s", "20"),
    ("welcome_timeout_s", None),
    ("channel_options", None),
    ("channel_options", [("grpc.keepalive_time_ms", 20_000)]),
    ("channel_options", {"keepalive_s": 3}),
    ("channel_options", {"keepalive_s": NAN}),
    ("channel_options", {"keepalive_s": INF}),
    ("channel_options", {"keepalive_s": "20"}),
    ("channel_options", {"keepalive_timeout_s": 0}),
    ("channel_options", {"keepalive_timeout_s": NAN}),
    ("channel_options", {"reconnect_max_s": 0.5}),
    ("channel_options", {"reconnect_max_s": INF}),
    ("channel_options", {"tls": "no"}),
    ("channel_options", {"tls_server_name": 5}),
]


@pytest.mark.parametrize(("name", "value"), BAD_MINER_ARGUMENTS)
def test_a_wrong_miner_argument_is_refused_at_once_naming_it(name: str, value: Any) -> None:
    with pytest.raises((TypeError, ValueError), match=re.escape(name)):
        make(**{name: value})


def test_the_documented_and_default_values_are_taken() -> None:
    make()
    make(capabilities=miner_service_pb2.MinerCapabilities(slots=0))  # (0 means 1)
    make(capabilities=miner_service_pb2.MinerCapabilities(slots=1024))
    make(runner=lambda job: echo_runner(job), signer=Signer.generate(), hmac_secret=b"s", tls_ca=b"pem")
    make(backoff_base_s=1, backoff_max_s=60, drain_ack_timeout_s=0, unreachable_timeout_s=INF)
    make(
        stuck_timeout_s=INF, max_result_bytes=32 << 20, transport="poll", poll_wait_s=60, welcome_timeout_s=1
    )
    make(tls_cert="cert.pem", tls_key="key.pem")  # (read when the channel is opened)
    make(channel_options={"keepalive_s": 5.5, "keepalive_timeout_s": 1, "reconnect_max_s": 1, "tls": True,
                          "tls_server_name": "coord.example.org"})  # fmt: skip


BAD_PROBES: list[tuple[str, dict[str, Any]]] = [
    ("slots", {"slots": -1}),
    ("slots", {"slots": 1025}),
    ("slots", {"slots": 1.5}),
    ("slots", {"slots": "2"}),
    ("price", {"price": 3.5}),
    ("region", {"region": None}),
    ("cuda_version", {"cuda_version": 12.1}),
    ("models", {"models": "llama"}),
    ("models", {"models": ["llama", 7]}),
    ("labels", {"labels": {"zone": 1}}),
    ("labels", {"labels": ["zone=a"]}),
    ("gpus", {"gpus": ["A100:80"]}),
    ("gpus", {"gpus": [("A100", -1)]}),
    ("gpus", {"gpus": [("A100", "80")]}),
]


@pytest.mark.parametrize(("name", "arguments"), BAD_PROBES)
def test_a_wrong_capability_is_refused_at_once_naming_it(name: str, arguments: dict[str, Any]) -> None:
    with pytest.raises((TypeError, ValueError), match=re.escape(name)):
        probe_capabilities(**arguments)


def test_capabilities_as_the_cli_gives_them_are_taken() -> None:
    caps = probe_capabilities(2, price="0.5", region="eu-west", models=["llama"], cuda_version="12.1",
                              labels={"zone": "a"}, gpus=[("A100", 80)])  # fmt: skip
    assert (caps.slots, caps.price, list(caps.models), dict(caps.labels)) == (
        2,
        "0.5",
        ["llama"],
        {"zone": "a"},
    )
    assert [(g.model, g.memory_gb) for g in caps.gpus] == [("A100", 80)]
    assert probe_capabilities(0).slots == 0 and probe_capabilities(1024).slots == 1024


async def test_a_bad_channel_option_with_a_channel_of_ones_own_is_refused_before_the_miner_runs(
    coord: Harness,
) -> None:
    """With a channel of the caller's, the miner opens a connection of its own only to replace a stale one: a
    channel_options value open_channel refuses raised from run() then, ending the miner hours into its work."""
    channel = coord.channel()
    with pytest.raises(ValueError, match="keepalive_s"):
        Miner(coord.address, miner_key("miner-00"), channel=channel, capabilities=probe_capabilities(1),
              channel_options={"keepalive_s": 3})  # fmt: skip


async def test_slots_over_the_contracts_bound_are_refused_by_the_sdk_not_the_coordinators_hello(
    coord: Harness,
) -> None:
    """Before, the miner connected and the coordinator refused its hello: run() raised INVALID_ARGUMENT."""
    caps = miner_service_pb2.MinerCapabilities(slots=1025)
    with pytest.raises(ValueError, match=r"capabilities\.slots"):
        Miner(coord.address, miner_key("miner-00"), capabilities=caps, own_connection=True)
    # the bound itself is taken, by the SDK and by the coordinator
    miner = sdk_miner(coord.address, echo_runner, slots=1024)
    task = coord.run_miner(miner)
    await eventually(lambda: miner.connects == 1 or task.done(), what="the miner's welcome")
    assert not task.done(), f"miner.run() ended: {task.exception()!r}"


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


async def _agen() -> Any:
    yield 1


RESULTS: dict[str, Any] = {  # what a runner returns that no result message carries
    "a set": lambda: {1, 2},
    "a dict with int keys": lambda: {1: "a"},
    "an int past a double": lambda: {"n": 10**400},
    "None": lambda: None,
    "a generator": lambda: (i for i in range(2)),
    "an async generator": _agen,
    "a list": lambda: [1, 2],
    "a str": lambda: "text",
    "an object": lambda: {"a": object()},
    "too deep": lambda: nested(200),
}


@pytest.mark.coordinator(lease_seconds=30.0)
async def test_a_runner_returning_what_no_result_carries_fails_its_job_not_the_miner(coord: Harness) -> None:
    async def runner(job: Any) -> Any:
        kind = job_input(job)["kind"]
        if kind == "bytes":  # (bytes for a JSON job: the result's bytes)
            return b"raw"
        if kind == "outcome":
            return Outcome({"ok": True}, units="2", unit_type="jobs")
        return RESULTS[kind]()

    alice = coord.client("alice")
    miner = sdk_miner(coord.address, runner)  # one slot: a slot wedged would hold every later job
    task = coord.run_miner(miner)
    await eventually(lambda: miner.connects == 1)
    for kind in RESULTS:
        job = await alice.submit({"kind": kind}, max_attempts=3)
        done = await coord.finished(alice, job.job_id, within=10.0)
        assert (done.state, done.terminal_reason) == (FAILED, "INVALID_RESULT"), (kind, done.terminal_message)
        assert not task.done(), f"miner.run() ended: {task.exception()!r}"
    for kind in ("bytes", "outcome"):
        job = await alice.submit({"kind": kind}, max_attempts=1)
        done = await coord.finished(alice, job.job_id, within=10.0)
        assert done.state == COMPLETED, (kind, done.terminal_reason, done.terminal_message)
    result = await alice.result(job.job_id)
    assert (result.result.units, result.result.unit_type) == ("2", "jobs")
    assert not miner.running and miner.connects == 1


async def test_run_refuses_nothing_the_constructor_took(coord: Harness) -> None:
    """A miner made with every documented setting set runs (the checks are the constructor's alone)."""
    miner = Miner(coord.address, miner_key("miner-00"), capabilities=probe_capabilities(2, price="0.5"),
                  signer=Signer.generate(), backoff_base_s=0.05, backoff_max_s=1, drain_ack_timeout_s=0,
                  unreachable_timeout_s=INF, stuck_timeout_s=INF, welcome_timeout_s=5, own_connection=True,
                  channel_options={"keepalive_s": 6, "keepalive_timeout_s": 2, "reconnect_max_s": 1})  # fmt: skip
    task = coord.run_miner(miner)
    await eventually(lambda: miner.connects == 1 or task.done(), what="the miner's welcome")
    assert not task.done(), f"miner.run() ended: {task.exception()!r}"
    alice = coord.client("alice")
    job = await alice.submit({"a": 1}, max_attempts=1)
    assert (await coord.finished(alice, job.job_id)).state == COMPLETED


@pytest.mark.coordinator(lease_seconds=30.0)
async def test_a_runners_exit_or_own_cancellation_fails_its_job_not_the_miner(coord: Harness) -> None:
    """docs/miners.md: `sys.exit()` in a runner fails the job, not the miner. An async runner's SystemExit ended
    miner.run() (the process, under `aitbc miner run`); a CancelledError the runner raised itself (nothing canceled
    the job) left the job running, its slot taken and listed in heartbeats until its execution timeout (an hour by
    default). Units that are not a str failed as a retryable RUNNER_ERROR on every miner in turn, where no miner's
    result could be taken (INVALID_RESULT, for good); a bytearray, bytes by another name, failed INVALID_RESULT."""
    import asyncio
    import sys

    async def runner(job: Any) -> Any:
        kind = job_input(job)["kind"]
        if kind == "exit":
            sys.exit(3)
        if kind == "cancelled":
            raise asyncio.CancelledError
        if kind == "int units":
            return Outcome({"ok": True}, units=1)  # type: ignore[arg-type]
        if kind == "bytearray":
            return bytearray(b"raw")
        return {"ok": kind}

    alice = coord.client("alice")
    miner = sdk_miner(coord.address, runner)  # one slot: a slot wedged would hold every later job
    task = coord.run_miner(miner)
    await eventually(lambda: miner.connects == 1)
    for kind in ("exit", "cancelled"):
        job = await alice.submit({"kind": kind}, max_attempts=1)
        done = await coord.finished(alice, job.job_id, within=10.0)
        assert (done.state, done.terminal_reason) == (FAILED, "ATTEMPTS_EXHAUSTED"), kind
        assert done.terminal_message.startswith("1 attempts spent; last: RUNNER_ERROR "), (
            done.terminal_message
        )
        assert not task.done(), f"miner.run() ended: {task.exception()!r}"
    job = await alice.submit({"kind": "int units"}, max_attempts=3)
    done = await coord.finished(alice, job.job_id, within=10.0)
    assert (done.state, done.terminal_reason, done.attempt) == (FAILED, "INVALID_RESULT", 1), (
        done.terminal_message
    )
    job = await alice.submit({"kind": "bytearray"}, max_attempts=1)
    assert (await coord.finished(alice, job.job_id, within=10.0)).state == COMPLETED
    assert (await alice.result(job.job_id)).result.result_bytes == b"raw"
    job = await alice.submit({"kind": "after"}, max_attempts=1)  # the one slot is free
    assert (await coord.finished(alice, job.job_id, within=10.0)).state == COMPLETED
    assert not task.done() and not miner.running and miner.connects == 1


def test_what_worked_before_the_checks_still_does(tmp_path: Any) -> None:
    """The argument checks refused forms that worked (the review of the audit): TLS files as a pathlib.Path (as
    Client takes them), a signer of one's own with the Signer's sign and public_key (a hardware key's), labels as
    (key, value) pairs, a Fraction of seconds, and channel_options tls=1."""
    from fractions import Fraction
    from pathlib import Path

    pem = Path(tmp_path) / "ca.pem"
    make(tls_ca=pem, tls_cert=Path("c.pem"), tls_key=Path("k.pem"))

    class OwnSigner:
        def __init__(self) -> None:
            self._signer = Signer.generate()
            self.public_key, self.key_id = self._signer.public_key, self._signer.key_id

        def sign(self, message: bytes) -> bytes:
            return self._signer.sign(message)

    make(signer=OwnSigner())
    assert dict(probe_capabilities(1, labels=[("tier", "gold")]).labels) == {"tier": "gold"}
    make(backoff_base_s=Fraction(1, 2), channel_options={"tls": 1})
    with pytest.raises(TypeError, match="signer"):
        make(signer=b"\x01" * 32)
