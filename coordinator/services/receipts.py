"""ReceiptService: receipts, keys, checkpoints and proofs, served exactly as stored."""

from __future__ import annotations

import grpc
from aitbc.coordinator.v1 import receipt_service_pb2 as pb
from aitbc.coordinator.v1 import receipt_service_pb2_grpc
from aitbc.receipts import verifier_key_string

from ..domain.errors import CoordinatorError, Kind, invalid, job_not_found
from ..domain.validation import check_id
from ..receipts.access import readable_receipts
from ..receipts.issuer import ReceiptIssuer
from ..scheduler.engine import Scheduler
from ..security.interceptor import identity
from ..store.base import CheckpointRow, KeyRow, ReceiptRow
from .convert import timestamp

ROLES = {"coordinator": pb.KEY_ROLE_COORDINATOR, "attestation": pb.KEY_ROLE_ATTESTATION, "log": pb.KEY_ROLE_LOG,
         "miner": pb.KEY_ROLE_MINER}  # fmt: skip
STATUSES = {"active": pb.KEY_STATUS_ACTIVE, "retired": pb.KEY_STATUS_RETIRED}


def receipt_message(r: ReceiptRow) -> pb.Receipt:
    return pb.Receipt(receipt_id=r.receipt_id, job_id=r.job_id, attempt=r.attempt, envelope=r.envelope,
                      leaf_index=r.leaf_index, issued_at=timestamp(r.issued_us))  # fmt: skip


def checkpoint_message(c: CheckpointRow, origin: str) -> pb.Checkpoint:
    return pb.Checkpoint(origin=origin, tree_size=c.tree_size, root_hash=c.root_hash, note=c.note,
                         signed_at=timestamp(c.signed_us))  # fmt: skip


def key_message(k: KeyRow, origin: str) -> pb.SigningKey:
    return pb.SigningKey(
        key_id=k.key_id, role=ROLES[k.role], status=STATUSES[k.status], public_key=k.public_key,
        valid_from=timestamp(k.valid_from_us), valid_until=timestamp(k.valid_until_us or 0),
        note_verifier_key=verifier_key_string(origin, k.public_key) if k.role == "log" else "", owner=k.owner,
    )  # fmt: skip


class ReceiptServicer(receipt_service_pb2_grpc.ReceiptServiceServicer):
    def __init__(self, scheduler: Scheduler, issuer: ReceiptIssuer) -> None:
        self.scheduler = scheduler
        self.issuer = issuer

    async def _receipts(self, job_id: str) -> list[ReceiptRow]:
        """A job's receipts, readable by its client, the miners that ran it, and admins."""
        check_id("job_id", job_id)
        who = identity()
        job = await self.scheduler.get_job(job_id, None)
        readable = readable_receipts(who.role, who.name, job, await self.scheduler.store.get_receipts(job_id))
        if readable is None:
            raise job_not_found(job_id)
        return readable

    async def GetReceipt(
        self, request: pb.GetReceiptRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetReceiptResponse:
        receipts = await self._receipts(request.job_id)
        if not receipts:
            raise CoordinatorError(Kind.NOT_FOUND, "RECEIPT_NOT_FOUND", f"job {request.job_id} has no receipt yet",
                                   metadata={"job_id": request.job_id})  # fmt: skip
        latest = receipts[-1]
        checkpoint = await self.issuer.ensure_checkpoint(latest.leaf_index + 1)
        proof = await self.issuer.inclusion_proof(latest.leaf_index, checkpoint.tree_size)
        return pb.GetReceiptResponse(
            receipt=receipt_message(latest),
            inclusion_proof=pb.InclusionProof(
                leaf_index=latest.leaf_index, tree_size=checkpoint.tree_size, hashes=proof
            ),
            checkpoint=checkpoint_message(checkpoint, self.issuer.origin),
        )

    async def ListReceipts(
        self, request: pb.ListReceiptsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListReceiptsResponse:
        return pb.ListReceiptsResponse(
            receipts=[receipt_message(r) for r in await self._receipts(request.job_id)]
        )

    async def GetSigningKeys(
        self, request: pb.GetSigningKeysRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetSigningKeysResponse:
        return pb.GetSigningKeysResponse(
            keys=[key_message(k, self.issuer.origin) for k in self.issuer.published_keys()]
        )

    async def GetCheckpoint(
        self, request: pb.GetCheckpointRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetCheckpointResponse:
        checkpoint = await self.issuer.ensure_checkpoint()
        return pb.GetCheckpointResponse(checkpoint=checkpoint_message(checkpoint, self.issuer.origin))

    async def GetInclusionProof(
        self, request: pb.GetInclusionProofRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetInclusionProofResponse:
        size = request.tree_size or (await self.issuer.ensure_checkpoint()).tree_size
        if not request.leaf_index < size <= self.issuer.committed_size:
            raise invalid("leaf_index or tree_size out of range",
                          [("tree_size", f"0 <= leaf_index < tree_size <= {self.issuer.committed_size}")],
                          reason="INVALID_TREE_SIZE")  # fmt: skip
        proof = await self.issuer.inclusion_proof(request.leaf_index, size)
        return pb.GetInclusionProofResponse(
            proof=pb.InclusionProof(leaf_index=request.leaf_index, tree_size=size, hashes=proof)
        )

    async def GetConsistencyProof(
        self, request: pb.GetConsistencyProofRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetConsistencyProofResponse:
        second = request.second_size or (await self.issuer.ensure_checkpoint()).tree_size
        if not 0 < request.first_size <= second <= self.issuer.committed_size:
            raise invalid("sizes out of range",
                          [("first_size", f"0 < first_size <= second_size <= {self.issuer.committed_size}")],
                          reason="INVALID_TREE_SIZE")  # fmt: skip
        proof = await self.issuer.consistency_proof(request.first_size, second)
        return pb.GetConsistencyProofResponse(
            proof=pb.ConsistencyProof(first_size=request.first_size, second_size=second, hashes=proof)
        )
