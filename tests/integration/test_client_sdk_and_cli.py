"""The Python SDK's Client and the `aitbc` CLI as an integrator meets them (review round 10, helper-32)."""

from __future__ import annotations

import asyncio

import pytest
from aitbc.cli import main
from coord_support import CLIENT_KEYS, Harness, eventually


async def test_an_empty_object_is_a_payload(coord: Harness) -> None:
    """Client.request filled the Struct with update(): for {} nothing was set, the oneof stayed empty, and the
    coordinator refused a payload the caller had given ("a payload (or payload_bytes) is required")."""
    client = coord.client()
    job = await client.submit({})
    assert job.WhichOneof("input") == "payload"
    assert (await client.get(job.job_id)).WhichOneof("input") == "payload"


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (("submit", "not json"), "aitbc: payload: not JSON"),
        (("submit", "[1, 2]"), "aitbc: payload: a JSON object is needed, not list"),
        (("submit", "@/nonexistent/payload.json"), "aitbc: payload file: [Errno 2] No such file"),
        (("submit", "{}", "--constraints", '{"vram": 24}'), 'aitbc: --constraints: Protocol message Constraints has no "vram" field'),
        (("submit", "{}", "--constraints", "[]"), "aitbc: --constraints: a JSON object is needed, not list"),
        (("submit", "{}", "--max-attempts", "-1"), "argument --max-attempts: must be 0 or more, not -1"),
        (("list", "--state", "bogus"), "aitbc: --state: unknown state 'bogus' (one of QUEUED, ASSIGNED"),
    ],
)  # fmt: skip
def test_bad_input_on_the_command_line_is_one_line_and_exit_2(
    argv: tuple[str, ...], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each used to end in a Python traceback. Nothing is sent: the address is a closed port."""
    try:
        code = main([*argv, "--address", "127.0.0.1:9", "--api-key", "k"])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert says in err and "Traceback" not in err, err


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (("get", "01234567-89ab-7def-8123-456789abcdef"), "aitbc: NOT_FOUND (JOB_NOT_FOUND): job "),
        (("submit", "{}", "--priority", "99"), "aitbc: INVALID_ARGUMENT (INVALID_REQUEST): the job is invalid: priority: 0 to 9"),
        (("list", "--page-token", "forged"), "aitbc: INVALID_ARGUMENT (INVALID_PAGE_TOKEN): page_token was not issued"),
    ],
)  # fmt: skip
async def test_a_refused_call_says_its_reason_on_one_line_and_exits_1(
    coord: Harness, argv: tuple[str, ...], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI printed only the status code and message: the ErrorInfo reason, the contract's stable name of
    the error (what a script matches on), was not shown."""
    code = await asyncio.to_thread(
        main, [*argv, "--address", coord.address, "--api-key", CLIENT_KEYS["alice"]]
    )
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.startswith(says) and err.count("\n") == 1 and "Traceback" not in err, err


async def test_a_submit_that_may_have_been_stored_says_how_to_retry_it_safely(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = await asyncio.to_thread(main, ["submit", "{}", "--address", "127.0.0.1:9", "--api-key", "k"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("aitbc: UNAVAILABLE: "), err
    assert "--idempotency-key" in err, err


async def test_a_submit_wait_whose_wait_fails_names_the_stored_job_instead_of_suggesting_a_resubmit(
    coord: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    """The job was stored, then the coordinator went away during the wait: the CLI said the job "may have been
    stored" and to submit again (a second job), without the first one's id, printed nowhere."""
    argv = ["submit", "{}", "--wait", "--timeout", "3", "--address", coord.address,
            "--api-key", CLIENT_KEYS["alice"]]  # fmt: skip
    cli = asyncio.create_task(asyncio.to_thread(main, argv))
    await eventually(lambda: coord.db.scalar("SELECT COUNT(*) FROM jobs") == 1, what="the stored job")
    job_id = coord.db.scalar("SELECT job_id FROM jobs")
    # (the watch under way first: a stop refuses calls from its start, one not yet started ends CANCELLED)
    assert coord.coordinator is not None
    watchers = coord.coordinator.scheduler.watchers
    await eventually(lambda: job_id in watchers, what="the CLI's watch")
    await coord.stop()  # (the watch waits the coordinator out until --timeout)
    code = await asyncio.wait_for(cli, 60)
    err = capsys.readouterr().err
    assert code == 1 and err.startswith(f"aitbc: job {job_id} not terminal after 3 s"), err
    assert f"job {job_id} was submitted: follow it with `aitbc wait {job_id}`" in err, err
    assert "--idempotency-key" not in err and err.count("\n") == 1, err


async def test_wait_exits_1_for_a_job_that_did_not_complete_as_submit_wait_does(
    coord: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    """`aitbc wait` exited 0 for a failed or canceled job (`submit --wait` exits 1): `aitbc wait ID && ...`
    went on as if it had completed."""
    client = coord.client()
    job = await client.submit({})
    await client.cancel(job.job_id)
    argv = ["wait", job.job_id, "--address", coord.address, "--api-key", CLIENT_KEYS["alice"]]
    code = await asyncio.to_thread(main, argv)
    out = capsys.readouterr().out
    assert code == 1 and job.job_id in out and "CANCELED" in out, out
