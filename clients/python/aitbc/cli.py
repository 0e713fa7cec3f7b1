"""`aitbc`: the command line of the SDK: jobs (and their prices and your usage), a miner, and receipts.

Every command takes --address and --api-key, or AITBC_ADDRESS and AITBC_API_KEY; for signed calls and
TLS, --hmac-secret, --tls, --tls-ca, --tls-cert, --tls-key and --tls-server-name (AITBC_HMAC_SECRET,
AITBC_TLS, AITBC_TLS_CA, AITBC_TLS_CERT, AITBC_TLS_KEY, AITBC_TLS_SERVER_NAME); and for the connection's
keepalive and reconnects, --keepalive, --keepalive-timeout and --reconnect-max SECONDS (AITBC_KEEPALIVE,
AITBC_KEEPALIVE_TIMEOUT, AITBC_RECONNECT_MAX): open_channel's tls, tls_server_name, keepalive_s,
keepalive_timeout_s and reconnect_max_s. `aitbc miner run` also takes --welcome-timeout (Miner's
welcome_timeout_s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from .admin_cli import add_parser as add_admin_parser
from .channel import SERVER_MIN_PING_INTERVAL_S, connection_options
from .client import Client, error_details, new_idempotency_key, struct_json
from .coordinator.v1.job_pb2 import JOB_STATE_COMPLETED
from .receipts.cli import add_parser as add_receipts_parser

DEFAULT_ADDRESS = "127.0.0.1:50051"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default=os.environ.get("AITBC_ADDRESS", DEFAULT_ADDRESS),
                        help="coordinator HOST:PORT (AITBC_ADDRESS)")  # fmt: skip
    parser.add_argument(
        "--api-key", default=os.environ.get("AITBC_API_KEY", ""), help="API key (AITBC_API_KEY)"
    )
    env = os.environ.get
    parser.add_argument("--hmac-secret", default=env("AITBC_HMAC_SECRET", ""),
                        help="sign every call with this secret (AITBC_HMAC_SECRET)")  # fmt: skip
    parser.add_argument("--tls-ca", default=env("AITBC_TLS_CA", ""),
                        help="TLS: CA certificate file to trust (AITBC_TLS_CA)")  # fmt: skip
    parser.add_argument("--tls-cert", default=env("AITBC_TLS_CERT", ""),
                        help="mutual TLS: client certificate file (AITBC_TLS_CERT)")  # fmt: skip
    parser.add_argument("--tls-key", default=env("AITBC_TLS_KEY", ""),
                        help="mutual TLS: client private key file (AITBC_TLS_KEY)")  # fmt: skip
    parser.add_argument(
        "--tls", action="store_true", default=env("AITBC_TLS", "") not in ("", "0", "false", "no"),
        help="TLS trusting the system's CA certificates (implied by --tls-ca or --tls-cert; AITBC_TLS=1)",
    )  # fmt: skip
    parser.add_argument(
        "--tls-server-name", default=env("AITBC_TLS_SERVER_NAME", ""), metavar="NAME",
        help="TLS: the name to check the coordinator's certificate against, when it names another host than "
             "--address (an IP address, a tunnel) (AITBC_TLS_SERVER_NAME)",
    )  # fmt: skip
    # (an environment's value, a string, is checked by the flag's type as a command line's would be)
    parser.add_argument(
        "--keepalive", type=_keepalive_seconds, default=env("AITBC_KEEPALIVE"), metavar="SECONDS",
        help="ping the coordinator this often, to find a dead connection (and keep a NAT's entry), more than "
             f"{SERVER_MIN_PING_INTERVAL_S:g} (default: 20; AITBC_KEEPALIVE)",
    )  # fmt: skip
    parser.add_argument(
        "--keepalive-timeout", type=_finite_positive_seconds, default=env("AITBC_KEEPALIVE_TIMEOUT"),
        metavar="SECONDS", help="a ping unanswered this long ends the connection (default: 10; "
                                "AITBC_KEEPALIVE_TIMEOUT)",
    )  # fmt: skip
    parser.add_argument(
        "--reconnect-max", type=_reconnect_seconds, default=env("AITBC_RECONNECT_MAX"), metavar="SECONDS",
        help="a coordinator unreachable: try to connect again at least this often, 1 or more (default: 5; "
             "AITBC_RECONNECT_MAX)",
    )  # fmt: skip


def _print(message: Message, *, zeros: bool = False) -> None:
    # flushed: a watch's updates reach a pipe as they come, and a reader gone (`| head -1`) shows at once
    print(json.dumps(message_json(message, zeros=zeros), indent=1), flush=True)


def message_json(message: Message, *, zeros: bool = False) -> Any:
    """message in protobuf's JSON mapping (proto field names), but its Structs (inputs, results) as the client
    submitted them and the miner gets them: integral numbers as integers ({"n": 3}, not {"n": 3.0}). zeros:
    scalar fields at their zero value printed too (the mapping's option): a quote with no miner eligible is
    `"eligible_miners": 0` and empty prices, not `{}`."""
    if message.DESCRIPTOR.full_name in _STRUCT_TYPES:
        return struct_json(message)
    plain = MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=zeros
    )
    _replace_structs(message, plain)
    return plain


_STRUCT_TYPES = {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"}


def _replace_structs(message: Message, plain: dict[str, Any]) -> None:
    """Walks message beside its MessageToDict form, replacing each Struct's JSON with _struct_json's."""
    for field, value in message.ListFields():
        if field.message_type is None or field.name not in plain:
            continue
        if field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            if value_field.message_type is not None:
                for key, item in value.items():
                    json_key = str(key).lower() if isinstance(key, bool) else str(key)
                    plain[field.name][json_key] = _converted(item, plain[field.name][json_key])
        elif field.is_repeated:
            plain[field.name] = [_converted(m, p) for m, p in zip(value, plain[field.name], strict=True)]
        else:
            plain[field.name] = _converted(value, plain[field.name])


def _converted(message: Message, plain: Any) -> Any:
    if message.DESCRIPTOR.full_name in _STRUCT_TYPES:
        return struct_json(message)
    if isinstance(plain, dict):  # (not a well-known type printed as a string: Timestamp, Duration...)
        _replace_structs(message, plain)
    return plain


def _timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=_positive_seconds, default=None, metavar="SECONDS",
                        help="waiting for the job: exit 1 after this long (default: until it ends, waiting out a "
                             "coordinator that is down)")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aitbc", description="AITBC coordinator client, miner and receipt tools"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    submit = commands.add_parser("submit", help="submit a job; prints it (with --wait, waits for its result)")
    submit.add_argument("payload", help="the job input as JSON, or @FILE")
    many = commands.add_parser("submit-many", help="submit jobs in one call, all or none (SubmitJobs): one job "
                                                   "input per JSON line; prints the jobs as JSON lines")  # fmt: skip
    many.add_argument("file", nargs="?", default="-", help="the JSON lines (default, or -: stdin)")
    for sub, key_help in (
        (submit, "default: a new one (auto-...), so that the submit is safely tried again"),
        (many, "KEY-LINE for the job of each line (default: a new KEY, auto-...), so that the submit is "
               "safely tried again: the same KEY and lines give the same jobs"),
    ):  # fmt: skip
        sub.add_argument("--priority", type=_uint32, default=0)
        sub.add_argument("--ttl", type=_duration_seconds, help="seconds in the queue before it expires")
        sub.add_argument("--max-attempts", type=_uint32, default=0, help="0: the coordinator's default")
        sub.add_argument("--idempotency-key", default="", metavar="KEY", help=key_help)
        sub.add_argument(
            "--constraints", default="{}", help='JSON, e.g. {"region": "eu-west", "min_vram_gb": 24}'
        )
        sub.add_argument("--wait", action="store_true")
        _timeout(sub)
    job_commands = {
        "get": "get a job", "result": "get a completed job's result", "cancel": "cancel a job",
        "watch": "print a job at each change until it finishes",
        "wait": "wait for a job to finish; print it (exit 1 unless it completed)",
    }  # fmt: skip
    for name, text in job_commands.items():
        p = commands.add_parser(name, help=text)
        p.add_argument("job_id")
        if name in ("watch", "wait"):
            _timeout(p)
    jobs = commands.add_parser("list", help="list your jobs")
    jobs.add_argument("--state", action="append", default=[], help="JOB_STATE_... name; repeatable")
    jobs.add_argument("--page-size", type=_uint32, default=20)
    jobs.add_argument("--page-token", default="")
    quote = commands.add_parser("quote", help="price a job before submitting it: the miners eligible now, "
                                              "their unit prices and the cost range (decimal strings)")  # fmt: skip
    quote.add_argument("--constraints", default="{}", help="JSON, as submit's")
    quote.add_argument("--units", default="", help='expected units of work, a decimal string (default: "1")')
    usage = commands.add_parser("usage", help="your usage account: balance, receipts and units booked")

    miner = commands.add_parser("miner", help="run a miner")
    miner_commands = miner.add_subparsers(dest="miner_command", required=True)
    run = miner_commands.add_parser("run", help="connect and run jobs until SIGTERM (drains) or SIGINT")
    run.add_argument(
        "--runner", default="echo", help="'echo', 'python:MODULE:FUNCTION', or 'cmd:COMMAND ...'"
    )
    run.add_argument("--slots", type=int, default=1)
    run.add_argument("--price", default="0")
    run.add_argument("--region", default="")
    run.add_argument("--model", action="append", default=[], help="a model served; repeatable")
    run.add_argument(
        "--gpu", action="append", default=[], help="MODEL:MEMORY_GB, overriding the probe; repeatable"
    )
    run.add_argument("--cuda", default="")
    run.add_argument("--label", action="append", default=[], help="KEY=VALUE; repeatable")
    run.add_argument("--timeout", type=_positive_seconds, default=None,
                     help="cmd runner: at most this many seconds per job (default: the job's execution timeout)")  # fmt: skip
    run.add_argument("--raw-output", action="store_true",
                     help="cmd runner: the result is stdout's bytes, even for a JSON job printing a JSON object")  # fmt: skip
    run.add_argument("--stuck-timeout", type=_positive_seconds, default=60.0, metavar="SECONDS",
                     help="python runner: drain and exit 1 once canceled jobs' callables have held every slot this "
                          "long (default: 60)")  # fmt: skip
    run.add_argument("--give-up-after", type=_positive_seconds, default=None, metavar="SECONDS",
                     help="exit 1 when the coordinator stays unreachable this long (default: keep trying)")  # fmt: skip
    run.add_argument("--welcome-timeout", type=_finite_positive_seconds, default=None, metavar="SECONDS",
                     help="a hello (or registration) unanswered this long: probe the connection, then "
                          "replace it (default: 20)")  # fmt: skip
    run.add_argument("--transport", choices=("stream", "poll"), default="stream",
                     help="stream: one long-lived Connect stream; poll: unary calls (long-polls), for a network "
                          "or proxy that cuts long HTTP/2 streams (default: stream)")  # fmt: skip
    run.add_argument("--signing-key-hex", default=os.environ.get("AITBC_MINER_SIGNING_KEY_HEX", ""),
                     help="Ed25519 seed to sign results with (AITBC_MINER_SIGNING_KEY_HEX)")  # fmt: skip

    add_admin_parser(commands, _common)  # aitbc admin stats|jobs|miners|drain|top|accounts|keys
    receipts = add_receipts_parser(commands)
    get = receipts.add_parser("get", help="fetch a job's receipt bundle (for `aitbc receipts verify`)")
    get.add_argument("job_id")
    get.add_argument("--out", help="write the bundle here (default: stdout)")
    keys = receipts.add_parser("keys", help="fetch the coordinator's key set (to pin for verification)")
    keys.add_argument("--out", help="write the key set here (default: stdout)")
    listed = receipts.add_parser("list", help="every receipt of a job, oldest first")
    listed.add_argument("job_id")
    checkpoint = receipts.add_parser(
        "checkpoint", help="fetch the log's latest signed checkpoint (for --older-checkpoint)"
    )
    checkpoint.add_argument("--out", help="write it here (default: stdout)")
    inclusion = receipts.add_parser("inclusion", help="fetch the inclusion proof of a leaf of the log")
    inclusion.add_argument("leaf_index", type=_not_negative)
    inclusion.add_argument(
        "--tree-size", type=_not_negative, default=0, help="default: the latest checkpoint's"
    )
    inclusion.add_argument("--out", help="write it here (default: stdout)")
    consistency = receipts.add_parser(
        "consistency", help="fetch the proof that the log extends an older size (for --consistency-proof)"
    )
    consistency.add_argument("first_size", type=_positive, help="the older checkpoint's tree size")
    consistency.add_argument("--second-size", type=_not_negative, default=0,
                             help="the newer tree size (default: the latest checkpoint's)")  # fmt: skip
    consistency.add_argument("--out", help="write it here (default: stdout)")
    for sub in (
        submit,
        many,
        jobs,
        quote,
        usage,
        run,
        get,
        keys,
        listed,
        checkpoint,
        inclusion,
        consistency,
        *(commands.choices[n] for n in ("get", "result", "cancel", "watch", "wait")),
    ):
        _common(sub)
    return parser


async def _jobs(args: argparse.Namespace) -> int:
    async with Client(args.address, args.api_key, **connection_options(args)) as client:
        if args.command == "submit":
            # the key made here, not by the client: should the submit fail unsure, the message can name it
            args.idempotency_key = args.idempotency_key or new_idempotency_key()
            job = await client.submit(_payload(args.payload), priority=args.priority, ttl_s=args.ttl,
                                      max_attempts=args.max_attempts, idempotency_key=args.idempotency_key,
                                      constraints=_constraints(args.constraints))  # fmt: skip
            if not args.wait:
                _print(job)
                return 0
            args.submitted_job_id = job.job_id  # a failure from here on is the wait's: the job is stored
            job = await client.wait(job.job_id, args.timeout)
            _print(await client.result(job.job_id) if job.state == JOB_STATE_COMPLETED else job)
            return 0 if job.state == JOB_STATE_COMPLETED else 1
        if args.command == "submit-many":
            return await _submit_many(client, args)
        if args.command == "get":
            _print(await client.get(args.job_id))
        elif args.command == "result":
            _print(await client.result(args.job_id))
        elif args.command == "cancel":
            _print(await client.cancel(args.job_id))
        elif args.command == "wait":  # exits as submit --wait does: a script can chain on success
            job = await client.wait(args.job_id, args.timeout)
            _print(job)
            return 0 if job.state == JOB_STATE_COMPLETED else 1
        elif args.command == "watch":
            try:
                async with asyncio.timeout(args.timeout):
                    async for update in client.watch(args.job_id):
                        _print(update)
            except TimeoutError:
                raise TimeoutError(f"job {args.job_id} not terminal after {args.timeout:g} s") from None
        elif args.command == "list":
            from .coordinator.v1 import job_pb2

            states = [_state(job_pb2, s) for s in args.state]
            _print(await client.list(states, args.page_size, args.page_token))
        elif args.command == "quote":
            _print(await client.quote(_constraints(args.constraints), args.units), zeros=True)
        elif args.command == "usage":
            _print(await client.usage(), zeros=True)
        elif args.command == "receipts":
            await _receipts(client, args)
    return 0


async def _submit_many(client: Client, args: argparse.Namespace) -> int:
    """`aitbc submit-many`: every line's job in one SubmitJobs (all or none), each under a key of its own
    (KEY-LINE: a retry after UNAVAILABLE, or the same command again, stores no job twice); the jobs printed as
    JSON lines, in the input's order. With --wait, then each job's result (or the job, not completed) as it
    would print for submit --wait, in the same order: exit 1 unless every job completed."""
    payloads = _json_lines(args.file)  # (read, and refused, before anything is sent)
    constraints = _constraints(args.constraints)
    # the key made here, not by the client: should the submit fail unsure, the message can name it
    args.idempotency_key = args.idempotency_key or new_idempotency_key()
    requests = [Client.request(payload, priority=args.priority, ttl_s=args.ttl, max_attempts=args.max_attempts,
                               idempotency_key=f"{args.idempotency_key}-{line}", constraints=constraints)
                for line, payload in payloads]  # fmt: skip
    jobs = await client.submit_requests(requests)
    for job in jobs:
        _print_line(job)
    if not args.wait:
        return 0
    args.submitted_job_ids = [job.job_id for job in jobs]  # a failure from here on is the wait's
    try:
        async with asyncio.timeout(args.timeout):
            ended = await asyncio.gather(*(client.wait(job.job_id) for job in jobs))
    except TimeoutError:
        raise TimeoutError(f"{len(jobs)} jobs not all terminal after {args.timeout:g} s") from None
    for job in ended:
        _print_line(await client.result(job.job_id) if job.state == JOB_STATE_COMPLETED else job)
    return 0 if all(job.state == JOB_STATE_COMPLETED for job in ended) else 1


def _print_line(message: Message) -> None:
    print(json.dumps(message_json(message), separators=(",", ":")), flush=True)


def _json_lines(path: str) -> list[tuple[int, dict[str, Any]]]:
    """The job inputs of a JSON lines file (- : stdin), each with its line number (from 1; blank lines are
    skipped). A line that is not a JSON object is refused with its number (exit 2)."""
    try:
        # JSON is UTF-8 (RFC 8259), whatever the locale says; universal newlines as text mode has them
        if path == "-" and sys.stdin is None:  # (fd 0 closed: `aitbc submit-many <&-`)
            raise UsageError("submit-many: no standard input (closed): give a FILE")
        raw = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
        text = raw.decode("utf-8-sig").replace("\r\n", "\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"submit-many: {exc}") from None
    # split at "\n" only ("\r\n" made one above): str.splitlines() also breaks at U+2028, U+2029 and U+0085,
    # which a JSON string may hold unescaped (json.dumps(..., ensure_ascii=False) writes them so)
    payloads = [
        (n, _json_object(line, f"line {n}")) for n, line in enumerate(text.split("\n"), 1) if line.strip()
    ]
    if not payloads:
        raise UsageError("submit-many: no job input (one JSON object per line)")
    return payloads


async def _receipts(client: Client, args: argparse.Namespace) -> None:
    """`aitbc receipts get|keys|list|checkpoint|inclusion|consistency` (verify runs offline, elsewhere). The
    checkpoint and the proofs are written as their RPC's answer in protobuf's JSON mapping (as grpcurl prints
    it, but with proto field names): what `aitbc receipts verify --older-checkpoint/--consistency-proof` read."""
    from .coordinator.v1 import receipt_service_pb2 as rpb

    command = args.receipts_command
    if command == "get":
        _write(await client.bundle(args.job_id), args.out)
    elif command == "keys":
        _write(await client.signing_keys(), args.out)
    elif command == "list":
        _print(rpb.ListReceiptsResponse(receipts=await client.list_receipts(args.job_id)))
    elif command == "checkpoint":
        answer: Message = rpb.GetCheckpointResponse(checkpoint=await client.checkpoint())
        _write(json.dumps(message_json(answer), indent=1).encode(), args.out)
    elif command == "inclusion":
        answer = rpb.GetInclusionProofResponse(
            proof=await client.inclusion_proof(args.leaf_index, args.tree_size)
        )
        _write(json.dumps(message_json(answer), indent=1).encode(), args.out)
    elif command == "consistency":
        proof = await client.consistency_proof(args.first_size, args.second_size)
        answer = rpb.GetConsistencyProofResponse(proof=rpb.ConsistencyProof(
            first_size=proof.first_size, second_size=proof.second_size, hashes=list(proof.hashes)))  # fmt: skip
        _write(json.dumps(message_json(answer), indent=1).encode(), args.out)


def _call_failed(exc: grpc.aio.AioRpcError | TimeoutError, args: argparse.Namespace) -> str:
    """What a failed call says (code, reason, field violations, retry delay; a wait's --timeout: the job's
    last state seen); for a submit --wait whose job was stored, the job's id (to follow it, not submit it
    again); for a submit that may have been stored, how to make it again safely (with its key)."""
    if isinstance(exc, TimeoutError):
        text, unsure = str(exc), False
    else:
        text = str(error_details(exc))
        # (CANCELLED: a stopping coordinator cut the call at its grace's end, perhaps after storing the job)
        unsure = exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                                grpc.StatusCode.CANCELLED)  # fmt: skip
    # submit --wait failing in its wait: the job is stored, and its id is nowhere else
    if submitted := getattr(args, "submitted_job_id", None):
        text += f" (job {submitted} was submitted: follow it with `aitbc wait {submitted}`)"
    elif submitted_many := getattr(args, "submitted_job_ids", None):
        text += f" (jobs {' '.join(submitted_many)} were submitted: follow them with `aitbc wait`)"
    elif args.command == "submit-many" and unsure and args.idempotency_key:
        text += (f" (the jobs may have been stored: submit the same lines again with --idempotency-key "
                 f"{args.idempotency_key} to get them, not second ones)")  # fmt: skip
    elif args.command == "submit" and unsure and args.idempotency_key:
        # its tries ran out at the deadline (DEADLINE_EXCEEDED, or a cut with no time left for another)
        text += (f" (the job may have been stored: submit again with --idempotency-key {args.idempotency_key}"
                 " to get it, not a second one)")  # fmt: skip
    return text


class UsageError(Exception):
    """Bad input on the command line: one line on stderr, exit 2 (no traceback, nothing sent)."""


def _json_object(text: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what}: not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise UsageError(f"{what}: a JSON object is needed, not {type(value).__name__}")
    return value


def _payload(arg: str) -> dict[str, Any]:
    if not arg.startswith("@"):
        return _json_object(arg, "payload")
    try:
        return _json_object(Path(arg[1:]).read_text(encoding="utf-8-sig"), f"payload file {arg[1:]}")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"payload file: {exc}") from None


def _constraints(arg: str) -> dict[str, Any]:
    from .coordinator.v1 import job_pb2

    value = _json_object(arg, "--constraints")
    known = ", ".join(f.name for f in job_pb2.Constraints.DESCRIPTOR.fields)
    if unknown := [name for name in value if name not in job_pb2.Constraints.DESCRIPTOR.fields_by_name]:
        raise UsageError(
            f'--constraints: Protocol message Constraints has no "{unknown[0]}" field (fields: {known})'
        )
    try:  # as protobuf's JSON mapping reads it: Constraints(**value) took "models": "llama" as "l", "l", ...
        constraints = json_format.ParseDict(value, job_pb2.Constraints())
    except json_format.ParseError as exc:
        raise UsageError(f"--constraints: {exc} (fields: {known})") from None
    return json_format.MessageToDict(constraints, preserving_proto_field_name=True)


def _state(job_pb2: Any, name: str) -> int:
    try:
        return job_pb2.JobState.Value(name if name.startswith("JOB_STATE_") else f"JOB_STATE_{name.upper()}")
    except ValueError:
        known = ", ".join(n.removeprefix("JOB_STATE_") for n in job_pb2.JobState.keys()[1:])
        raise UsageError(f"--state: unknown state {name!r} (one of {known})") from None


def _whole(text: str, least: int, most: int) -> int:
    """A whole number from least to most (most: what the flag's protobuf field holds; past it, protobuf's
    ValueError was a traceback)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number is needed, not {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be {least} or more, not {text}")
    if value > most:
        raise argparse.ArgumentTypeError(f"must be at most {most}, not {text}")
    return value


def _uint32(text: str) -> int:
    return _whole(text, 0, 2**32 - 1)


def _not_negative(text: str) -> int:  # (a uint64: a leaf index, a tree size)
    return _whole(text, 0, 2**64 - 1)


def _positive(text: str) -> int:
    return _whole(text, 1, 2**64 - 1)


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number of seconds is needed, not {text!r}") from None


# google.protobuf.Duration's range: past it, Duration.FromMilliseconds' int64 overflowed (a traceback)
MAX_DURATION_S = 315_576_000_000


def _duration_seconds(text: str) -> float:
    """A Duration's seconds (--ttl): finite, within Duration's range; its sign and limits are the coordinator's
    to check."""
    value = _seconds(text)
    if not -MAX_DURATION_S <= value <= MAX_DURATION_S:  # (NaN fails both)
        raise argparse.ArgumentTypeError(
            f"a finite number of seconds (at most {MAX_DURATION_S}) is needed, not {text}"
        )
    return value


def _positive_seconds(text: str) -> float:
    value = _seconds(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, not {text}")
    return value


def _finite_positive_seconds(text: str) -> float:
    """More than 0 and finite: the connection's settings become milliseconds (an int) or timers."""
    value = _seconds(text)
    if not (0 < value < math.inf):
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds (and finite), not {text}")
    return value


def _keepalive_seconds(text: str) -> float:
    value = _seconds(text)
    # the coordinator answers pings more frequent than its minimum with too_many_pings (GOAWAY)
    if not (SERVER_MIN_PING_INTERVAL_S < value < math.inf):
        raise argparse.ArgumentTypeError(
            f"must be more than {SERVER_MIN_PING_INTERVAL_S:g} seconds (the coordinator's least ping "
            f"interval), not {text}"
        )
    return value


def _reconnect_seconds(text: str) -> float:
    value = _seconds(text)
    if not (1.0 <= value < math.inf):  # (gRPC's first reconnect waits 1 s)
        raise argparse.ArgumentTypeError(f"must be at least 1 second, not {text}")
    return value


def _connection_flags_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with the connection flags taken together (each alone is checked by its type), if any."""
    if not hasattr(args, "tls_server_name"):  # (a command that connects to nothing: receipts verify)
        return None
    if args.tls_server_name and not (args.tls or args.tls_ca or args.tls_cert):
        return "--tls-server-name needs TLS (--tls, --tls-ca or --tls-cert), not a plaintext connection"
    if bool(args.tls_cert) != bool(args.tls_key):
        return "--tls-cert and --tls-key go together (mutual TLS)"
    return None


def _write(data: bytes, path: str | None) -> None:
    if path:
        try:
            Path(path).write_bytes(data)
        except OSError as exc:  # (a missing directory, a directory: was a traceback)
            raise UsageError(f"--out: cannot write {path}: {exc.strerror or exc}") from None
    else:
        sys.stdout.write(data.decode() + "\n")


def _runner(spec: str, timeout: float | None, raw_output: bool = False):  # type: ignore[no-untyped-def]
    from . import miner

    if spec == "echo":
        return miner.echo_runner
    if spec.startswith("python:"):
        import importlib

        module, _, function = spec[len("python:") :].rpartition(":")
        if not module or not function:
            raise UsageError(f"--runner: python:MODULE:FUNCTION is needed, not {spec!r}")
        # As `python -m` does: a module beside where the miner starts is found (the console script's
        # sys.path has its own directory instead).
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            loaded = importlib.import_module(module)
        except ImportError as exc:
            raise UsageError(f"--runner: cannot import {module}: {exc}") from None
        if not callable(target := getattr(loaded, function, None)):
            raise UsageError(f"--runner: module {module} has no {function} to call")
        return miner.python_runner(target)
    if spec.startswith("cmd:"):
        import shlex

        command = _paths_made_absolute(shlex.split(spec[len("cmd:") :]))
        return miner.subprocess_runner(command, timeout, json_results=not raw_output)
    raise UsageError(f"unknown runner {spec!r} (echo, python:MODULE:FUNCTION or cmd:COMMAND)")


def _paths_made_absolute(words: list[str]) -> list[str]:
    """The command's words naming files or directories relative to where the miner starts, made absolute: the
    command runs in each job's workspace ('cmd:python3 my_worker.py', 'cmd:./worker.sh' would find nothing).
    Not '.' or '..' (also spelled './'): those name the workspace, or its parent, for the command."""
    relative = [w and not w.startswith("-") and not os.path.isabs(w) and os.path.normpath(w) not in (".", "..")
                and os.path.exists(w) for w in words]  # fmt: skip
    return [os.path.abspath(w) if r else w for w, r in zip(words, relative, strict=True)]


def _gpu(text: str) -> tuple[str, int]:
    model, _, memory = text.rpartition(":")
    if not model or not memory.isdigit():
        raise UsageError(f"--gpu: MODEL:MEMORY_GB is needed (e.g. A100:80), not {text!r}")
    return model, int(memory)


async def _miner(args: argparse.Namespace) -> int:
    from .miner import MAX_SLOTS, Miner, RunnersStuck, install_signal_handlers, probe_capabilities
    from .receipts import Signer

    if bad := [kv for kv in args.label if "=" not in kv]:
        raise UsageError(f"--label: KEY=VALUE is needed, not {bad[0]!r}")
    if not 1 <= args.slots <= MAX_SLOTS:  # (a negative one was protobuf's ValueError, with a traceback)
        raise UsageError(f"--slots: 1 to {MAX_SLOTS} jobs at once, not {args.slots}")
    try:
        signer = Signer(args.signing_key_hex) if args.signing_key_hex else None
    except ValueError as exc:  # (the key is secret: not echoed)
        raise UsageError(f"--signing-key-hex: {exc} (64 hex characters: an Ed25519 seed)") from None
    overrides: dict[str, Any] = {"price": args.price, "region": args.region, "models": args.model,
                                 "cuda_version": args.cuda, "labels": dict(kv.split("=", 1) for kv in args.label)}  # fmt: skip
    if args.gpu:
        overrides["gpus"] = [_gpu(g) for g in args.gpu]
    miner = Miner(args.address, args.api_key, _runner(args.runner, args.timeout, args.raw_output),
                  probe_capabilities(args.slots, **overrides),
                  signer=signer,
                  unreachable_timeout_s=args.give_up_after, stuck_timeout_s=args.stuck_timeout,
                  transport=args.transport, **_welcome_timeout(args),
                  **connection_options(args))  # fmt: skip
    install_signal_handlers(miner)
    try:
        await miner.run()
    except RunnersStuck as exc:  # for a supervisor to start the miner again (its stuck threads go with it)
        print(f"aitbc: {exc}", file=sys.stderr)
        return 1
    return 0


def _welcome_timeout(args: argparse.Namespace) -> dict[str, float]:
    """Miner's welcome_timeout_s from --welcome-timeout; not given: the Miner's default."""
    return {} if args.welcome_timeout is None else {"welcome_timeout_s": args.welcome_timeout}


# What a shell reports for a process killed by SIGPIPE (Python ignores the signal: its writes fail instead).
EXIT_OUTPUT_CLOSED = 128 + signal.SIGPIPE


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if problem := _connection_flags_problem(args):  # (before anything connects; for `aitbc admin` too)
        print(f"aitbc: {problem}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="ts=%(asctime)s level=%(levelname)s %(name)s %(message)s")
    if args.command == "miner":  # (it writes nothing on stdout: a broken pipe of its own is reported below)
        try:
            return _reported(args, _miner)
        except ConnectionError as exc:  # the miner's CoordinatorUnreachable (--give-up-after)
            print(f"aitbc: {exc}", file=sys.stderr)
            return 1
    try:
        code = _printing_command(args)
        sys.stdout.flush()  # a reader gone shows here, not in the interpreter's flush at exit (which prints it)
    except BrokenPipeError:  # stdout's reader gone (`aitbc watch ID | head -1`): end quietly, as `cat` does
        _discard_stdout()
        return EXIT_OUTPUT_CLOSED
    return code


def _printing_command(args: argparse.Namespace) -> int:
    if args.command == "admin":
        return args.func(args)
    if args.command == "receipts" and args.receipts_command == "verify":
        return args.func(args)
    return _reported(args, _jobs)


def _reported(args: argparse.Namespace, command: Callable[[argparse.Namespace], Awaitable[int]]) -> int:
    """Runs command; a failed call, a wait's --timeout or bad input as one line on stderr and its exit code."""
    try:
        return asyncio.run(command(args))
    except (grpc.aio.AioRpcError, TimeoutError) as exc:  # (TimeoutError: a wait's --timeout)
        print(f"aitbc: {_call_failed(exc, args)}", file=sys.stderr)
        return 1
    except UsageError as exc:
        print(f"aitbc: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # submit --wait interrupted in its wait: the job is stored, and its id is printed nowhere else
        if submitted := getattr(args, "submitted_job_id", None):
            print(f"aitbc: interrupted (job {submitted} was submitted: follow it with `aitbc wait {submitted}`)",
                  file=sys.stderr)  # fmt: skip
        return 130


def _discard_stdout() -> None:
    """Points stdout's descriptor at /dev/null: what is left in its buffer goes there at exit, unreported."""
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):  # (not a file: nothing is flushed to a descriptor at exit)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


if __name__ == "__main__":
    raise SystemExit(main())
