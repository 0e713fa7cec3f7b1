"""The Python SDK's Client held to what its documentation promises an application developer (helper-140's audit):
close() ends the calls in flight with CANCELLED (an asyncio cancellation of a task nobody cancelled leaked out),
a payload or option of the wrong kind is a TypeError or ValueError naming it at the call (was an
AttributeError, OverflowError or "bad argument type for built-in operation" from inside protobuf, or a
60606060... seconds TTL), constraints=None is no constraints (as quote takes it), and an infinite deadline is
none (a call with timeout_s=math.inf failed at once with DEADLINE_EXCEEDED)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import grpc
import pytest
from aitbc.client import Client
from coord_support import CLIENT_KEYS, QUEUED, Harness, eventually

# A closed port: the calls below must fail before anything is sent.
NOWHERE = "127.0.0.1:9"


def watching(coord: Harness) -> int:
    """WatchJob streams the coordinator holds open."""
    assert coord.coordinator is not None
    return sum(len(queues) for queues in coord.coordinator.scheduler.watchers.values())


IN_FLIGHT: dict[str, Callable[[Client, str], Awaitable[Any]]] = {
    "result(wait=True)": lambda client, job_id: client.result(job_id, wait=True),
    "wait()": lambda client, job_id: client.wait(job_id),
    "wait(timeout_s)": lambda client, job_id: client.wait(job_id, timeout_s=60),
}


@pytest.mark.parametrize("call", IN_FLIGHT)
async def test_close_ends_a_call_in_flight_with_cancelled_not_an_asyncio_cancellation(
    coord: Harness, call: str
) -> None:
    """README: "close() ends the calls in flight and those waiting to try again with CANCELLED". A call in
    flight raised asyncio.CancelledError instead: the application's task looked cancelled though nobody
    cancelled it (`except grpc.aio.AioRpcError` and `except Exception` missed it; a TaskGroup took it as its
    own cancellation)."""
    client = Client(coord.address, CLIENT_KEYS["alice"])
    job = await client.submit({"n": 1})  # no miner: it stays QUEUED, the call waits
    task = asyncio.create_task(IN_FLIGHT[call](client, job.job_id))
    if call.startswith("wait"):
        await eventually(lambda: watching(coord) == 1, what="the watch open")
    else:
        await asyncio.sleep(0.3)
    assert not task.done()
    await client.close()
    with pytest.raises(grpc.aio.AioRpcError) as closed:
        await asyncio.wait_for(asyncio.shield(task), 10)
    assert closed.value.code() == grpc.StatusCode.CANCELLED
    assert not task.cancelled()


async def test_a_watch_in_flight_ends_cancelled_when_the_client_is_closed(coord: Harness) -> None:
    client = Client(coord.address, CLIENT_KEYS["alice"])
    job = await client.submit({"n": 1})
    seen: list[int] = []

    async def follow() -> None:
        async for update in client.watch(job.job_id):
            seen.append(update.sequence)

    task = asyncio.create_task(follow())
    await eventually(lambda: seen, what="the first update")
    await client.close()
    with pytest.raises(grpc.aio.AioRpcError) as closed:
        await asyncio.wait_for(asyncio.shield(task), 10)
    assert closed.value.code() == grpc.StatusCode.CANCELLED and not task.cancelled()


async def test_the_applications_own_cancel_and_timeouts_stay_what_they_were(coord: Harness) -> None:
    """Not changed by the above: a task the application cancels ends cancelled, a timeout is a TimeoutError."""
    client = coord.client()
    job = await client.submit({"n": 1})
    task = asyncio.create_task(client.result(job.job_id, wait=True))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await client.result(job.job_id, wait=True)
    with pytest.raises(TimeoutError, match=r"not terminal after 0\.3 s"):
        await client.wait(job.job_id, timeout_s=0.3)
    assert (await client.get(job.job_id)).state == QUEUED  # the client still works


@pytest.mark.parametrize(
    ("payload", "error", "says"),
    [
        ("hello", TypeError, "payload: a dict (a JSON object) or bytes, not str"),
        (None, TypeError, "payload: a dict (a JSON object) or bytes, not NoneType"),
        ([1, 2], TypeError, "payload: a dict (a JSON object) or bytes, not list"),
        ({"a": {1, 2}}, TypeError, "payload: $.a: a set is not JSON"),
        ({"a": [1, object()]}, TypeError, "payload: $.a[1]: a object is not JSON"),
        ({1: "a"}, TypeError, "payload: $: a key of type int (JSON keys are strings)"),
        ({"a": {"b": 2**2000}}, ValueError, "payload: $.a.b: an integer too large for a JSON number"),
        ({"a": {"b": type("Mapped", (), {})()}}, TypeError, "payload: $.a.b: a Mapped is not JSON"),
    ],
)  # fmt: skip
async def test_a_payload_that_is_not_json_is_refused_at_the_call_naming_what(
    payload: Any, error: type[Exception], says: str
) -> None:
    """Each was an AttributeError ('str' object has no attribute 'items'), a ValueError('Unexpected type'), a
    TypeError('bad argument type for built-in operation') or an OverflowError from inside protobuf."""
    async with Client(NOWHERE, "k") as client:
        with pytest.raises(error) as refused:
            await client.submit(payload)
        assert str(refused.value).startswith(says), refused.value
        with pytest.raises(error):
            await client.submit_many([{"ok": 1}, payload])


@pytest.mark.parametrize(
    ("option", "value", "error", "says"),
    [
        ("ttl_s", "60", TypeError, "ttl_s: a number of seconds, not str"),
        ("ttl_s", True, TypeError, "ttl_s: a number of seconds, not bool"),
        ("ttl_s", math.nan, ValueError, "ttl_s: a finite number of seconds, not nan"),
        ("execution_timeout_s", math.inf, ValueError, "execution_timeout_s: a finite number of seconds, not inf"),
    ],
)  # fmt: skip
async def test_a_duration_option_of_the_wrong_kind_is_refused_naming_it(
    option: str, value: Any, error: type[Exception], says: str
) -> None:
    """ttl_s="60" was multiplied as a string: 'Value out of range: 606060...' (a 2,000-digit number)."""
    async with Client(NOWHERE, "k") as client:
        with pytest.raises(error, match=f"^{says}"):
            await client.submit({}, **{option: value})


async def test_bytes_like_payloads_and_no_constraints(coord: Harness) -> None:
    """A bytearray is bytes (it raised AttributeError); constraints=None is none, as quote(None) takes it (was
    'argument after ** must be a mapping, not NoneType')."""
    client = coord.client()
    job = await client.submit(bytearray(b"raw"), constraints=None)
    assert job.payload_bytes == b"raw" and job.constraints.region == ""
    [many] = await client.submit_many([memoryview(b"mv")], constraints=None)
    assert (await client.get(many.job_id)).payload_bytes == b"mv"  # (SubmitJobs answers jobs without input)


async def test_an_infinite_deadline_is_no_deadline(coord: Harness) -> None:
    """timeout_s=math.inf (or result's deadline_s) made every call fail at once with a bare DEADLINE_EXCEEDED;
    a NaN is refused (it too failed at once)."""
    job = await coord.client().submit({"n": 1})
    client = Client(coord.address, CLIENT_KEYS["alice"], channel=coord.channel(), timeout_s=math.inf)
    assert (await client.get(job.job_id)).job_id == job.job_id
    assert len((await client.list()).jobs) == 1
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):  # the wait goes on (no deadline), until the application's own
            await coord.client().result(job.job_id, wait=True, deadline_s=math.inf)
    with pytest.raises(ValueError, match="timeout_s: a number of seconds or None, not nan"):
        await Client(coord.address, CLIENT_KEYS["alice"], channel=coord.channel(), timeout_s=math.nan).get(
            job.job_id
        )
    with pytest.raises(ValueError, match="timeout_s: a number of seconds or None, not nan"):
        await client.wait(job.job_id, timeout_s=math.nan)  # (was a TimeoutError at once: "not seen in nan s")


async def test_a_max_price_is_a_decimal_as_units_are(coord: Harness) -> None:
    """constraints={"max_price": 4.0} was protobuf's "bad argument type for built-in operation"; an int or a
    Decimal (as quote's units) were refused the same way."""
    client = coord.client()
    job = await client.submit({}, constraints={"max_price": Decimal("2.5")})
    assert job.constraints.max_price == "2.5"
    assert (await client.submit({}, constraints={"max_price": 4})).constraints.max_price == "4"
    assert (await client.quote({"max_price": Decimal("4")}, 10)).eligible_miners == 0
    for call in (
        lambda: client.submit({}, constraints={"max_price": 4.0}),
        lambda: client.quote({"max_price": 0.1}),
    ):
        with pytest.raises(
            TypeError, match=r"^constraints\.max_price: a decimal string, int or Decimal, not float"
        ):
            await call()


def test_a_fraction_of_seconds_is_taken_as_before() -> None:
    from fractions import Fraction

    request = Client.request({"a": 1}, ttl_s=Fraction(3, 2), execution_timeout_s=Decimal("2.5"))
    assert (request.ttl.ToMilliseconds(), request.execution_timeout.ToMilliseconds()) == (1500, 2500)


def test_a_models_constraint_given_as_one_string_is_refused_not_split_into_letters() -> None:
    """Constraints(models="llama") is the models "l", "l", "a", "m", "a": a job no miner would ever match."""
    with pytest.raises(TypeError, match=r"constraints\.models"):
        Client.request({"a": 1}, constraints={"models": "llama"})
    assert list(Client.request({"a": 1}, constraints={"models": ["llama"]}).constraints.models) == ["llama"]
