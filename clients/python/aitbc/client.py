"""The Python client SDK: submit jobs, follow them, fetch results and verifiable receipts."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from datetime import UTC
from typing import Any

import grpc
from google.protobuf import struct_pb2

from .channel import auth_metadata, open_channel
from .coordinator.v1 import (
    job_pb2,
    job_service_pb2,
    job_service_pb2_grpc,
    receipt_service_pb2,
    receipt_service_pb2_grpc,
)
from .signing import SigningChannel
from .tracing import with_trace_context

TERMINAL = {
    job_pb2.JOB_STATE_COMPLETED,
    job_pb2.JOB_STATE_FAILED,
    job_pb2.JOB_STATE_CANCELED,
    job_pb2.JOB_STATE_EXPIRED,
}
ROLE_NAMES = {1: "coordinator", 2: "attestation", 3: "log", 4: "miner"}
STATUS_NAMES = {1: "active", 2: "retired"}


def _rfc3339(ts) -> str | None:  # type: ignore[no-untyped-def]
    if not ts.seconds and not ts.nanos:
        return None
    return ts.ToDatetime(tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Client:
    """An asyncio client of JobService and ReceiptService. Use as `async with Client(address, key) as c:`."""

    def __init__(
        self,
        address: str,
        api_key: str,
        *,
        channel: grpc.aio.Channel | None = None,
        hmac_secret: str | bytes | None = None,
        tls_ca: bytes | str | None = None,
        tls_cert: bytes | str | None = None,
        tls_key: bytes | str | None = None,
    ) -> None:
        """hmac_secret: sign every call with the key's signing secret; tls_*: TLS (see open_channel)."""
        self.channel = channel or open_channel(address, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key)
        self._auth = auth_metadata(api_key)
        calls = SigningChannel(self.channel, hmac_secret) if hmac_secret else self.channel
        self.jobs = job_service_pb2_grpc.JobServiceStub(calls)
        self.receipts = receipt_service_pb2_grpc.ReceiptServiceStub(calls)

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The API key, plus the current span's W3C trace context when the application traces."""
        return with_trace_context(self._auth)

    @metadata.setter
    def metadata(self, value: tuple[tuple[str, str], ...]) -> None:
        self._auth = value

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    @staticmethod
    def request(payload: dict[str, Any] | bytes, **options: Any) -> job_service_pb2.SubmitJobRequest:
        req = job_service_pb2.SubmitJobRequest(
            constraints=job_pb2.Constraints(**options.pop("constraints", {})),
            priority=options.pop("priority", 0), max_attempts=options.pop("max_attempts", 0),
            idempotency_key=options.pop("idempotency_key", ""), metadata=options.pop("metadata", {}),
        )  # fmt: skip
        if isinstance(payload, bytes):
            req.payload_bytes = payload
        else:
            req.payload.SetInParent()  # set even when empty: {} is a payload, not a missing one
            req.payload.update(payload)
        if (ttl := options.pop("ttl_s", None)) is not None:
            req.ttl.FromMilliseconds(int(ttl * 1000))
        if (timeout := options.pop("execution_timeout_s", None)) is not None:
            req.execution_timeout.FromMilliseconds(int(timeout * 1000))
        if options:
            raise TypeError(f"unknown options: {sorted(options)}")
        return req

    async def submit(self, payload: dict[str, Any] | bytes, **options: Any) -> job_pb2.Job:
        response = await self.jobs.SubmitJob(self.request(payload, **options), metadata=self.metadata)
        return response.job

    async def submit_many(self, payloads: list[dict[str, Any] | bytes], **options: Any) -> list[job_pb2.Job]:
        reqs = [self.request(p, **dict(options)) for p in payloads]
        response = await self.jobs.SubmitJobs(
            job_service_pb2.SubmitJobsRequest(requests=reqs), metadata=self.metadata
        )
        return [r.job for r in response.responses]

    async def get(self, job_id: str) -> job_pb2.Job:
        return (
            await self.jobs.GetJob(job_service_pb2.GetJobRequest(job_id=job_id), metadata=self.metadata)
        ).job

    async def result(
        self, job_id: str, *, wait: bool = False, deadline_s: float | None = None
    ) -> job_service_pb2.GetJobResultResponse:
        return await self.jobs.GetJobResult(job_service_pb2.GetJobResultRequest(job_id=job_id, wait=wait),
                                            metadata=self.metadata, timeout=deadline_s)  # fmt: skip

    async def cancel(self, job_id: str, reason: str = "") -> job_pb2.Job:
        return (await self.jobs.CancelJob(job_service_pb2.CancelJobRequest(job_id=job_id, reason=reason),
                                          metadata=self.metadata)).job  # fmt: skip

    async def list(
        self, states: list[int] | None = None, page_size: int = 0, page_token: str = ""
    ) -> job_service_pb2.ListJobsResponse:
        return await self.jobs.ListJobs(job_service_pb2.ListJobsRequest(states=states or [], page_size=page_size,
                                                                        page_token=page_token), metadata=self.metadata)  # fmt: skip

    async def watch(self, job_id: str) -> AsyncIterator[job_service_pb2.WatchJobResponse]:
        call = self.jobs.WatchJob(job_service_pb2.WatchJobRequest(job_id=job_id), metadata=self.metadata)
        async for update in call:
            yield update

    async def wait(self, job_id: str) -> job_pb2.Job:
        """The job once terminal (follows WatchJob)."""
        job = None
        async for update in self.watch(job_id):
            job = update.job
        assert job is not None
        return job

    # ------------------------------------------------------------------ receipts
    async def receipt(self, job_id: str) -> receipt_service_pb2.GetReceiptResponse:
        return await self.receipts.GetReceipt(
            receipt_service_pb2.GetReceiptRequest(job_id=job_id), metadata=self.metadata
        )

    async def signing_keys(self) -> bytes:
        """The coordinator's keys as a key set file (docs/receipts.md section 4), to pin for offline checks."""
        response = await self.receipts.GetSigningKeys(
            receipt_service_pb2.GetSigningKeysRequest(), metadata=self.metadata
        )
        keys = []
        for k in response.keys:
            entry: dict[str, Any] = {"key_id": k.key_id, "role": ROLE_NAMES[k.role], "status": STATUS_NAMES[k.status],
                                     "public_key": k.public_key.hex(), "valid_from": _rfc3339(k.valid_from)}  # fmt: skip
            if until := _rfc3339(k.valid_until):
                entry["valid_until"] = until
            if k.note_verifier_key:
                entry["note_verifier_key"] = k.note_verifier_key
            if k.owner:
                entry["owner"] = k.owner
            keys.append(entry)
        return json.dumps({"keys": keys}, indent=1).encode()

    async def bundle(self, job_id: str) -> bytes:
        """A receipt bundle (docs/receipts.md section 7) for offline verification."""
        r = await self.receipt(job_id)
        return json.dumps({
            "envelope": base64.b64encode(r.receipt.envelope).decode(),
            "leaf_index": r.inclusion_proof.leaf_index,
            "inclusion_proof": {"tree_size": r.inclusion_proof.tree_size,
                                "hashes": [h.hex() for h in r.inclusion_proof.hashes]},
            "checkpoint": r.checkpoint.note,
        }).encode()  # fmt: skip


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    return MessageToDict(struct)
