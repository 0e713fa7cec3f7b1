"""`aitbc admin` across a coordinator that is down for a while (helper h2): its reads (stats, jobs, miners, and
top's refreshes) are made again after UNAVAILABLE within --timeout, as the client's calls are; a drain, a
mutation whose repeat may drain the miner's next session, is not. (Every admin command exited 1, UNAVAILABLE,
at the first refused connection, and had no deadline: a coordinator that never answered held it for ever.)"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3

import pytest
from aitbc.cli import main
from coord_support import ADMIN_KEY, Harness, eventually
from test_client_outage import coordinator_down, coordinator_up

OUTAGE_S = 3.0  # several backoff periods of the default policy (0.2 s doubling)


def admin_cli(*argv: str) -> asyncio.Task[int]:
    """`aitbc admin ARGV` in a thread of its own (it runs its own event loop), as a task."""
    return asyncio.create_task(asyncio.to_thread(main, ["admin", *argv]))


@pytest.mark.parametrize("command", [("stats",), ("miners",), ("jobs", "--limit", "5")])
async def test_admin_reads_wait_out_a_coordinator_restart(
    coord: Harness, command: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    await coord.client().submit({"n": 1})
    port = await coordinator_down(coord)
    cli = admin_cli(*command, "--json", "--address", f"127.0.0.1:{port}", "--api-key", ADMIN_KEY)
    await asyncio.sleep(OUTAGE_S)
    assert not cli.done(), capsys.readouterr().err  # (it exited 1, UNAVAILABLE, at once)
    await coordinator_up(coord, port)
    code = await asyncio.wait_for(cli, 30)
    out, err = capsys.readouterr()
    assert code == 0, err
    answer = json.loads(out)
    if command[0] == "jobs":
        assert len(answer) == 1 and answer[0]["state"] == "queued", answer
    elif command[0] == "stats":
        assert answer["jobs_by_state"]["queued"] == 1, answer


async def test_admin_reads_give_up_at_their_timeout_saying_why(
    coord: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    port = await coordinator_down(coord)
    code = await asyncio.wait_for(
        admin_cli("miners", "--timeout", "1", "--address", f"127.0.0.1:{port}", "--api-key", ADMIN_KEY), 30
    )
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.startswith("aitbc admin: UNAVAILABLE") and err.count("\n") == 1, err


async def test_admin_top_refreshes_across_a_coordinator_restart(
    coord: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    port = coord.coordinator.port  # type: ignore[union-attr]
    argv = ("top", "--json", "--interval", "0.1", "--iterations", "3")
    cli = admin_cli(*argv, "--address", f"127.0.0.1:{port}", "--api-key", ADMIN_KEY)
    await coordinator_down(coord)
    await asyncio.sleep(OUTAGE_S)
    await coordinator_up(coord, port)
    code = await asyncio.wait_for(cli, 30)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert len(out.splitlines()) == 3, out


async def test_a_drain_is_not_made_again_after_unavailable(
    coord: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    """A repeat of a drain that landed may drain the miner's next session (the first drained to its end):
    the drain fails with its UNAVAILABLE, for the operator to look (`aitbc admin miners`) before draining again."""
    await coord.stream_miner("miner-00")
    port = await coordinator_down(coord)
    cli = admin_cli("drain", "miner-00", "--address", f"127.0.0.1:{port}", "--api-key", ADMIN_KEY)
    await asyncio.sleep(OUTAGE_S)
    await coordinator_up(coord, port)
    code = await asyncio.wait_for(cli, 30)
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.startswith("aitbc admin: UNAVAILABLE"), err  # (not a later try's MINER_NOT_FOUND)


async def test_a_drain_refused_store_unavailable_is_made_again_and_drains(
    coord: Harness, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """STORE_UNAVAILABLE says nothing was stored: the one failure after which a drain is made again."""
    caplog.set_level(logging.WARNING, logger="coordinator")
    miner = await coord.stream_miner("miner-00")
    blocker = sqlite3.connect(coord.db_path, isolation_level=None, timeout=1.0)
    blocker.execute("BEGIN IMMEDIATE")  # the write lock, past the writer's busy timeout
    try:
        cli = admin_cli("drain", "miner-00", "--address", coord.address, "--api-key", ADMIN_KEY)
        await eventually(lambda: "store unreachable" in caplog.text, within=30, what="the refused first try")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    code = await asyncio.wait_for(cli, 30)
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith("draining miner-00"), out
    await miner.next("drain")
