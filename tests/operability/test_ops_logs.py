"""Structured logs: every line of a full job life parsed (JSON lines), the ids on each, and no secrets."""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from aitbc.channel import open_channel
from aitbc.coordinator.v1 import job_service_pb2, job_service_pb2_grpc
from ops_support import (
    ADMIN_KEY,
    CLIENT,
    CLIENT_KEY,
    COMPLETED,
    FAILED,
    MINER,
    MINER_KEY,
    eventually,
    free_port,
    random_seed_hex,
    running,
    wait_terminal,
)

from coordinator.logs import configure_logging, redact_url

WRONG_KEY = "not-a-real-key-7c1e55"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """The root logger's output, in a buffer, for the test's duration (then restored)."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    buffer = io.StringIO()
    yield buffer
    root.handlers[:], level = saved
    root.setLevel(level)


def secrets_of(seeds: list[str]) -> list[str]:
    out = [CLIENT_KEY, MINER_KEY, ADMIN_KEY, WRONG_KEY]
    for seed in seeds:
        raw = bytes.fromhex(seed)
        out += [
            seed,
            seed.upper(),
            base64.b64encode(raw).decode(),
            base64.urlsafe_b64encode(raw).decode().rstrip("="),
        ]
    return out


async def _submit_with_request_id(address: str, key: str, request_id: str) -> str:
    channel = open_channel(address)
    try:
        stub = job_service_pb2_grpc.JobServiceStub(channel)
        request = job_service_pb2.SubmitJobRequest()
        request.payload.update({"prompt": "logged"})
        response = await stub.SubmitJob(request, metadata=(("x-api-key", key), ("x-request-id", request_id)))
        return response.job.job_id
    finally:
        await channel.close()


async def test_json_lines_for_a_full_job_life(tmp_path: Path, captured: io.StringIO) -> None:
    configure_logging("INFO", "json", captured)
    signing, attestation = random_seed_hex(), random_seed_hex()
    async with running(tmp_path, metrics_port=free_port(), receipt_signing_key_hex=signing,
                       receipt_attestation_key_hex=attestation) as ops:  # fmt: skip
        await ops.miner()
        client = ops.client()
        job_id = await _submit_with_request_id(ops.address, CLIENT_KEY, "req-ops-0001")
        assert (await wait_terminal(client, job_id)).state == COMPLETED
        failed = await client.submit({"fail": "fatal"})
        assert (await wait_terminal(client, failed.job_id)).state == FAILED
        with pytest.raises(grpc.aio.AioRpcError) as refused:  # a wrong key: refused, and not logged
            await _submit_with_request_id(ops.address, WRONG_KEY, "req-ops-0002")
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        await ops.stop_miners()
        await eventually(lambda: MINER not in ops.coordinator.scheduler.by_miner, what="miner gone")

    output = captured.getvalue()
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]  # every line is JSON
    assert all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)

    life = [x for x in lines if x.get("event") == "job.transition" and x.get("job_id") == job_id]
    assert [x["to_state"] for x in life] == ["QUEUED", "ASSIGNED", "RUNNING", "COMPLETED"]
    assert [x["msg"] for x in life] == ["job submitted", "job assigned", "job running", "job completed"]
    assert all(x["client_id"] == CLIENT and x["logger"] == "coordinator.jobs" for x in life)
    assert "from_state" not in life[0] and [x["from_state"] for x in life[1:]] == [
        "QUEUED",
        "ASSIGNED",
        "RUNNING",
    ]
    assert "miner_id" not in life[0] and all(x["miner_id"] == MINER for x in life[1:])
    assert life[0]["request_id"] == "req-ops-0001"  # the submitting call's id, as the client sent it
    assert all(x.get("request_id") for x in life)  # the others: the miner stream's request id
    assert life[1]["attempt"] == 1 and life[3]["reason"] == "COMPLETED"

    fail = [x for x in lines if x.get("event") == "job.transition" and x.get("job_id") == failed.job_id]
    assert fail[-1]["to_state"] == "FAILED" and fail[-1]["reason"] == "BAD_INPUT"
    assert fail[-1]["detail"] == "the input asks to fail"

    connects = [x for x in lines if x.get("event") == "miner.connect"]
    disconnects = [x for x in lines if x.get("event") == "miner.disconnect"]
    assert len(connects) == 1 and connects[0]["miner_id"] == MINER and connects[0]["transport"] == "stream"
    assert len(disconnects) == 1 and disconnects[0]["session_id"] == connects[0]["session_id"]
    assert disconnects[0]["reason"] in ("STREAM_CLOSED", "STREAM_CANCELLED")

    for secret in secrets_of([signing, attestation]):
        assert secret not in output, "a secret reached the log"


async def test_text_lines_are_key_value(tmp_path: Path, captured: io.StringIO) -> None:
    configure_logging("INFO", "text", captured)
    signing = random_seed_hex()
    async with running(tmp_path, receipt_signing_key_hex=signing) as ops:
        await ops.miner()
        client = ops.client()
        job = await client.submit({"prompt": "text"})
        assert (await wait_terminal(client, job.job_id)).state == COMPLETED
    output = captured.getvalue()
    done = [line for line in output.splitlines() if "job completed" in line and job.job_id in line]
    assert len(done) == 1, output
    line = done[0]
    assert line.startswith("ts=") and "level=INFO logger=coordinator.jobs job completed" in line
    for pair in (f"job_id={job.job_id}", f"client_id={CLIENT}", f"miner_id={MINER}", "to_state=COMPLETED",
                 "event=job.transition", "request_id="):  # fmt: skip
        assert pair in line, pair
    assert any("miner connected" in x and f"miner_id={MINER}" in x for x in output.splitlines())
    for secret in secrets_of([signing]):
        assert secret not in output


def test_database_passwords_are_redacted() -> None:
    assert (
        redact_url("postgres://coord:s3cret@db.internal:5432/aitbc")
        == "postgres://coord:***@db.internal:5432/aitbc"
    )
    assert redact_url("sqlite:///var/lib/aitbc.db") == "sqlite:///var/lib/aitbc.db"
