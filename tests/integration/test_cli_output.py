"""The CLI as the docs walkthrough met it (helper h5), against a real coordinator: a reader gone from stdout
(`aitbc watch ID | head -1`) ends the CLI quietly; Struct numbers print as submitted ({"n": 3}, not 3.0);
`aitbc admin --json` times end in `Z` as the rest of `aitbc`'s do; `aitbc admin accounts` and
`aitbc admin keys disable|enable` make the AdminService's ListAccounts and SetApiKeyEnabled."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from aitbc import cli
from aitbc.miner import echo_runner
from coord_support import ADMIN_KEY, CLIENT_KEYS, COMPLETED, Harness, rpc_error, sdk_miner
from google.protobuf.json_format import MessageToDict

AITBC = str(Path(sys.executable).parent / "aitbc")  # the installed console script
SIGPIPE_EXIT = 141  # 128 + SIGPIPE: what a shell reports for `cat` killed by a closed pipe
SUBMITTED = {"n": 3, "ratio": 2.5, "nested": {"steps": [1, 2, 30]}, "negative": -7, "name": "x"}


async def aitbc(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`aitbc ARGV` in-process, in a thread (it runs its own event loop): exit code, stdout, stderr."""
    capsys.readouterr()
    code = await asyncio.to_thread(cli.main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def exactly(value: Any) -> str:
    """JSON text telling 3 from 3.0 (which compare equal in Python)."""
    return json.dumps(value, sort_keys=True)


async def piped_into_head(*argv: str) -> tuple[asyncio.subprocess.Process, bytes]:
    """`aitbc ARGV | head -1` over a real pipe; returns the aitbc process and head's line once head has exited
    (so that the pipe has no reader left when aitbc next writes)."""
    read_end, write_end = os.pipe()
    process = await asyncio.create_subprocess_exec(
        AITBC, *argv, stdout=write_end, stderr=asyncio.subprocess.PIPE
    )
    head = await asyncio.create_subprocess_exec("head", "-1", stdin=read_end, stdout=asyncio.subprocess.PIPE)
    os.close(read_end)
    os.close(write_end)
    line, _ = await asyncio.wait_for(head.communicate(), 30)
    assert head.returncode == 0 and line, line
    return process, line


async def ended(process: asyncio.subprocess.Process) -> tuple[int, str]:
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, err.decode()


async def test_watch_into_head_ends_quietly(coord: Harness) -> None:
    """`aitbc watch ID | head -1` printed `aitbc: [Errno 32] Broken pipe` (or Python's "Exception ignored ...
    BrokenPipeError" at exit) and failed: the broken pipe was reported as an unreachable coordinator."""
    client = coord.client()
    job = await client.submit({"n": 1})  # no miner: it waits, QUEUED
    process, line = await piped_into_head("watch", job.job_id, "--address", coord.address,
                                          "--api-key", CLIENT_KEYS["alice"])  # fmt: skip
    assert line == b"{\n"
    await client.cancel(job.job_id)  # the next update: written to a pipe no one reads
    code, err = await ended(process)
    assert code == SIGPIPE_EXIT and err == "", err


async def test_admin_top_into_head_ends_quietly(coord: Harness) -> None:
    """`aitbc admin top --json | head -1` ended in a BrokenPipeError traceback."""
    process, line = await piped_into_head("admin", "top", "--json", "--interval", "0.05", "--address",
                                          coord.address, "--api-key", ADMIN_KEY)  # fmt: skip
    assert json.loads(line)["stats"]["queue_depth"] == 0
    code, err = await ended(process)
    assert code == SIGPIPE_EXIT and err == "", err


async def test_struct_numbers_print_as_submitted(coord: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    """`aitbc submit '{"n": 3}'` printed "n": 3.0 (MessageToDict makes every Struct number a double), in the
    job's payload and in the result; the rest of the JSON is MessageToDict's, unchanged."""
    auth = ("--address", coord.address, "--api-key", CLIENT_KEYS["alice"])
    code, out, err = await aitbc(capsys, "submit", json.dumps(SUBMITTED), *auth)
    assert code == 0, err
    printed = json.loads(out)
    assert exactly(printed["payload"]) == exactly(SUBMITTED), out
    stored = MessageToDict(await coord.client().get(printed["job_id"]), preserving_proto_field_name=True)
    assert {k: v for k, v in printed.items() if k != "payload"} == {
        k: v for k, v in stored.items() if k != "payload"
    }

    coord.run_miner(sdk_miner(coord.address, echo_runner))
    code, out, err = await aitbc(capsys, "submit", json.dumps(SUBMITTED), "--wait", "--timeout", "30", *auth)
    assert code == 0, err
    result = json.loads(out)
    assert exactly(result["result"]["result"]) == exactly(SUBMITTED), out  # (echo: the input is the result)
    assert exactly(result["job"]["payload"]) == exactly(SUBMITTED), out
    code, out, err = await aitbc(capsys, "result", result["job"]["job_id"], *auth)
    assert code == 0 and exactly(json.loads(out)["result"]["result"]) == exactly(SUBMITTED), out
    code, out, err = await aitbc(capsys, "list", *auth)
    assert code == 0 and all(exactly(j["payload"]) == exactly(SUBMITTED) for j in json.loads(out)["jobs"]), (
        out
    )


async def test_admin_accounts_and_times_in_z(coord: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    """`aitbc admin ... --json` wrote times as `...+00:00` where `aitbc get` writes `...Z`; and had no command
    for ListAccounts."""
    coord.run_miner(sdk_miner(coord.address, echo_runner))
    client = coord.client()
    job = await client.submit({"n": 1})
    assert (await coord.finished(client, job.job_id)).state == COMPLETED
    auth = ("--address", coord.address, "--api-key", ADMIN_KEY)

    code, out, err = await aitbc(capsys, "admin", "jobs", "--json", *auth)
    assert code == 0, err
    [listed] = json.loads(out)
    code, out, err = await aitbc(capsys, "get", job.job_id, "--address", coord.address,
                                 "--api-key", CLIENT_KEYS["alice"])  # fmt: skip
    got = json.loads(out)
    for name in ("created_at", "updated_at", "finished_at"):
        assert listed[name].endswith("Z") and got[name].endswith("Z"), (listed[name], got[name])
        assert listed[name][:23] == got[name][:23]  # the same instant, to the millisecond
    code, out, err = await aitbc(capsys, "admin", "miners", "--json", *auth)
    [miner] = json.loads(out)
    assert miner["connected_at"].endswith("Z") and miner["last_seen_at"].endswith("Z"), miner

    code, out, err = await aitbc(capsys, "admin", "accounts", "--json", *auth)
    assert code == 0, err
    accounts = {(a["kind"], a["account_id"]): a for a in json.loads(out)}
    assert set(accounts) == {("client", "alice"), ("miner", "miner-00")}, accounts
    assert accounts[("client", "alice")]["receipts"] == 1 and accounts[("miner", "miner-00")]["receipts"] == 1
    assert all(a["updated_at"].endswith("Z") and isinstance(a["balance"], str) for a in accounts.values())
    code, out, err = await aitbc(capsys, "admin", "accounts", *auth)
    assert code == 0 and out.split()[:6] == ["ACCOUNT", "KIND", "BALANCE", "RECEIPTS", "UNITS", "UPDATED"], (
        out
    )
    assert "alice" in out and "miner-00" in out


async def test_admin_keys_disable_and_enable(coord: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    """`aitbc admin` had no command for SetApiKeyEnabled: disabling a key took grpcurl."""
    auth = ("--address", coord.address, "--api-key", ADMIN_KEY)
    bob = coord.client("bob")
    await bob.list([], 1, "")

    code, out, err = await aitbc(capsys, "admin", "keys", "disable", "bob", "--role", "client", *auth)
    assert code == 0 and out == "client key bob: disabled\n", err
    refused = await rpc_error(bob.list([], 1, ""))
    assert refused.code == grpc.StatusCode.UNAUTHENTICATED
    await coord.client("alice").list([], 1, "")  # another key of the role: untouched

    code, out, err = await aitbc(
        capsys, "admin", "keys", "enable", "bob", "--role", "client", "--json", *auth
    )
    assert code == 0 and json.loads(out) == {"role": "client", "name": "bob", "enabled": True}, err
    await bob.list([], 1, "")

    code, out, err = await aitbc(capsys, "admin", "keys", "disable", "nobody", "--role", "client", *auth)
    assert code == 1 and out == "", out
    assert err.startswith("aitbc admin: NOT_FOUND (KEY_NOT_FOUND)") and err.count("\n") == 1, err
    with pytest.raises(SystemExit) as usage:  # a role the coordinator has not: refused before any call
        cli.main(["admin", "keys", "disable", "bob", "--role", "owner", *auth])
    assert usage.value.code == 2
