"""``aitbc receipts verify``: offline verification of a bundle, a bare envelope or a legacy v1 receipt.

Prints one line, ``OK <receipt_id> ...`` (exit 0) or ``FAIL: <reason>`` (exit 1; exit 2 when an input
cannot be read or is not a receipt at all), both on stdout, so scripts can match the reason.
The ``aitbc`` CLI wires :func:`add_parser` in; ``python -m aitbc.receipts.cli verify ...`` runs it alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .canonical import CanonicalError, decode_strict
from .keys import KeySet, KeySetError
from .verify import (
    POLICY_ROLES,
    Policy,
    VerificationError,
    VerifiedReceipt,
    parse_consistency_proof,
    verify_any,
)

__all__ = ["add_parser", "main", "run"]

EXIT_OK, EXIT_FAIL, EXIT_UNREADABLE = 0, 1, 2
_MAX_INPUT = 64 << 20  # bytes read from one input file at most
_UNREADABLE_REASONS = frozenset({"not JSON", "unrecognised receipt format"})


class _Unreadable(Exception):
    pass


def _add_commands(commands: Any) -> None:
    verify = commands.add_parser(
        "verify",
        help="verify a receipt bundle, envelope or legacy receipt offline",
        description="Verify FILE (a bundle, a raw DSSE envelope, or a legacy AITBC v1 receipt) offline.",
    )
    verify.add_argument("file", metavar="FILE")
    verify.add_argument("--keys", required=True, metavar="KEYS.json", help="the key set to trust")
    verify.add_argument(
        "--require",
        action="append",
        default=[],
        choices=sorted(POLICY_ROLES),
        metavar="ROLE",
        help="also require a valid signature of ROLE (coordinator is always required); repeatable",
    )
    verify.add_argument(
        "--older-checkpoint",
        metavar="FILE",
        help="a checkpoint the bundle's must extend: what `aitbc receipts checkpoint` wrote (GetCheckpoint's "
        "JSON), an earlier bundle, or a checkpoint note",
    )
    verify.add_argument(
        "--consistency-proof",
        metavar="FILE",
        help="what `aitbc receipts consistency` wrote, GetConsistencyProof's answer as grpcurl prints it, or "
        '{"first_size": M, "second_size": N, "hashes": ["<hex>", ...]}',
    )
    verify.set_defaults(func=run, receipts_command="verify")


def add_parser(subparsers: Any) -> Any:
    """Register ``receipts`` (with ``verify``) on an argparse subparsers object.

    Returns the ``receipts`` command's own subparsers so that the commands calling the coordinator (``get``,
    ``keys``, ``list``, ``checkpoint``, ``inclusion``, ``consistency``: ``aitbc.cli``) join it; ``verify``
    sets ``func=run``.
    """
    receipts = subparsers.add_parser("receipts", help="signed receipts", description="Signed receipts.")
    commands = receipts.add_subparsers(dest="receipts_command", metavar="COMMAND")
    commands.required = True
    _add_commands(commands)
    return commands


def _read(path: str, what: str) -> bytes:
    try:
        with Path(path).open("rb") as f:
            data = f.read(_MAX_INPUT + 1)
    except OSError as exc:
        raise _Unreadable(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    if len(data) > _MAX_INPUT:  # (/dev/zero, or anything no receipt, key set or proof comes near)
        raise _Unreadable(f"cannot read {what} {path}: larger than {_MAX_INPUT >> 20} MiB")
    return data


def _describe(receipt: VerifiedReceipt) -> str:
    parts = [
        f"OK {receipt.receipt_id}",
        f"job={receipt.payload.get('job_id', '')}",
        f"format={receipt.format}",
    ]
    parts.append("roles=" + ",".join(sorted(receipt.roles)))
    if receipt.checkpoint is not None:
        parts.append(f"leaf={receipt.leaf_index}")
        parts.append(f"tree_size={receipt.checkpoint.size}")
        parts.append(f"origin={receipt.checkpoint.origin}")
    if receipt.consistent_with is not None:
        parts.append(f"extends={receipt.consistent_with.size}")
    return " ".join(parts)


def _older_note(data: bytes) -> str:
    """The checkpoint note of --older-checkpoint's file: the note itself, or the one an earlier bundle (what
    a user keeps of yesterday) or GetCheckpoint's answer as grpcurl prints it ({"checkpoint": {"note": ...}})
    holds. A note's first line is its origin, never JSON, so the two cannot be confused."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Unreadable("older checkpoint is not UTF-8") from exc
    if not text.lstrip().startswith("{"):
        return text
    try:
        obj = decode_strict(text)
    except CanonicalError as exc:
        raise VerificationError("malformed checkpoint") from exc
    held = obj.get("checkpoint") if isinstance(obj, dict) else None
    if isinstance(held, dict) and isinstance(held.get("note"), str):
        held = held["note"]
    if not isinstance(held, str):
        raise VerificationError("malformed checkpoint")
    return held


def _verify(args: argparse.Namespace) -> VerifiedReceipt:
    data = _read(args.file, "file")
    try:
        keyset = KeySet.load(_read(args.keys, "key set"))
    except KeySetError as exc:
        raise _Unreadable(f"bad key set: {exc}") from exc
    older = None
    if args.older_checkpoint:
        older = _older_note(_read(args.older_checkpoint, "checkpoint"))
    proof = None
    if args.consistency_proof:
        proof = parse_consistency_proof(_read(args.consistency_proof, "consistency proof"))
    policy = Policy(frozenset({"coordinator", *args.require}))
    return verify_any(data, keyset, policy, older_checkpoint=older, consistency_proof=proof)


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``receipts`` command; returns the exit code after printing its one line."""
    if getattr(args, "receipts_command", None) != "verify":
        print("FAIL: unknown receipts command")
        return EXIT_UNREADABLE
    try:
        receipt = _verify(args)
    except _Unreadable as exc:
        print(f"FAIL: {exc}")
        return EXIT_UNREADABLE
    except VerificationError as exc:
        print(f"FAIL: {exc.reason}")
        return EXIT_UNREADABLE if exc.reason in _UNREADABLE_REASONS else EXIT_FAIL
    print(_describe(receipt))
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point: ``python -m aitbc.receipts.cli verify FILE --keys KEYS.json``."""
    parser = argparse.ArgumentParser(prog="aitbc receipts")
    commands = parser.add_subparsers(dest="receipts_command", metavar="COMMAND")
    commands.required = True
    _add_commands(commands)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
