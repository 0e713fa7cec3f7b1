"""The Python miner runtime: holds one Connect stream, runs jobs up to its slots, survives reconnects.

Jobs keep running across a lost stream; the next Hello lists them, so the coordinator lets the miner keep
them if it is back within the grace period. While the coordinator is unreachable the miner waits for its
channel to connect again (the channel retries on its own bounded backoff); other failures are retried with
jittered exponential backoff so a fleet does not stampede a restarted coordinator.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import contextvars
import dataclasses
import hashlib
import inspect
import json
import logging
import numbers
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import struct_pb2
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from .channel import auth_metadata, check_channel_settings, open_channel
from .coordinator.v1 import job_pb2, miner_service_pb2, miner_service_pb2_grpc
from .receipts import Signer, build_miner_report, canonical_struct, decode_strict, sign_miner_report
from .signing import SigningChannel
from .tracing import job_span, with_trace_context

log = logging.getLogger("aitbc.miner")

Output = dict[str, Any] | bytes


@dataclass
class Outcome:
    """What a runner returns: the output and the units of work it took; raw: the same output as bytes, the
    result instead should a structured output be larger than a result may be (a Struct holds a number in 9
    bytes and more: a command's printed JSON can grow several times over)."""

    output: Output
    units: str = "0"
    unit_type: str = "gpu_seconds"
    raw: bytes | None = None


Runner = Callable[[job_pb2.Job], Awaitable[Outcome | Output]]


class JobFailed(Exception):
    """Raised by a runner for a failure; retryable=False fails the job for good."""

    def __init__(self, code: str, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.code, self.retryable = code, retryable


def job_input(job: job_pb2.Job) -> Output:
    """The job's input: its bytes, or its JSON as the cmd runner's command reads it (canonical JSON): a Struct
    holds every number as a double, and the client's 3 is 3 again here, not 3.0."""
    if job.WhichOneof("input") == "payload_bytes":
        return job.payload_bytes
    try:
        return _plain_struct(
            job.payload
        )  # the same value, without printing and parsing JSON (a third of the cost)
    except _NeedsCanonicalJson:
        return json.loads(canonical_struct(MessageToDict(job.payload)))


INLINE_ENCODE_ITEMS = (
    4096  # a result of fewer values (a string counting one per 256 characters) is encoded on the loop
)
INLINE_ENCODE_BYTES = 1 << 20  # and a bytes result up to this size


def _small(output: Any) -> bool:
    """Whether output is cheap to encode (well under a millisecond): counted with an early exit."""
    if isinstance(output, bytes | bytearray):
        return len(output) <= INLINE_ENCODE_BYTES
    budget = INLINE_ENCODE_ITEMS
    stack = [output]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            budget -= len(item)
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            budget -= len(item)
            stack.extend(item)
        elif isinstance(item, str):
            budget -= len(item) >> 8
        if budget < 0:
            return False
    return True


class _NeedsCanonicalJson(Exception):
    """A number whose canonical JSON form is not simply the double or its integer (an integral double of 2^53
    or more, printed with ECMAScript's digits; NaN or an infinity, refused)."""


def _plain_struct(struct: struct_pb2.Struct) -> dict[str, Any]:
    """struct as json.loads(canonical JSON) gives it: integral doubles below 2^53 as ints, keys in canonical
    order (by code point)."""
    return {k: _plain_value(struct.fields[k]) for k in sorted(struct.fields)}


def _plain_value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        n = value.number_value
        if n.is_integer():
            if abs(n) >= 2**53:
                raise _NeedsCanonicalJson
            return int(n)
        if n != n or n in (float("inf"), float("-inf")):
            raise _NeedsCanonicalJson
        return n
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return _plain_struct(value.struct_value)
    if kind == "list_value":
        return [_plain_value(item) for item in value.list_value.values]
    return None


async def echo_runner(job: job_pb2.Job) -> Outcome:
    """Returns the job's input as its result (demos and tests)."""
    return Outcome(job_input(job), units="1", unit_type="jobs")


def python_runner(fn: Callable[[Output], Any]) -> Runner:
    """A runner calling fn(input) in a thread of its own; fn returns a dict, bytes or an Outcome (or an
    awaitable of one: an async fn is awaited on the miner's loop).

    The thread is a daemon, not one of the loop's default pool: a call that never returns (its job canceled
    by the coordinator on its execution timeout) holds its thread, not one of a handful the next jobs queue
    for, nor the process's exit. A thread cannot be stopped: canceled, the runner returns only once fn has
    (canceled again, at once), so that the miner counts the slot busy as long as fn runs. A BaseException out
    of fn (sys.exit(), KeyboardInterrupt: never a real signal in a thread) fails its job; let out of the
    thread, asyncio would re-raise it from the loop, ending the miner."""

    async def run(job: job_pb2.Job) -> Outcome:
        loop = asyncio.get_running_loop()
        started = loop.time()
        # (its input decoded in the thread too: seconds for MBs of JSON, off the loop, which serves the stream)
        out = await _in_daemon_thread(lambda: fn(job_input(job)), f"aitbc-job-{job.job_id[:8]}")
        if inspect.isawaitable(out):
            out = await out
        if isinstance(out, Outcome):
            return out
        return Outcome(out, units=f"{loop.time() - started:.6f}", unit_type="cpu_seconds")

    return run


async def _in_daemon_thread(call: Callable[[], Any], name: str) -> Any:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()
    ended: asyncio.Future[None] = loop.create_future()  # fn returned (or raised), whatever became of the job
    context = contextvars.copy_context()  # (as asyncio.to_thread: the job's trace span)

    def settle(value: Any, exc: BaseException | None) -> None:
        if not ended.done():
            ended.set_result(None)
        if future.done():  # the job was canceled meanwhile
            return
        if exc is None:
            future.set_result(value)
        elif isinstance(exc, Exception):
            future.set_exception(exc)
        else:
            future.set_exception(JobFailed("RUNNER_ERROR", f"the callable raised {exc!r}"))

    def work() -> None:
        value, exc = None, None
        try:
            value = context.run(call)
        except BaseException as e:  # handed to the loop, which decides
            exc = e
        try:
            loop.call_soon_threadsafe(settle, value, exc)
        except RuntimeError:  # the loop is closed: the miner has ended
            pass

    threading.Thread(target=work, name=name, daemon=True).start()
    try:
        return await future
    except asyncio.CancelledError:
        await ended  # the thread still holds its slot (a second cancel: given up on at once)
        raise


EX_DATAERR = 65  # sysexits.h: a command exiting with it says its input is wrong (INVALID_INPUT, for good)
STDERR_TAIL_BYTES = 64 << 10  # the end of a command's stderr kept for its failure message
PIPES_GRACE_S = 5.0  # the command and its process group gone: how long its pipes may take to close
KILLED_EXIT_WAIT_S = 5.0  # a SIGKILLed command: how long its end may take to be seen (the kernel ends it)


class _Collect(asyncio.SubprocessProtocol):
    """A command's stdout up to max_stdout bytes (past that: its process group killed, and nothing more kept)
    and the tail of its stderr: what it prints costs the miner no more, however much that is."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_stdout: int) -> None:
        self.stdout, self.stderr = bytearray(), bytearray()
        self.max_stdout, self.too_much, self.pid = max_stdout, False, 0
        self.exited: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()  # stdout and stderr both
        self._open = {1, 2}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # (before any data)
        assert isinstance(transport, asyncio.SubprocessTransport)
        self.pid = transport.get_pid()

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        if fd == 2:
            self.stderr += data
            if len(self.stderr) > 2 * STDERR_TAIL_BYTES:
                del self.stderr[:-STDERR_TAIL_BYTES]
        elif not self.too_much:
            self.stdout += data
            if len(self.stdout) > self.max_stdout:
                self.too_much = True
                self.stdout = bytearray()
                _kill_group(self.pid)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self._open.discard(fd)
        if not self._open and not self.closed.done():
            self.closed.set_result(None)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)


def _kill_group(pgid: int) -> None:
    if pgid <= 0:  # (0 or -1 would be this process's own group, or every process)
        return
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


PROC = "/proc"  # the reaper finds the miner's commands there; without it (not Linux) commands run unguarded
MINER_TOKEN_VARIABLE = "AITBC_MINER_TOKEN"  # in every command's environment: this miner's token
_REAPER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "command_reaper.py")
REAPER_EXIT_WAIT_S = 1.0  # at this process's exit: how long its reaper may take to scan and end, to be reaped


@dataclass
class _Reaper:
    """This process's command reaper (see aitbc.command_reaper) and the write end of its stdin pipe, held by
    this process alone (close-on-exec: no command inherits it; closed in an os.fork'ed child)."""

    process: subprocess.Popen[bytes]
    write_end: int


_reaper_lock = threading.Lock()
_reaper: _Reaper | None = None
_miner_token = secrets.token_hex(16)  # marks this process's commands, and all they start, for its reaper
_unguarded_logged = False


def _forget_reaper() -> None:
    """In a child forked from the miner: its copy of the write end would keep the miner's commands running after
    the miner died, for as long as the child lives; and commands it starts are its own, with a token of its own
    (its parent's reaper must not kill them, nor it wait for that reaper)."""
    global _reaper, _reaper_lock, _miner_token
    _reaper_lock = threading.Lock()  # (held by another thread at the fork, perhaps)
    if _reaper is not None:
        with contextlib.suppress(OSError):
            os.close(_reaper.write_end)
        _reaper = None
    _miner_token = secrets.token_hex(16)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_reaper)


def _log_unguarded_once(reason: str, level: int) -> None:
    global _unguarded_logged
    if not _unguarded_logged:
        _unguarded_logged = True
        log.log(level, "cmd runner: commands are not killed with the miner if it dies (%s)", reason)


def _why_no_reaper() -> tuple[str, int] | None:
    """Why this process cannot or need not have a reaper (and the level to log it at), or None."""
    if os.getpid() == 1:  # (PID 1's end ends every process of its namespace: nothing to reap)
        return "the miner is PID 1", logging.DEBUG
    if not os.path.isdir(os.path.join(PROC, "self")):
        return f"no {PROC}", logging.INFO
    if getattr(sys, "frozen", False) or not sys.executable or not os.path.isfile(_REAPER_SCRIPT):
        return "no Python interpreter to run the reaper with", logging.INFO
    return None


def _start_reaper() -> _Reaper:
    """The reaper, blocked on a pipe whose write end this process alone holds. Its own session (no signal to a
    command's group or the miner's reaches it), its working directory / (it holds no mount busy), no token in its
    own environment (a miner started by another miner's command: the outer reaper must not kill this one)."""
    read_end, write_end = os.pipe()  # (both close-on-exec: dup'ed onto the reaper's stdin alone)
    env = {k: v for k, v in os.environ.items() if k != MINER_TOKEN_VARIABLE}
    try:
        process = subprocess.Popen(
            [sys.executable, "-I", _REAPER_SCRIPT, _miner_token],
            stdin=read_end, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            cwd="/", env=env, start_new_session=True,
        )  # fmt: skip
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    return _Reaper(process, write_end)


def _ensure_reaper() -> None:
    """Starts this process's reaper at its first command, and again if it died (reaped here: no zombie); logs
    once when commands run unguarded."""
    global _reaper
    with _reaper_lock:
        if _reaper is not None:
            if _reaper.process.poll() is None:
                return
            log.warning(
                "cmd runner: the command reaper ended (returncode %s); starting another",
                _reaper.process.returncode,
            )
            os.close(_reaper.write_end)
            _reaper = None
        unguarded = _why_no_reaper()
        if unguarded is not None:
            _log_unguarded_once(*unguarded)
            return
        try:
            _reaper = _start_reaper()
        except OSError as exc:
            _log_unguarded_once(f"the reaper could not start: {exc}", logging.WARNING)


@atexit.register
def _close_reaper() -> None:
    """At this process's exit: the reaper reads EOF, kills what carries the token (nothing, as a rule: each
    command's group went with its job) and ends; reaped here, not left a zombie to a parent that only reaps us."""
    global _reaper
    with _reaper_lock:
        reaper, _reaper = _reaper, None
    if reaper is None:
        return
    with contextlib.suppress(
        OSError
    ):  # (a word first: exiting, no command is being started, one scan will do)
        os.write(reaper.write_end, b"exit\n")
    os.close(reaper.write_end)
    with contextlib.suppress(subprocess.TimeoutExpired):
        reaper.process.wait(REAPER_EXIT_WAIT_S)


def _time_limit(job: job_pb2.Job, timeout_s: float | None) -> float | None:
    """How long a command may run: the job's own execution timeout, or timeout_s if that is shorter (a
    miner-wide limit must not cut short a job its client gave longer; the coordinator cancels it at its own)."""
    own = job.execution_timeout.ToMilliseconds() / 1000 if job.HasField("execution_timeout") else 0.0
    limits = [t for t in (own, timeout_s) if t is not None and t > 0]  # (0 or less: no limit of its own)
    return min(limits) if limits else None


def subprocess_runner(
    command: list[str],
    timeout_s: float | None = None,
    max_output_bytes: int = (8 << 20) - (64 << 10),
    json_results: bool = True,
) -> Runner:
    """Runs command in a fresh workspace per job: the input on stdin (JSON or bytes), the result from stdout.

    JSON in, JSON out: for a job whose input is JSON, stdout holding one JSON object is the structured result
    (see _stdout_result); anything else, and everything with json_results=False, is the result's bytes.

    It may run for the job's execution timeout, or timeout_s if that is shorter (None, 0 or less: the job's alone).
    The command runs in a process group of its own (a new session), SIGKILLed as a whole when the job ends:
    on its timeout, its cancellation, stdout past max_output_bytes (a RESULT_TOO_LARGE failure), and once the
    command has exited (what it left running in the background goes with it, and holds no pipe open); and
    when this process dies, however: this process's one reaper (aitbc.command_reaper) then kills every process
    carrying its token, AITBC_MINER_TOKEN, which each command gets in its environment, with its group. Exit
    status 65 (EX_DATAERR) says the input is wrong: the job fails for good (INVALID_INPUT), any other but 0
    fails it retryable (EXIT_STATUS). Only the last STDERR_TAIL_BYTES of stderr are kept (the end of them in a
    failure's message)."""

    async def run(job: job_pb2.Job) -> Outcome:
        data = job.payload_bytes
        if job.WhichOneof("input") != "payload_bytes":  # (seconds for MBs of JSON: off the loop)
            data = await asyncio.to_thread(lambda: canonical_struct(MessageToDict(job.payload)))
        loop = asyncio.get_running_loop()
        started = loop.time()
        workspace = tempfile.mkdtemp(prefix=f"aitbc-job-{job.job_id[:8]}-")
        pgid = 0
        transport: asyncio.SubprocessTransport | None = None
        out: _Collect | None = None
        try:
            env = {**os.environ, "AITBC_JOB_ID": job.job_id, "AITBC_WORKSPACE": workspace}
            env[MINER_TOKEN_VARIABLE] = _miner_token  # (its reaper's mark: the command and all it starts)
            _ensure_reaper()  # (before the command: a miner dying as it starts it is seen too)
            try:
                transport, out = await loop.subprocess_exec(
                    lambda: _Collect(loop, max_output_bytes), *command,
                    cwd=workspace, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    env=env, start_new_session=True,
                )  # fmt: skip
            except OSError as exc:  # not found, not executable: this miner's setup (another may have it)
                raise JobFailed("COMMAND_NOT_STARTED", f"{command[0]}: {exc.strerror or repr(exc)}") from None
            pgid = transport.get_pid()
            stdin = transport.get_pipe_transport(0)
            if stdin is not None:
                stdin.write(data)  # (a command not reading its input: the pipe closes, nothing waits on it)
                stdin.write_eof()
            limit = _time_limit(job, timeout_s)
            try:
                await asyncio.wait_for(asyncio.shield(out.exited), limit)
            except TimeoutError:
                raise JobFailed("TIMEOUT", f"the command ran longer than {limit:g} s") from None
            _kill_group(pgid)  # what it left running: the pipes it holds close, and it ends with the job
            await asyncio.wait({out.closed}, timeout=PIPES_GRACE_S)  # (one may have left the group: setsid)
            returncode = transport.get_returncode()
            if out.too_much:
                too_large = f"the command printed more than {max_output_bytes} bytes"
                raise JobFailed("RESULT_TOO_LARGE", too_large, retryable=False)
            if returncode != 0:
                tail = bytes(out.stderr[-2000:]).decode(errors="replace")[-500:]
                if returncode == EX_DATAERR:  # the same input would fail on every miner: not run again
                    raise JobFailed("INVALID_INPUT", f"exit {returncode} (its input refused): {tail}", False)
                raise JobFailed("EXIT_STATUS", f"exit {returncode}: {tail}")
            json_in = job.WhichOneof("input") != "payload_bytes"
            output = None
            if json_results and json_in:  # (seconds of CPU for MBs of JSON: off the loop, serving the stream)
                output = await asyncio.to_thread(_stdout_result, bytes(out.stdout), max_output_bytes)
            units = f"{loop.time() - started:.6f}"
            if output is None:
                return Outcome(bytes(out.stdout), units=units, unit_type="cpu_seconds")
            return Outcome(output, units=units, unit_type="cpu_seconds", raw=bytes(out.stdout))
        finally:  # done, failed, timed out or canceled: the group goes, and the workspace
            try:
                if pgid:
                    _kill_group(pgid)
                if out is not None:
                    # Killed is not gone: a SIGKILLed process still runs until the kernel ends it (on a busy
                    # machine, often after this returns). A job canceled to be given back may start on another
                    # miner as soon as it is: this command must have ended by then.
                    await asyncio.wait({out.exited}, timeout=KILLED_EXIT_WAIT_S)
            finally:
                if transport is not None:
                    transport.close()
                shutil.rmtree(workspace, ignore_errors=True)

    return run


def _stdout_result(stdout: bytes, max_bytes: int) -> dict[str, Any] | None:
    """stdout as a structured result, if it is one JSON object (whitespace around it allowed) that a result's
    Struct holds exactly, in max_bytes at most; None otherwise (its bytes are the result). Not when it repeats a
    key, holds NaN or an infinity, or a number a Struct's doubles would change (an integer past 2^53), or nests
    deeper than the coordinator takes a result."""
    if not stdout.lstrip().startswith(b"{"):
        return None
    try:
        value = decode_strict(stdout)
        if _depth(value) > MAX_STRUCT_DEPTH:
            return None
        struct = struct_pb2.Struct()
        struct.update(value)
        if struct.ByteSize() > max_bytes:  # no result may be that large: spared reading it back
            return None
        held = MessageToDict(struct_pb2.Struct.FromString(struct.SerializeToString()))
        canonical_struct(held)  # (no NaN, no infinity)
    except Exception:  # not JSON, not an object, too deep for protobuf, not Unicode
        return None
    return held if held == value else None


def _depth(value: Any, level: int = 1) -> int:
    """How deep value nests, as the coordinator counts (an object of scalars: 2)."""
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
    if items is None:
        return level
    return max([level, *(_depth(item, level + 1) for item in items)])


# MinerCapabilities.slots: 0 (one) to 1024 (the contract: the coordinator refuses a hello past it)
MAX_SLOTS = 1024
_UINT32 = 1 << 32


def _check_number(name: str, value: Any, rule: str, ok: Callable[[Any], bool]) -> None:
    """value a number (not a bool) for which ok holds (never NaN), or a TypeError or ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, {rule}, not {value!r}")
    if value != value or not ok(value):
        raise ValueError(f"{name} must be {rule}, not {value!r}")


def _check_count(name: str, value: Any, least: int, most: int) -> None:
    """value an int (not a bool) from least to most, or a TypeError or ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, {least} to {most}, not {value!r}")
    if not least <= value <= most:
        raise ValueError(f"{name} must be {least} to {most}, not {value!r}")


def _check_overrides(overrides: dict[str, Any]) -> None:
    """probe_capabilities' overrides of the types its fields take, or a TypeError or ValueError naming the field
    (protobuf's own errors name none: "bad argument type for built-in operation"; a str of models was taken as a
    list of one-character models)."""
    for key, value in overrides.items():
        if key in ("price", "region", "cuda_version"):
            if not isinstance(value, str):
                raise TypeError(f"{key} must be a str, not {value!r}")
        elif key == "models":
            if isinstance(value, str | bytes) or not isinstance(value, list | tuple | set | frozenset):
                raise TypeError(f"models must be a list of str, not {value!r}")
            if bad := [m for m in value if not isinstance(m, str)]:
                raise TypeError(f"models must be a list of str, not one holding {bad[0]!r}")
        elif key == "labels":  # (a dict, or (key, value) pairs: what MessageMap.update takes)
            try:
                pairs = dict(value).items()
            except (TypeError, ValueError):
                pairs = None
            if pairs is None or not all(isinstance(k, str) and isinstance(v, str) for k, v in pairs):
                raise TypeError(f"labels must be a dict of str to str, not {value!r}")
        elif key == "gpus":
            if isinstance(value, str | bytes):
                raise TypeError(f"gpus must be a list of (model, memory_gb) pairs, not {value!r}")
            for gpu in value:
                if not (isinstance(gpu, tuple | list) and len(gpu) == 2 and isinstance(gpu[0], str)):
                    raise TypeError(
                        f"gpus must be a list of (model, memory_gb) pairs, not one holding {gpu!r}"
                    )
                _check_count(f"gpus[{gpu[0]!r}] memory_gb", gpu[1], 0, _UINT32 - 1)
        elif key in ("cpu_cores", "memory_gb"):
            _check_count(key, value, 0, _UINT32 - 1)


def probe_capabilities(slots: int = 1, **overrides: Any) -> miner_service_pb2.MinerCapabilities:
    """GPUs from nvidia-smi when present; CPU cores and memory otherwise. slots: 1 to MAX_SLOTS (0 means 1);
    overrides: price, region and cuda_version (str), models (a list of str), labels (a dict of str to str), gpus
    ((model, memory_gb) pairs), cpu_cores and memory_gb. A value of another type, or out of range, is refused at
    once (a TypeError or ValueError naming it); the coordinator checks the rest (a price's format) at the hello."""
    _check_count("slots", slots, 0, MAX_SLOTS)
    _check_overrides(overrides)
    caps = miner_service_pb2.MinerCapabilities(slots=slots, cpu_cores=os.cpu_count() or 1)
    try:
        caps.memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 30)
    except (ValueError, OSError):
        pass
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=10, check=True,
            ).stdout  # fmt: skip
            for line in out.strip().splitlines():
                name, mem = (part.strip() for part in line.rsplit(",", 1))
                caps.gpus.add(model=name, memory_gb=int(float(mem)) // 1024)
        except (subprocess.SubprocessError, ValueError):
            log.warning("nvidia-smi present but unreadable; reporting no GPUs")
    for key, value in overrides.items():
        if key == "gpus":
            del caps.gpus[:]
            for model, memory in value:
                caps.gpus.add(model=model, memory_gb=memory)
        elif key in ("models",):
            caps.models[:] = value
        elif key == "labels":
            caps.labels.update(value)
        else:
            setattr(caps, key, value)
    return caps


class CoordinatorUnreachable(ConnectionError):
    """The coordinator stayed unreachable longer than the miner's `unreachable_timeout_s`."""


class RunnersStuck(RuntimeError):
    """Every slot is held by the runner of a canceled job that did not return (a python callable stuck: a
    thread cannot be stopped). The miner drained; run() raises this for a supervisor to start it again."""


@dataclass
class _Running:
    attempt: int
    task: asyncio.Task


@dataclass
class Miner:
    address: str
    api_key: str
    runner: Runner = echo_runner
    capabilities: miner_service_pb2.MinerCapabilities = field(default_factory=probe_capabilities)
    signer: Signer | None = None
    backoff_base_s: float = 0.2
    backoff_max_s: float = 15.0
    own_connection: bool = False
    hmac_secret: str | bytes | None = None  # sign every call with the key's signing secret
    tls_ca: bytes | str | None = None  # TLS: the CA to trust (PEM or path); tls_cert/tls_key: mutual TLS
    tls_cert: bytes | str | None = None
    tls_key: bytes | str | None = None
    channel: grpc.aio.Channel | None = None  # share one channel among many miners; run() leaves it open
    # draining with nothing left to run: how long to wait for the acks of the last results (the coordinator
    # may be gone for good) before giving up on them
    drain_ack_timeout_s: float = 60.0
    # how long the coordinator may stay unreachable (no connection at all) before run() raises
    # CoordinatorUnreachable, for a supervisor to see; None: wait for good, as a daemon should by default
    unreachable_timeout_s: float | None = None
    # the largest result sent as such (larger: a RESULT_TOO_LARGE failure); open_channel's send limit less the
    # message's framing: raise it with a channel of your own that sends more. A channel of your own that sends
    # less (grpc.max_send_message_length) is learned from its first refusal: larger results fail at once then
    max_result_bytes: int = (8 << 20) - (64 << 10)
    # how long the runners of canceled jobs (python callables: a thread cannot be stopped) may hold every slot
    # before the miner drains and run() raises RunnersStuck, for a supervisor to start it again
    stuck_timeout_s: float = 60.0
    # "stream": one Connect stream per session; "poll": the unary RPCs (RegisterMiner, PollJob, Heartbeat,
    # SubmitResult...; aitbc.miner_poll), for a network that cuts long-lived HTTP/2 streams
    transport: str = "stream"
    # poll transport: how long each PollJob waits for work (the coordinator waits 60 s at most); below a proxy's
    # idle or request timeout
    poll_wait_s: float = 20.0
    # how long a stream's hello waits for its welcome before the connection is probed (and as long for the probe's
    # answer: then it is stale, see _watch_connection); well above the welcome's delay in a reconnect storm (10,000
    # miners at once: under 15 s here), where an early probe per miner is load the coordinator does not need
    welcome_timeout_s: float = 20.0
    # open_channel's other settings (keepalive_s, keepalive_timeout_s, reconnect_max_s, tls, tls_server_name) for the
    # connections the miner opens: its own, and each one replacing a stale connection (a channel of the caller's
    # cannot be read: one replacing it is opened from address, the tls_* fields and these)
    channel_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check_arguments()
        self.running: dict[str, _Running] = {}
        # jobs canceled (by the coordinator, or not resumed by a welcome) whose runner has not returned yet, with
        # when: each holds its slot (a python callable's thread runs on until it returns)
        self._canceled: dict[asyncio.Task, float] = {}
        self._offered_slots = 0  # what the coordinator was told last: the hello's slots, then Capacity
        self._capacity_updates = False  # the current stream's welcome takes Capacity messages
        self._capacity_waiting = False  # a Capacity is in the current stream's outbox
        self.runners_stuck = False  # every slot held by a canceled job's runner: drained, run() raises
        # jobs rejected (no free slot), by attempt, in the order their rejects are written, until the coordinator
        # has read them for sure (an assignment proves all but the last few read: _forget_read_rejects; at most
        # 2 x slots kept) or a welcome no longer lists them: the stream a reject was put on may end before the
        # coordinator read it (or there was none); the next hello lists the job, kept so, and the reject goes
        # again (else the job, missing from the hello, would be lost: an attempt spent)
        self._rejects: dict[str, tuple[int, str]] = {}  # job id -> (attempt, why)
        # Results and failure reports sent and not yet acknowledged, by job: a stream lost before the ack lists
        # their jobs in the next hello (so the coordinator keeps them) and sends them again on the new stream.
        self.unacked: dict[str, tuple[int, miner_service_pb2.Result | miner_service_pb2.Failure]] = {}
        # streams ended by a message the coordinator could not take (RESOURCE_EXHAUSTED, INTERNAL) while an
        # unacked result was on them: after MAX_RESENDS, the result is taken for the cause and dropped
        self._poisoned: dict[str, int] = {}
        self._on_stream: set[str] = set()  # the unacked ones sent on the current stream
        self._welcomed = False  # the current stream got its welcome
        self._welcomed_at = 0.0  # the loop's time of the current stream's welcome
        self._heartbeat_waiting = False  # a heartbeat is in the current stream's outbox
        self._on_drain: Callable[[], None] | None = None  # the poll session's: drain() tells the coordinator
        self._heard_at = 0.0  # the loop's time the current stream last carried something from the coordinator
        # how long the stream may stay silent before its connection is probed
        self._quiet_s = self.welcome_timeout_s
        self._idle_quiet_s = idle_quiet_s(self._quiet_s)  # as long, while the miner awaits no answer
        self._drain_timer: asyncio.TimerHandle | None = None
        self.draining = False
        self.stopped = asyncio.Event()
        self.session_id = ""
        self.completed = 0
        self.connects = 0
        self.acked = 0  # results (their receipts stored) and failure reports the coordinator accepted
        self.last_ack_at = 0.0  # time.monotonic() of the latest accepted ack
        self._outbox: asyncio.Queue[miner_service_pb2.ConnectRequest] | None = None
        # what the coordinator said it takes (its welcome; 0: it did not say): a larger result is reported as a
        # failure at once, where sending it would only have it refused and the job held until its lease ran out
        self._coordinator_result_bytes = 0
        self._coordinator_message_bytes = 0
        # the channel's send limit (grpc.max_send_message_length; 0: not known), learned from gRPC's refusal, in
        # this process, of a message over it: a channel of the caller's may send less than max_result_bytes
        self._channel_send_bytes = 0
        # the size of a Results message whose write failed on the current stream (0: none)
        self._failed_results_bytes = 0
        self._session_task: asyncio.Task | None = None
        # finished jobs: (job id, attempt, outcome, its Result or the failure to report)
        self._finished: asyncio.Queue[tuple[str, int, Any, Any]] = asyncio.Queue()

    def _check_arguments(self) -> None:
        """Each field as documented, or a TypeError or ValueError naming it, now: not a failure found later (a hello
        the coordinator refuses, every result failed RESULT_TOO_LARGE, a reconnect loop's timer, the replacement of a
        stale connection raising from run() hours in). Secrets (the signer, hmac_secret, TLS keys) are not echoed."""
        for name in ("address", "api_key"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a str, not {type(getattr(self, name)).__name__}")
        if not self.address:
            raise ValueError("address must name the coordinator (HOST:PORT), not ''")
        if not callable(self.runner):
            raise TypeError(f"runner must be an async callable taking the job, not {self.runner!r}")
        if not isinstance(self.capabilities, miner_service_pb2.MinerCapabilities):
            raise TypeError(
                f"capabilities must be a MinerCapabilities (probe_capabilities()), not {self.capabilities!r}"
            )
        if self.capabilities.slots > MAX_SLOTS:
            raise ValueError(
                f"capabilities.slots must be 0 (one) to {MAX_SLOTS}, not {self.capabilities.slots}"
            )
        # (a signer of its own, a hardware key's, has these too: only the seed's hex given in its place is refused)
        if self.signer is not None and not (
            hasattr(self.signer, "sign") and hasattr(self.signer, "public_key")
        ):
            raise TypeError(
                f"signer must be an aitbc.receipts.Signer (Signer(SEED_HEX)), not {type(self.signer).__name__}"
            )
        if not isinstance(self.hmac_secret, str | bytes | None):
            raise TypeError(
                f"hmac_secret must be str or bytes (or None), not {type(self.hmac_secret).__name__}"
            )
        for name in ("tls_ca", "tls_cert", "tls_key"):  # PEM bytes, or a file's path
            if not isinstance(getattr(self, name), str | bytes | os.PathLike | None):
                raise TypeError(
                    f"{name} must be PEM bytes or a path (or None), not {type(getattr(self, name)).__name__}"
                )
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls_cert and tls_key go together (mutual TLS)")
        if self.channel is not None and not isinstance(self.channel, grpc.aio.Channel):
            raise TypeError(
                f"channel must be a grpc.aio.Channel (aitbc.channel.open_channel()), not {self.channel!r}"
            )
        inf = float("inf")
        _check_number("backoff_base_s", self.backoff_base_s, "more than 0 and finite", lambda x: 0 < x < inf)
        _check_number("backoff_max_s", self.backoff_max_s, "more than 0 and finite", lambda x: 0 < x < inf)
        _check_number("drain_ack_timeout_s", self.drain_ack_timeout_s, "0 or more", lambda x: x >= 0)
        if self.unreachable_timeout_s is not None:
            _check_number(
                "unreachable_timeout_s", self.unreachable_timeout_s, "more than 0 (or None)", lambda x: x > 0
            )
        _check_count("max_result_bytes", self.max_result_bytes, 1, 1 << 62)
        _check_number("stuck_timeout_s", self.stuck_timeout_s, "more than 0", lambda x: x > 0)
        if self.transport not in ("stream", "poll"):
            raise ValueError(f"transport must be 'stream' or 'poll', not {self.transport!r}")
        _check_number("poll_wait_s", self.poll_wait_s, "more than 0 and at most 60", lambda x: 0 < x <= 60)
        _check_number("welcome_timeout_s", self.welcome_timeout_s, "more than 0", lambda x: x > 0)
        self._check_channel_options()

    def _check_channel_options(self) -> None:
        """channel_options as open_channel takes them, now: with a channel of the caller's, the miner opens one only
        to replace a stale connection (open_channel's refusal raised from run() then, ending the miner)."""
        options = self.channel_options
        if not isinstance(options, dict):
            raise TypeError(f"channel_options must be a dict of open_channel's settings, not {options!r}")
        if unknown := sorted(set(options) - CHANNEL_OPTIONS, key=repr):
            raise ValueError(
                f"channel_options takes {', '.join(sorted(CHANNEL_OPTIONS))}, not {', '.join(map(str, unknown))}"
            )
        try:
            check_channel_settings(**options)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"channel_options {exc}") from None

    @property
    def slots(self) -> int:
        return self.capabilities.slots or 1

    def hello(self) -> miner_service_pb2.ConnectRequest:
        capabilities = miner_service_pb2.MinerCapabilities()
        capabilities.CopyFrom(self.capabilities)
        # every slot, always: the hello's count is the most a Capacity message may offer on the stream; fewer
        # while runners are stuck, in its capacity, which the coordinator applies before it fills the session (a
        # Capacity after the welcome came too late: every slot was filled, the assignments rejected 1 s later)
        capabilities.slots = self.slots
        offer = self._offered_slots = self._offer()
        capacity = None
        if offer < self.slots:
            capacity = miner_service_pb2.Capacity(slots=offer)
            log.warning("%d canceled jobs' runners have not returned; the new stream offers %d of %d slots",
                        self.slots - offer, offer, self.slots)  # fmt: skip
        return miner_service_pb2.ConnectRequest(hello=miner_service_pb2.Hello(
            capabilities=capabilities, agent_version="aitbc-python-miner/0.1",
            receipt_public_key=self.signer.public_key if self.signer else b"", batched_acks=True,
            running_jobs=[miner_service_pb2.RunningJob(job_id=j, attempt=a) for j, a in self._listed().items()],
            capacity=capacity,
        ))  # fmt: skip

    def _listed(self) -> dict[str, int]:
        """The jobs a hello lists, by attempt: those held, and those rejected the coordinator may not have read the
        reject of (kept for this miner so, they are rejected again: see _reject_again)."""
        return {**{j: a for j, (a, _) in self._rejects.items()}, **self._held()}

    def _held(self) -> dict[str, int]:
        """The jobs this miner still answers for, by attempt: those running, and those whose result or failure
        report awaits its ack."""
        return {
            **{j: a for j, (a, _) in self.unacked.items()},
            **{j: r.attempt for j, r in self.running.items()},
        }

    async def run(self) -> None:
        """Connect, work, and reconnect with jittered backoff until stop() or a completed drain (RunnersStuck when
        the miner drained because canceled jobs' runners held every slot)."""
        failures = 0
        channel = self.channel or self._open_channel(self.own_connection)
        try:
            while not self.stopped.is_set():
                if self.transport == "poll":
                    from .miner_poll import poll_session  # (it builds on this module)

                    session = poll_session(self, channel)
                else:
                    session = self._session(channel)
                self._session_task = asyncio.create_task(session)
                error = False
                try:
                    # least: what the coordinator asked to be waited at least (a go-away's reconnect_after)
                    reason, least = await self._session_task
                except asyncio.CancelledError:
                    # stop() canceled the session; a cancel of run() itself (stopped or not) goes on up
                    if not self.stopped.is_set() or _cancel_requested():
                        raise
                    break
                except CoordinatorUnreachable:
                    if not (self.draining and not self.running):
                        raise
                    self._drain_overdue()  # a drain asked for: it ends as drains end, giving up on the acks
                    break
                except grpc.aio.AioRpcError as exc:
                    if exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED) or (
                        exc.code() == grpc.StatusCode.INVALID_ARGUMENT and not self._welcomed
                    ):  # this miner's key or hello is wrong: no use trying again
                        raise
                    error, reason = True, exc.code().name
                    least = retry_delay_s(exc)  # a rate limit's "not before": tried sooner, refused again
                    if await self._learned_send_limit(channel, exc):
                        # this process's channel refused a results message, not the coordinator: the next stream
                        # reports the results no message can carry failed (_resend), batching the others under it
                        reason = "CHANNEL_SEND_LIMIT"
                    elif refused_by_coordinator(exc):
                        for job_id in self._on_stream & self.unacked.keys():
                            self._poisoned[job_id] = self._poisoned.get(job_id, 0) + 1
                failures, delay = self._after_stream(failures, error)
                if reason == "DRAINED" or (self.draining and not self.running and not self.unacked):
                    break
                if self.stopped.is_set():
                    break
                if reason == "CONNECTION_STALE":  # (see _watch_connection, and aitbc.miner_poll)
                    channel = await self._fresh_channel(channel)
                wait = self._jittered(delay, least)
                log.info("miner session ended (%s); reconnecting in %.2f s", reason, wait)
                try:
                    await asyncio.wait_for(self.stopped.wait(), wait)
                except TimeoutError:
                    pass
        finally:
            if self._drain_timer is not None:
                self._drain_timer.cancel()
            await self._end_jobs()
            if channel is not self.channel:
                await channel.close()
        if self.runners_stuck:
            raise RunnersStuck(f"every slot ({self.slots}) was held by the runners of canceled jobs for "
                               f"{self.stuck_timeout_s:g} s; the miner drained: start it again")  # fmt: skip

    async def _fresh_channel(self, stale: grpc.aio.Channel) -> grpc.aio.Channel:
        """A new connection in place of stale, on which calls went unanswered though gRPC held it up (its keepalive
        pings answered): a channel of this miner's own from now on (own_connection: a channel sharing the stale one's
        subchannel would get the same connection), opened as the miner opens its own (_open_channel). Stale is closed
        if this miner opened it; a channel of the caller's (Miner.channel) is left to the caller, with whatever other
        miners use it."""
        if stale is not self.channel:
            await stale.close()
        log.warning("a new connection to the coordinator at %s in place of the stale one", self.address)
        return self._open_channel(own_connection=True)

    def _open_channel(self, own_connection: bool) -> grpc.aio.Channel:
        """A channel to address with the miner's settings: its tls_* fields and channel_options."""
        return open_channel(self.address, own_connection=own_connection, tls_ca=self.tls_ca, tls_cert=self.tls_cert,
                            tls_key=self.tls_key, **self.channel_options)  # fmt: skip

    async def _end_jobs(self) -> None:
        """The jobs still running, and canceled jobs' runners not returned yet, canceled and waited for: run()
        leaves no task behind (their commands killed, their workspaces removed). Their results are given up, as
        are those awaiting acks: the coordinator runs those jobs again (at once for the jobs a stop gave back:
        _give_back_held, and the poll transport's _leave). A python callable's thread cannot be stopped: its task,
        canceled again, gives up on it (a daemon thread, it ends with the process)."""
        tasks = [r.task for r in self.running.values()] + list(self._canceled)
        for task in tasks:
            task.cancel()
        await asyncio.sleep(0)  # (each sees its cancel: a python callable's task then waits for its thread)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _after_stream(self, failures: int, error: bool) -> tuple[int, float]:
        """The failures in a row, the stream just ended counted, and the backoff before the next. A stream that
        served longer than the longest backoff starts it over: ended by the coordinator (EOF, a go-away), it waits
        only the shortest backoff. Any other counts as a failure: an error, no welcome, or an end soon after its
        welcome (a coordinator that ends each stream at once, another miner of the same identity taking the
        session each time) backs off further each time rather than coming back at once, for good."""
        if self._served_a_while():
            if not error:
                return 0, self.backoff_base_s
            failures = 0
        failures += 1
        return failures, self._backoff(failures)

    def _served_a_while(self) -> bool:
        """Whether the stream just ended was welcomed and then lasted longer than the longest backoff: one that
        fails at once, again and again, backs off further each time; one after hours of work does not."""
        lasted = asyncio.get_running_loop().time() - self._welcomed_at
        return self._welcomed and lasted >= self.backoff_max_s

    def _backoff(self, failures: int) -> float:
        return min(self.backoff_max_s, self.backoff_base_s * 2 ** min(failures, 10))

    @staticmethod
    def _jittered(delay: float, least: float) -> float:
        """The wait before the next stream, jittered so that a fleet does not reconnect in lockstep: half of the
        backoff delay to all of it, but never less than least, what the coordinator asked for (a go-away's
        reconnect_after, a refusal's RetryInfo delay), which is waited and up to half more."""
        return max(delay * random.uniform(0.5, 1.0), least * random.uniform(1.0, 1.5))

    def stop(self) -> None:
        """End now (also on SIGINT in `aitbc miner run`): running jobs canceled, then given back to the coordinator
        (queued at once for another miner, their attempts unspent): on a welcomed stream Capacity 0 and a Reject
        each before the stream is closed (_leave_stream); on the poll transport a Drain and a RejectJob each
        (miner_poll._PollSession._leave). Results awaiting acks are given up."""
        self.stopped.set()
        if self._session_task is not None:
            self._session_task.cancel()

    def drain(self) -> None:
        """Finish running jobs, take no new ones, then end (also on SIGTERM in `aitbc miner run`)."""
        self.draining = True
        if self._outbox is not None:
            self._outbox.put_nowait(
                miner_service_pb2.ConnectRequest(drain=miner_service_pb2.MinerDrain(reason="SIGTERM"))
            )
        if self._on_drain is not None:
            self._on_drain()
        if not self.running and not self.unacked:  # (a result awaiting its ack may yet need sending again)
            self.stop()
        elif not self.running:
            self._arm_drain_timer()

    def _arm_drain_timer(self) -> None:
        """Draining with nothing left to run: wait drain_ack_timeout_s at most for the last acks."""
        if self._drain_timer is None and not self.stopped.is_set():
            self._drain_timer = asyncio.get_running_loop().call_later(
                self.drain_ack_timeout_s, self._drain_overdue
            )

    def _drain_overdue(self) -> None:
        self._drain_timer = None
        if self.stopped.is_set() or self.running:
            return
        if self.unacked:
            log.warning("drained: giving up on the acks of %d results (jobs %s); the coordinator runs them again",
                        len(self.unacked), ", ".join(sorted(self.unacked)))  # fmt: skip
        self.stop()

    async def _session(self, channel: grpc.aio.Channel) -> tuple[str, float]:
        stub = miner_service_pb2_grpc.MinerServiceStub(
            SigningChannel(channel, self.hmac_secret) if self.hmac_secret else channel
        )
        await self._reachable(channel)
        self._drop_poisoned()  # before the hello, which would list their jobs
        self._on_stream = set()
        self._failed_results_bytes = 0
        self._welcomed = False
        # until the welcome says how often the miner heartbeats, the least silence probed for
        self._heard_at, self._quiet_s = asyncio.get_running_loop().time(), self.welcome_timeout_s
        call = stub.Connect(metadata=with_trace_context(auth_metadata(self.api_key)))
        watch = asyncio.create_task(self._watch_connection(channel))
        opening = asyncio.create_task(self._opening(call))
        tasks: list[asyncio.Task] = [watch, opening]
        reader: asyncio.Task | None = None
        sender: asyncio.Task | None = None
        try:
            await asyncio.wait({opening, watch}, return_when=asyncio.FIRST_COMPLETED)
            if not opening.done():  # the hello or its welcome went nowhere on a stale connection
                return watch.result()
            first = opening.result()
            tasks.remove(opening)  # (done: the others run until the session ends)
            if first is grpc.aio.EOF or first.WhichOneof("message") != "welcome":
                await call.done_writing()
                return "NO_WELCOME", 0.0
            reader, sender = self._welcomed_stream(call, first.welcome, tasks)
            return await self._until_ended(reader, tasks)
        finally:
            capacity_updates, self._capacity_updates = self._capacity_updates, False
            leaving = self.stopped.is_set()
            if not leaving:  # (while leaving, the reader gives back on it what it reads: see _read)
                self._outbox = None
            try:
                if leaving:
                    await self._leave_stream(call, tasks, opening, reader, sender, capacity_updates)
            finally:  # (stop() again, or run() canceled, while leaving: the stream ends all the same)
                self._outbox = None
                call.cancel()
                await _cancel_and_wait(tasks)  # nothing of the session outlives it

    async def _leave_stream(
        self,
        call: Any,
        tasks: list[asyncio.Task],
        opening: asyncio.Task,
        reader: asyncio.Task | None,
        sender: asyncio.Task | None,
        capacity_updates: bool,
    ) -> None:
        """Leave the stream on purpose (stop()): past the welcome, the jobs held given back first
        (_give_back_held), then its side closed and the coordinator's end waited for (_leave). The caller cancels the
        call and every task of `tasks` after (a reader made here is added to them)."""
        if reader is None and opening in tasks:  # stopped before the welcome: read on from it
            reader = asyncio.create_task(_read_to_end(opening, call))
            tasks.append(reader)
        # the sender alone writes, to its last message (a write canceled cancels the call); the reader reads on to
        # the coordinator's end (messages left unread hold its status back)
        await _cancel_and_wait([t for t in tasks if t not in (reader, opening, sender)])
        if sender is not None and self._outbox is not None:
            # canceled first (commands killed): given back, a job must not run here and elsewhere at once
            await self._end_jobs()
            self._give_back_held(self._outbox, capacity_updates)
        await _leave(call, sender)

    async def _opening(self, call: Any) -> Any:
        """The hello written, the coordinator's first message (its welcome, or EOF)."""
        await call.write(self.hello())
        return await call.read()

    @staticmethod
    async def _until_ended(reader: asyncio.Task, tasks: list[asyncio.Task]) -> tuple[str, float]:
        """The reader's end of the session, or the first failure of one of its other tasks (sender, heartbeat,
        reporter), at once: the reader alone would read on, the stream taking assignments whose results are never
        sent. A gRPC error is the session's (run() reconnects); any other error is raised from run(). A write
        after the call ended (InvalidStateError) or a task canceled with the call leaves the reader to say how.
        A task that returns (the connection's watch: CONNECTION_STALE) ends the session with its reason."""
        pending = set(tasks)
        while True:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if reader in done:
                return reader.result()
            for task in done:
                exc = None if task.cancelled() else task.exception()
                if exc is not None and not isinstance(exc, asyncio.InvalidStateError):
                    raise exc
                if not task.cancelled() and exc is None and task.result() is not None:
                    return task.result()

    async def _watch_connection(self, channel: grpc.aio.Channel) -> tuple[str, float]:
        """Returns (CONNECTION_STALE) once the stream has carried nothing from the coordinator for a while
        (_quiet_limit_s) and a probe call on its connection goes unanswered for _quiet_s, though gRPC holds the
        connection READY.

        The coordinator answers no heartbeat on the stream: a quiet stream is how an idle miner's looks, and how
        one whose connection answers keepalive pings but carries no call looks (a coordinator that took the
        connection and never serves it, a middlebox passing only HTTP/2 control frames). Keepalive never closes
        that one: the hello's welcome, the results' acks, the coordinator's end of the session (its heartbeat
        timeout) never come, and the miner would wait on it for good. A probe tells them apart."""
        loop = asyncio.get_running_loop()
        while True:
            # in steps of at most _quiet_s: a result sent meanwhile shortens the limit
            limit = self._quiet_limit_s()
            await asyncio.sleep(max(0.0, min(self._heard_at + limit - loop.time(), self._quiet_s)))
            if loop.time() - self._heard_at < self._quiet_limit_s():
                continue
            asked = loop.time()
            stale = await connection_stale(channel, self._quiet_s)
            if self._heard_at >= asked or not stale:  # the stream spoke meanwhile, or the connection answered
                self._heard_at = max(self._heard_at, asked)
                self._idle_quiet_s = idle_quiet_s(self._quiet_s)  # (a fresh jitter for the next)
                continue
            log.warning("nothing heard on the stream from the coordinator at %s for %.1f s, nor any answer to a "
                        "probe, though the connection is up: a new connection", self.address,
                        loop.time() - self._heard_at)  # fmt: skip
            return "CONNECTION_STALE", 0.0

    def _quiet_limit_s(self) -> float:
        """The silence after which the connection is probed: soon while the miner awaits an answer (a welcome, the
        ack of a result or failure report), rarely while it awaits nothing (a fleet of idle miners probing every
        heartbeat interval would be thousands of calls a second; a stale idle stream costs only its capacity)."""
        return self._quiet_s if (self.unacked or not self._welcomed) else self._idle_quiet_s

    def _welcomed_stream(
        self, call: Any, welcome: miner_service_pb2.Welcome, tasks: list[asyncio.Task]
    ) -> tuple[asyncio.Task, asyncio.Task]:
        """Take up the stream the welcome opened: its tasks, added to `tasks`; returns its reader's and its
        sender's."""
        self._welcomed = True  # from now on, INVALID_ARGUMENT is about a message, not about this miner
        self._welcomed_at = asyncio.get_running_loop().time()
        self.session_id = welcome.session_id
        self._coordinator_result_bytes = welcome.max_result_bytes
        self._coordinator_message_bytes = welcome.max_message_bytes
        self.connects += 1
        kept = {j.job_id for j in welcome.resumed_jobs}
        # one line per stream: an operator starting a miner sees it is in (it is otherwise silent while all is well)
        log.info("%s coordinator at %s: session %s, %d slots, %d running jobs kept",
                 "connected to the" if self.connects == 1 else "reconnected to the", self.address,
                 welcome.session_id, self.slots, len(kept))  # fmt: skip
        for job_id in [j for j in self.running if j not in kept]:
            self._cancel(job_id)
        self._capacity_updates, self._capacity_waiting = welcome.capacity_updates, False
        if not welcome.capacity_updates:
            self._offered_slots = self.slots  # (an older coordinator ignored the hello's capacity)
        # From the welcome on, not before: a reject made meanwhile waits for _reject_again, and every reject is
        # written once, in the order of _rejects (see _forget_read_rejects).
        outbox: asyncio.Queue[miner_service_pb2.ConnectRequest] = asyncio.Queue()
        self._outbox = outbox
        # a runner returned, or got stuck, since the hello: this offers the slots left; first, so that the slots
        # the rejects and results below free are not filled beyond it
        self._check_slots()
        self._resend(outbox)
        self._reject_again(outbox, {(j.job_id, j.attempt) for j in welcome.resumed_jobs})
        if self.draining:
            outbox.put_nowait(
                miner_service_pb2.ConnectRequest(drain=miner_service_pb2.MinerDrain(reason="draining"))
            )
        interval = max(0.05, welcome.heartbeat_interval.ToMilliseconds() / 1000)
        self._heard_at, self._quiet_s = asyncio.get_running_loop().time(), heartbeat_deadline_s(interval)
        self._idle_quiet_s = idle_quiet_s(self._quiet_s)
        reader = asyncio.create_task(self._read(call))
        sender = asyncio.create_task(self._send(call, outbox))
        tasks += [
            sender,
            asyncio.create_task(self._heartbeat(outbox, interval)),
            asyncio.create_task(self._report(outbox)),
            reader,
        ]
        return reader, sender

    async def _read(self, call: Any) -> tuple[str, float]:
        """Handle what the coordinator sends until the stream ends: (why, the least to wait before the next)."""
        loop = asyncio.get_running_loop()
        while True:
            message = await call.read()
            if message is grpc.aio.EOF:
                return "EOF", 0.0
            self._heard_at = loop.time()
            kind = message.WhichOneof("message")
            if kind == "assignments":
                self._forget_read_rejects(len(message.assignments.assignments))
                for a in message.assignments.assignments:
                    if self.stopped.is_set():  # leaving (stop()): given back, while the stream's side is open
                        self._reject(a.job.job_id, a.attempt, STOPPING_REASON)
                    elif self.draining:  # (a new stream's session is filled before it reads the drain)
                        self._reject(a.job.job_id, a.attempt, "draining")
                    else:
                        self._start(a)
            elif kind == "cancel":
                running = self.running.get(message.cancel.job_id)
                if running is not None and running.attempt == message.cancel.attempt:
                    self._cancel(message.cancel.job_id)
                if self._rejects.get(message.cancel.job_id, (None,))[0] == message.cancel.attempt:
                    del self._rejects[message.cancel.job_id]  # let go of (not by the reject): it is moot
            elif kind == "drain":
                self.draining = True
            elif kind == "go_away":
                return message.go_away.reason, message.go_away.reconnect_after.ToMilliseconds() / 1000
            elif kind == "result_ack":
                self._acked([message.result_ack])
            elif kind == "result_acks":
                self._acked(message.result_acks.acks)

    def _resend(self, outbox: asyncio.Queue) -> None:
        """On a new stream: the results and failure reports whose acks the last one lost, again. If one had
        landed, the coordinator answers with the same ack; if the job is no longer this miner's, with a
        refusal. They are measured against this stream's welcome (a coordinator restarted with lower limits): one
        that no longer fits is reported as a RESULT_TOO_LARGE failure at once, the others go in messages under
        the new limit."""
        self._on_stream |= self.unacked.keys()
        results = []
        for job_id, (attempt, m) in list(self.unacked.items()):
            if not isinstance(m, miner_service_pb2.Result):
                outbox.put_nowait(miner_service_pb2.ConnectRequest(failure=m))
            elif too_large := self._too_large(m):
                self._report_failure(outbox, job_id, attempt, JobFailed("RESULT_TOO_LARGE", too_large, False))
            else:
                results.append(m)
        for message in self._results_messages(outbox, results):
            outbox.put_nowait(message)

    def _reject_again(self, outbox: asyncio.Queue, kept: set[tuple[str, int]]) -> None:
        """On a new stream: the rejects the coordinator may not have read (it kept their jobs), again; the others
        landed (or their jobs went elsewhere) and are forgotten."""
        for job_id, (attempt, reason) in list(self._rejects.items()):
            if (job_id, attempt) in kept:
                outbox.put_nowait(_reject_message(job_id, attempt, reason))
            else:
                del self._rejects[job_id]

    def _reject(self, job_id: str, attempt: int, reason: str) -> None:
        """Give an assignment back, its attempt unspent; kept in _rejects until the coordinator has read it."""
        self._rejects.pop(job_id, None)  # (last in _rejects, as on the stream)
        self._rejects[job_id] = (attempt, reason)
        if self._outbox is not None:  # (none between streams: the next hello lists the job, kept for it)
            self._outbox.put_nowait(_reject_message(job_id, attempt, reason))

    def _give_back_held(self, outbox: asyncio.Queue, capacity_updates: bool) -> None:
        """Leaving on purpose (stop()): the stream's last messages, for its sender to write before it closes its
        side. No new assignment (Capacity 0, where the welcome takes it; first, else each reject's freed slot would
        be filled), then a reject, its attempt unspent, for each job held that will not be finished (running, or
        assigned and waiting for a slot): the coordinator queues it at once for another miner, where the stream's
        end alone left it to the reconnect grace. Results and failure reports awaiting their acks are not given
        back (the coordinator may have them); those still waiting in the outbox go, with its rejects (dropped,
        their jobs were in no one's hands until the grace was over); heartbeats and the like are moot now."""
        waiting = _emptied(outbox)
        if capacity_updates:
            outbox.put_nowait(miner_service_pb2.ConnectRequest(capacity=miner_service_pb2.Capacity(slots=0)))
        for message in waiting:
            if _is_last_word(message):
                outbox.put_nowait(message)
        for job_id, running in list(self.running.items()):
            self._reject(job_id, running.attempt, STOPPING_REASON)
        outbox.put_nowait(_LEAVE)

    def _forget_read_rejects(self, assigned: int) -> None:
        """An assignment of `assigned` jobs arrived: forget the rejects the coordinator has read for sure.

        It gives a stream no more jobs than its slots, counting the new ones and every job whose reject it has
        not read yet; a job it let go of otherwise was canceled on the stream before, and left _rejects then
        (_read). It reads the stream in order, and _rejects is in the order its rejects are written (once each,
        from the welcome on; those not written yet last). So at most the last `slots - assigned` rejects may be
        unread; the others were read, and their decisions stored before this assignment left. Without this,
        on a stream of days the rejects for slots held by stuck runners (each job given back, then taken
        elsewhere) piled up, all listed in the next hello."""
        unread_at_most = max(0, self.slots - assigned)
        for job_id in list(self._rejects)[: max(0, len(self._rejects) - unread_at_most)]:
            del self._rejects[job_id]

    async def _learned_send_limit(self, channel: grpc.aio.Channel, exc: grpc.aio.AioRpcError) -> bool:
        """Whether the stream ended because this process's channel would not send a message over its send limit
        (grpc.max_send_message_length: a channel of the caller's may send less than max_result_bytes); the limit is
        kept, for _too_large. gRPC says so (RESOURCE_EXHAUSTED "CLIENT: Sent message larger than max") only when
        the stream's status arrives before its failed write is reported; else grpc.aio reports the write INTERNAL
        "Internal error from Core", as it does a write on a connection gone: a probe of the same size tells them
        apart (probe_send_limit)."""
        failed, self._failed_results_bytes = self._failed_results_bytes, 0
        limit = channel_send_limit(exc)
        if not limit and failed and exc.code() == grpc.StatusCode.INTERNAL and not coordinator_reason(exc):
            limit = await probe_send_limit(channel, failed)
        if not limit:
            return False
        self.learn_send_limit(limit)
        return True

    def learn_send_limit(self, limit: int) -> None:
        """The channel sends messages of `limit` bytes at most: larger results are reported RESULT_TOO_LARGE."""
        if limit != self._channel_send_bytes:
            log.warning("the miner's channel sends messages of %d bytes at most (grpc.max_send_message_length), "
                        "less than max_result_bytes (%d): larger results are reported failed (RESULT_TOO_LARGE)",
                        limit, self.max_result_bytes)  # fmt: skip
        self._channel_send_bytes = limit

    def _drop_poisoned(self) -> None:
        """Unacked results that were on MAX_RESENDS streams the coordinator ended for a message it could not
        take: the result is the cause. Dropped, their jobs no longer listed: the coordinator runs them again."""
        for job_id, ended in list(self._poisoned.items()):
            if job_id not in self.unacked:
                del self._poisoned[job_id]
            elif ended >= MAX_RESENDS:
                log.warning("dropping the result of job %s: %d streams carrying it were ended by the coordinator",
                            job_id, ended)  # fmt: skip
                del self.unacked[job_id], self._poisoned[job_id]

    def _acked(self, acks) -> None:  # type: ignore[no-untyped-def]
        for a in acks:
            sent = self.unacked.get(a.job_id)
            if sent is None or sent[0] != a.attempt:
                continue  # a repeated ack (a result sent again had landed before)
            del self.unacked[a.job_id]
            self._poisoned.pop(a.job_id, None)
            self._on_stream.discard(a.job_id)  # (else one more id for each job a days-long stream carries)
            if a.accepted:
                self.acked += 1
                self.last_ack_at = time.monotonic()
            else:
                what = "result" if isinstance(sent[1], miner_service_pb2.Result) else "failure report"
                log.warning("%s of job %s refused: %s %s", what, a.job_id, a.reason, a.message)
                if what == "result" and a.reason in FAILED_BY_REFUSAL and self._outbox is not None:
                    # the job is still this miner's: reported failed, it fails (or runs again) now rather than
                    # when its lease runs out
                    failed = JobFailed(a.reason, a.message, FAILED_BY_REFUSAL[a.reason])
                    self._report_failure(self._outbox, a.job_id, a.attempt, failed)
                    self._on_stream.add(a.job_id)

    def _start(self, assignment: miner_service_pb2.Assignment) -> None:
        job = assignment.job
        self._rejects.pop(job.job_id, None)  # assigned again: its reject landed
        # A new attempt of a job whose old one's cancel is not read yet: that one is over (fencing refuses its
        # result), and would run on holding no slot.
        if job.job_id in self.running:
            self._cancel(job.job_id)
        task = asyncio.create_task(self._execute(job, assignment.attempt))
        self.running[job.job_id] = _Running(assignment.attempt, task)
        if self.transport == "stream":  # (the poll transport: a heartbeat accepts, see miner_poll)
            asyncio.get_running_loop().call_later(ACCEPT_AFTER_S, self._accept_if_running, job.job_id,
                                                  assignment.attempt)  # fmt: skip

    def _accept_if_running(self, job_id: str, attempt: int) -> None:
        """An Accept for a job still running ACCEPT_AFTER_S after it started: the coordinator then shows it RUNNING
        (and its client's watch says so) rather than ASSIGNED for its whole run. A job done sooner is accepted by its
        result (ASSIGNED -> RUNNING -> COMPLETED in one commit): short jobs cost no message and no commit more."""
        running = self.running.get(job_id)
        if running is not None and running.attempt == attempt and self._outbox is not None:
            accept = miner_service_pb2.Accept(job_id=job_id, attempt=attempt)
            self._outbox.put_nowait(miner_service_pb2.ConnectRequest(accept=accept))

    def _cancel(self, job_id: str) -> None:
        """Cancel a running job. Its slot stays taken until its runner returns (at once, unless it is a python
        callable, whose thread runs on)."""
        task = self.running.pop(job_id).task
        task.cancel()
        loop = asyncio.get_running_loop()
        self._canceled[task] = loop.time()
        task.add_done_callback(self._runner_returned)
        for after in (STUCK_AFTER_S, self.stuck_timeout_s):
            loop.call_later(after + 0.01, self._check_slots)  # (a timer may fire a hair early)

    def _runner_returned(self, task: asyncio.Task) -> None:
        if self._canceled.pop(task, None) is not None:
            self._check_slots()

    def _stuck_runners(self, after: float | None = None) -> int:
        """Canceled jobs whose runners have not returned after `after` seconds (by default STUCK_AFTER_S: the
        slots not to offer)."""
        if not self._canceled:
            return 0
        since = asyncio.get_running_loop().time() - (STUCK_AFTER_S if after is None else after)
        return sum(1 for canceled_at in self._canceled.values() if canceled_at <= since)

    def _free_slots(self) -> int:
        """Slots neither running a job nor held by a canceled job's runner (less than 0: over)."""
        return self.slots - len(self.running) - len(self._canceled)

    def _check_slots(self) -> None:
        """Offer the coordinator the slots this miner has, with a Capacity message on the live stream: fewer
        while canceled jobs' runners are stuck (none at all with every slot stuck), all again once they return.
        With every slot stuck for stuck_timeout_s: drain, then end."""
        if self.draining or self.stopped.is_set():
            return
        if self._stuck_runners(self.stuck_timeout_s) >= self.slots:
            log.error("every slot (%d) has been held for %g s by the runners of canceled jobs; draining, to be "
                      "started again", self.slots, self.stuck_timeout_s)  # fmt: skip
            self.runners_stuck = True
            self.drain()
            return
        outbox = self._outbox
        if outbox is None or not self._capacity_updates:
            # between streams (the next welcome brings it here again), or a coordinator that takes no Capacity:
            # an assignment finding no slot is rejected (_slot_taken), its attempt unspent
            return
        if not self._capacity_waiting and self._offer() != self._offered_slots:
            # at most one waits to be sent, made as it leaves: runners returning together (a mass cancel's)
            # make one message, not one each against the stream's message budget
            self._capacity_waiting = True
            outbox.put_nowait(_CAPACITY)

    def _offer(self) -> int:
        """The slots to offer: those not held by a stuck runner."""
        return self.slots - min(self._stuck_runners(), self.slots)

    def _capacity_message(self) -> miner_service_pb2.ConnectRequest | None:
        """The Capacity to send now (None: the coordinator was told this already)."""
        self._capacity_waiting = False
        offer = self._offer()
        if offer == self._offered_slots:
            return None
        if offer < self.slots:
            log.warning("%d canceled jobs' runners have not returned; offering %d of %d slots",
                        self.slots - offer, offer, self.slots)  # fmt: skip
        else:
            log.info("the runners of canceled jobs returned; offering all %d slots again", self.slots)
        self._offered_slots = offer
        return miner_service_pb2.ConnectRequest(capacity=miner_service_pb2.Capacity(slots=offer))

    async def _slot_taken(self, job_id: str, attempt: int) -> bool:
        """Whether the job (counted in running) has a slot: if canceled jobs' runners hold the last ones (the
        coordinator counted them free), they get STUCK_AFTER_S to return; then the miner offers fewer slots and
        the job is rejected (no attempt spent)."""
        if self._free_slots() >= 0:
            return True
        if self._canceled:
            # (+0.01: a timer may fire a hair early, and the runners waited for must count as stuck below)
            await asyncio.wait(set(self._canceled), timeout=STUCK_AFTER_S + 0.01)
        if self._free_slots() >= 0:
            return True
        self.running.pop(job_id, None)
        # the fewer slots first: read after the reject, the slot it frees would be filled with another job
        self._check_slots()
        self._reject(job_id, attempt, f"no free slot: {len(self._canceled)} canceled jobs' runners still run")
        return False

    async def _execute(self, job: job_pb2.Job, attempt: int) -> None:
        try:
            if not await self._slot_taken(job.job_id, attempt):
                return
            with job_span(job, attempt):  # joins the job's trace when the assignment carries one
                outcome = await self.runner(job)
            if not isinstance(outcome, Outcome):
                outcome = Outcome(outcome)
            if isinstance(
                outcome.output, bytearray | memoryview
            ):  # bytes by another name (was INVALID_RESULT)
                outcome = dataclasses.replace(outcome, output=bytes(outcome.output))
            # A large structured result takes seconds (its Struct, its digest): off the loop, which must go on
            # serving the stream (heartbeats; else the coordinator takes the miner for gone). A small one here: a
            # thread hop costs more than its encoding, and results finishing together leave in one message.
            if _small(outcome.output):
                encoded = self._encoded(job.job_id, attempt, outcome)
            else:
                encoded = await asyncio.to_thread(self._encoded, job.job_id, attempt, outcome)
            await self._finished.put((job.job_id, attempt, outcome, encoded))
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is None or task.cancelling():  # the job canceled (or the miner stopping): as asked
                raise
            await self._runner_failed(
                job, attempt, exc
            )  # the runner's own: its job stayed running, slot and all
        except JobFailed as exc:
            await self._finished.put((job.job_id, attempt, exc, exc))
        except (
            Exception,
            SystemExit,
        ) as exc:  # a runner bug (or its sys.exit()) is the job's failure, not the miner's end
            await self._runner_failed(job, attempt, exc)

    async def _runner_failed(self, job: job_pb2.Job, attempt: int, exc: BaseException) -> None:
        log.error("job %s failed", job.job_id, exc_info=exc)
        failed = JobFailed("RUNNER_ERROR", repr(exc)[:4000])
        await self._finished.put((job.job_id, attempt, failed, failed))

    async def _report(self, outbox: asyncio.Queue) -> None:
        """Turn finished jobs into Results messages, batching whatever finished together."""
        while True:
            items = [await self._finished.get()]
            while not self._finished.empty():
                items.append(self._finished.get_nowait())
            results = []
            for job_id, attempt, outcome, encoded in items:
                running = self.running.get(job_id)
                if running is None or running.attempt != attempt:
                    continue
                del self.running[job_id]
                result = encoded
                if isinstance(encoded, miner_service_pb2.Result) and self._too_large(encoded):
                    result = self._encoded(job_id, attempt, outcome)  # a new stream's welcome took less
                if isinstance(result, JobFailed):
                    self._report_failure(outbox, job_id, attempt, result)
                else:
                    self.unacked[job_id] = (attempt, result)
                    results.append(result)
                self._on_stream.add(job_id)
                self.completed += 1
            for message in self._results_messages(outbox, results):
                outbox.put_nowait(message)
            if self.draining and not self.running:
                outbox.put_nowait(
                    miner_service_pb2.ConnectRequest(drain=miner_service_pb2.MinerDrain(reason="drained"))
                )
                self._arm_drain_timer()  # (from its last result: its ack may still be on the way)

    def _encoded(self, job_id: str, attempt: int, outcome: Any) -> miner_service_pb2.Result | JobFailed:
        """The Result message of outcome, or the failure to report (outcome's own, or why no message could carry
        it: this must not raise, as the task reporting every job of the stream may call it). Thread-safe: it
        runs in a worker thread, off the loop."""
        if isinstance(outcome, JobFailed):
            return outcome
        if wrong := _unit_fields_wrong(outcome):
            return JobFailed("INVALID_RESULT", wrong, retryable=False)
        try:
            result = self._result(job_id, attempt, outcome)
        except Exception as exc:  # not JSON (a set, an object), or nested past protobuf's limit
            return JobFailed("INVALID_RESULT", f"the result cannot be encoded: {exc!r}", retryable=False)
        if too_large := self._too_large(result):
            if outcome.raw is not None and not isinstance(outcome.output, bytes):
                return self._encoded(
                    job_id, attempt, dataclasses.replace(outcome, output=outcome.raw, raw=None)
                )
            return JobFailed("RESULT_TOO_LARGE", too_large, retryable=False)  # for good: no miner's would fit
        return result

    def _results_messages(
        self, outbox: asyncio.Queue, results: list[miner_service_pb2.Result]
    ) -> list[miner_service_pb2.ConnectRequest]:
        limit = RESULTS_MESSAGE_BYTES
        for other in (self._coordinator_message_bytes, self._channel_send_bytes):
            if other:
                limit = min(limit, other)
        try:
            return results_messages(results, limit)
        except Exception:  # one protobuf cannot copy into a message (nested too deep): it fails, not the rest
            messages = []
            for result in results:
                try:
                    messages += results_messages([result], limit)
                except Exception as exc:
                    why = f"the result cannot be encoded: {exc!r}"
                    self._report_failure(
                        outbox, result.job_id, result.attempt, JobFailed("INVALID_RESULT", why, False)
                    )
            return messages

    def _too_large(self, result: miner_service_pb2.Result) -> str:
        """Why no message could carry result ("": one can): over the channel's send limit, or over what the
        coordinator said it takes."""
        size = result.ByteSize()
        if size > self.max_result_bytes:
            return f"the result is {size} bytes"
        output = len(result.result_bytes) if result.HasField("result_bytes") else result.result.ByteSize()
        if self._coordinator_result_bytes and output > self._coordinator_result_bytes:
            return f"the result is {output} bytes; the coordinator takes {self._coordinator_result_bytes} at most"
        if self._coordinator_message_bytes and size + MESSAGE_FRAMING_BYTES > self._coordinator_message_bytes:
            return (f"the result's message is {size + MESSAGE_FRAMING_BYTES} bytes; the coordinator takes "
                    f"{self._coordinator_message_bytes} at most")  # fmt: skip
        if self._channel_send_bytes and size + MESSAGE_FRAMING_BYTES > self._channel_send_bytes:
            return (f"the result's message is {size + MESSAGE_FRAMING_BYTES} bytes; the miner's channel sends "
                    f"{self._channel_send_bytes} at most (grpc.max_send_message_length)")  # fmt: skip
        return ""

    def _report_failure(self, outbox: asyncio.Queue, job_id: str, attempt: int, outcome: JobFailed) -> None:
        failure = failure_message(job_id, attempt, outcome)
        self.unacked[job_id] = (attempt, failure)
        outbox.put_nowait(miner_service_pb2.ConnectRequest(failure=failure))

    def _result(self, job_id: str, attempt: int, outcome: Outcome) -> miner_service_pb2.Result:
        r = miner_service_pb2.Result(
            job_id=job_id, attempt=attempt, units=outcome.units, unit_type=outcome.unit_type
        )
        if isinstance(outcome.output, bytes):
            r.result_bytes = outcome.output
            digest = hashlib.sha256(outcome.output).hexdigest()
        else:
            s = struct_pb2.Struct()
            s.update(outcome.output)
            r.result.CopyFrom(s)
            digest = hashlib.sha256(canonical_struct(MessageToDict(s))).hexdigest()
        if self.signer is not None:
            report = build_miner_report(job_id, attempt, digest, r.units, r.unit_type)
            r.miner_report = report
            r.miner_signature = sign_miner_report(self.signer, report)
        return r

    async def _heartbeat(self, outbox: asyncio.Queue, interval: float) -> None:
        """A heartbeat every interval; at most one waits to be sent (the coordinator not reading: its store
        slow), made when it leaves, so that it lists the jobs held then."""
        self._heartbeat_waiting = False
        while True:
            await asyncio.sleep(interval)
            if not self._heartbeat_waiting:
                self._heartbeat_waiting = True
                outbox.put_nowait(_HEARTBEAT)

    def _heartbeat_message(self) -> miner_service_pb2.ConnectRequest:
        return miner_service_pb2.ConnectRequest(heartbeat=miner_service_pb2.MinerHeartbeat(
            running_jobs=[miner_service_pb2.RunningJob(job_id=j, attempt=a) for j, a in self._held().items()]))  # fmt: skip

    async def _reachable(self, channel: grpc.aio.Channel) -> None:
        """Wait until the channel is connected, saying so now and then while the coordinator is unreachable.

        While it is down (a restart), the channel retries the connection on its own backoff (open_channel):
        one TCP connect per channel, however many miners share it. A Connect made before then would fail
        UNAVAILABLE at once and grow this miner's own backoff, so that it would sleep on long after the
        coordinator is back. The call itself is made only once connected, so a signed call's timestamp is
        fresh.
        """
        ready = asyncio.ensure_future(channel.channel_ready())
        loop = asyncio.get_running_loop()
        limit = self.unreachable_timeout_s
        deadline = None if limit is None else loop.time() + limit
        waited, every = 0.0, 10.0
        try:
            while True:
                step = every if deadline is None else min(every, max(0.0, deadline - loop.time()))
                done, _ = await asyncio.wait({ready}, timeout=step)
                if done:
                    return ready.result()
                waited += step
                if deadline is not None and loop.time() >= deadline - 0.001:
                    raise CoordinatorUnreachable(
                        f"no connection to the coordinator at {self.address} for {limit:g} s "
                        f"(channel {channel.get_state().name}: unreachable, or the TLS handshake fails)"
                    )
                log.warning("no connection to the coordinator at %s for %.0f s (channel %s: unreachable, or the "
                            "TLS handshake fails); still trying",
                            self.address, waited, channel.get_state().name)  # fmt: skip
                every = min(every * 2, 300.0)
        finally:
            await _cancel_and_wait([ready])

    async def _send(self, call: Any, outbox: asyncio.Queue) -> None:
        while True:
            message = await outbox.get()
            if message is _LEAVE:
                await _close_side(call, outbox)
                return
            if message is _HEARTBEAT:
                self._heartbeat_waiting = False
                message = self._heartbeat_message()
            elif message is _CAPACITY:
                message = self._capacity_message()
                if message is None:  # (back to what the coordinator was told last)
                    continue
            try:
                await call.write(message)
            except grpc.aio.AioRpcError:
                # (over the channel's send limit? run() asks _learned_send_limit)
                if message.WhichOneof("message") == "results":
                    self._failed_results_bytes = message.ByteSize()
                raise


RESULTS_MESSAGE_BYTES = 1 << 20  # results sent together stay under this (the coordinator's limit is 8 MiB)
# the most a ConnectRequest adds to the Result it carries (tags and lengths of results and of the result)
MESSAGE_FRAMING_BYTES = 16
# refusals of a result that leave the job this miner's, and whether the failure then reported is retryable: a
# result the coordinator cannot take (too large, malformed) would be the same from any miner; a bad signature is
# this miner's own key
FAILED_BY_REFUSAL = {"INVALID_RESULT": False, "BAD_MINER_SIGNATURE": True}
# a canceled job's runner not returned after this long is stuck (a python callable's thread): its slot is not
# offered (a Capacity message says fewer), and an assignment waits no longer for it
STUCK_AFTER_S = 1.0
# a job still running this long is accepted on the stream (RUNNING at the coordinator); a shorter one by its result
ACCEPT_AFTER_S = 0.5
_HEARTBEAT = object()  # in a stream's outbox: a heartbeat, made as it is sent
_LEAVE = object()  # in a stream's outbox: stop(); behind it rejects, results, failures; then the side closed
STOPPING_REASON = "miner stopping"  # the reason of the rejects of a miner leaving on purpose
_CAPACITY = object()  # in a stream's outbox: a Capacity, made as it is sent (if the offer changed)
MAX_STRUCT_DEPTH = 32  # how deep the coordinator takes a structured result (its default)
MAX_RESENDS = 3  # streams ended for a message the coordinator could not take, carrying one result: dropped
RESULTS_PER_MESSAGE = 100
MAX_FAILURE_CODE, MAX_FAILURE_MESSAGE, MAX_UNIT_FIELD = 64, 4096, 64  # characters the coordinator takes
ERROR_DOMAIN = "coordinator.aitbc"  # the domain of the coordinator's google.rpc.ErrorInfo
# RESOURCE_EXHAUSTED reasons about the caller's pace or its calls, not about a message it sent
_NOT_ABOUT_A_MESSAGE = frozenset({"RATE_LIMITED", "STREAM_RATE_EXCEEDED", "TOO_MANY_CONCURRENT_CALLS",
                                  "TOO_MANY_STREAMS", "AUTH_RATE_LIMITED"})  # fmt: skip


async def _leave(call: Any, sender: asyncio.Task | None = None) -> None:
    """End a stream as a miner leaving on purpose (stop()): the sender's last writes (the jobs given back: see
    Miner._give_back_held) and its side closed, and the coordinator's end waited for (LEAVE_GRACE_S at most, in all),
    so that the coordinator logs STREAM_CLOSED ("the miner ended it"); a call cancelled outright reads there as a
    connection that dropped (STREAM_CANCELLED). The reader must still be reading (a read cancelled cancels the call).
    A stream already ended, a connection down, a sender stuck in a write: the caller's cancel ends it all the same."""

    async def close() -> None:
        if sender is not None:
            await asyncio.wait({sender})  # (not canceled by the grace's end: the caller ends it)
        await call.done_writing()
        await call.code()

    with contextlib.suppress(Exception):
        await asyncio.wait_for(close(), LEAVE_GRACE_S)


async def _close_side(call: Any, outbox: asyncio.Queue) -> None:
    """A leaving stream's sender, at _LEAVE: what queued behind it that the coordinator must hear (assignments the
    reader gave back meanwhile, a failure report for a refused result) written, then the stream's side closed.
    Anything else queued is dropped (drain(): moot now)."""
    while not outbox.empty():
        message = outbox.get_nowait()
        if _is_last_word(message):
            await call.write(message)
    await call.done_writing()


def _emptied(queue: asyncio.Queue) -> list[Any]:
    """What waited in queue, in order; queue left empty."""
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


def _is_last_word(message: Any) -> bool:
    """Whether a leaving stream still writes message: a reject, a job's results or failure report (work the
    coordinator has not got; dropped, its job would wait out the reconnect grace)."""
    kinds = ("reject", "results", "failure")
    return isinstance(message, miner_service_pb2.ConnectRequest) and message.WhichOneof("message") in kinds


async def _read_to_end(opening: asyncio.Task, call: Any) -> None:
    """The stream of a miner stopped before its welcome, read to the coordinator's end (see _leave): the opening's
    first message, then the rest, dropped (assignments are taken back with the session)."""
    await opening
    while await call.read() is not grpc.aio.EOF:
        pass


async def _cancel_and_wait(tasks: list[asyncio.Task]) -> None:
    """Cancel tasks and wait until each has ended, so that none outlives what started it. Their errors are
    retrieved: a write on a stream that ended is expected (the reader reports the end); any other is logged. A
    cancel of the caller meanwhile goes on up (the tasks are canceled already)."""
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    await asyncio.wait(tasks)
    for task in tasks:
        if task.cancelled() or (exc := task.exception()) is None:
            continue
        if isinstance(exc, grpc.aio.AioRpcError | asyncio.InvalidStateError):
            log.debug("%s ended with the stream: %r", task.get_name(), exc)
        else:
            log.error("%s failed", task.get_name(), exc_info=exc)


def _cancel_requested() -> bool:
    """Whether the current task was asked to cancel (not only handed a CancelledError from a task it awaited)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _reject_message(job_id: str, attempt: int, reason: str) -> miner_service_pb2.ConnectRequest:
    return miner_service_pb2.ConnectRequest(
        reject=miner_service_pb2.Reject(job_id=job_id, attempt=attempt, reason=reason)
    )


def failure_message(job_id: str, attempt: int, failed: JobFailed) -> miner_service_pb2.Failure:
    """A job's failure report (both transports), cut to what the coordinator takes (else it refuses it)."""
    return miner_service_pb2.Failure(
        job_id=job_id, attempt=attempt, retryable=bool(failed.retryable),
        code=_text(failed.code, MAX_FAILURE_CODE), message=_text(str(failed), MAX_FAILURE_MESSAGE),
    )  # fmt: skip


def _text(value: object, limit: int) -> str:
    """value as the coordinator takes text: a str (a runner's JobFailed code may be an int), no NUL characters, at
    most limit characters, each one UTF-8 can encode (a lone surrogate, as os.fsdecode makes of a file name's
    undecodable bytes, becomes "?"): protobuf refuses such a string, which raised from making the Failure message
    in the task reporting every job."""
    return str(value).replace("\x00", "")[:limit].encode("utf-8", "replace").decode("utf-8")


def _unit_fields_wrong(outcome: Outcome) -> str:
    """Why the coordinator would refuse this outcome's units or unit_type ("" if it would not)."""
    for name in ("units", "unit_type"):
        value = getattr(outcome, name)
        if not isinstance(value, str):  # (len() of an int raised: a retryable RUNNER_ERROR on every miner)
            return f"{name} is a {type(value).__name__}; a str (units a decimal such as '2.5')"
        if len(value) > MAX_UNIT_FIELD:
            return f"{name} is {len(value)} characters; at most {MAX_UNIT_FIELD}"
        if "\x00" in value:
            return f"{name} holds a NUL character"
    return ""


def _status_details(exc: grpc.aio.AioRpcError) -> list[Any]:
    """The google.rpc details (Any messages) of exc's grpc-status-details-bin trailer; none without it (a status
    made by gRPC itself, by a proxy, or in this process) or when it does not parse."""
    for key, value in exc.trailing_metadata() or ():
        if key != "grpc-status-details-bin" or not isinstance(value, bytes):
            continue
        try:
            return list(status_pb2.Status.FromString(value).details)
        except DecodeError:
            return []
    return []


def coordinator_reason(exc: grpc.aio.AioRpcError) -> str:
    """The reason of the coordinator's google.rpc.ErrorInfo on exc; "" when it carries none."""
    for detail in _status_details(exc):
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info) and info.domain == ERROR_DOMAIN:
            return info.reason
    return ""


def retry_delay_s(exc: grpc.aio.AioRpcError) -> float:
    """The RetryInfo delay on exc, in seconds (0.0 without one): the coordinator's "not before" on a refusal
    that waiting helps (a rate limit, too many streams, its store unreachable)."""
    for detail in _status_details(exc):
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return max(0.0, info.retry_delay.ToMilliseconds() / 1000)
    return 0.0


LEAVE_GRACE_S = 1.0  # how long stop() waits for the coordinator to end a stream the miner closed (see _leave)
CALL_TIMEOUT_S = 30.0  # the longest a call to the coordinator waits for its answer (but a long-poll)
# a heartbeat's deadline (poll), and the silence on a stream before its connection is probed: the heartbeat interval,
# at least this (the coordinator answers a heartbeat, and a probe, at once)
QUIET_LEAST_S = 5.0
# a call every coordinator answers at once, to any caller (grpc.health.v1 is open: no key): answered, with any status,
# the connection carries calls
CONNECTION_PROBE_METHOD = "/grpc.health.v1.Health/Check"
# what Miner.channel_options may set (open_channel's keyword arguments the Miner has no field for)
CHANNEL_OPTIONS = frozenset(
    {"keepalive_s", "keepalive_timeout_s", "reconnect_max_s", "tls", "tls_server_name"}
)


def heartbeat_deadline_s(interval: float) -> float:
    """A silence of this long (nothing answered, nothing heard) makes the connection suspect: interval, within
    QUIET_LEAST_S and CALL_TIMEOUT_S."""
    return min(CALL_TIMEOUT_S, max(interval, QUIET_LEAST_S))


# the silence on an idle stream (the miner awaiting no answer) before its connection is probed: this many times the
# quiet time, at least IDLE_QUIET_LEAST_S, jittered up to half again (10,000 idle miners: ~60 probes a second)
IDLE_QUIET_FACTOR = 12
IDLE_QUIET_LEAST_S = 120.0


def idle_quiet_s(quiet_s: float) -> float:
    return max(quiet_s * IDLE_QUIET_FACTOR, IDLE_QUIET_LEAST_S) * random.uniform(1.0, 1.5)


async def connection_stale(channel: grpc.aio.Channel, deadline_s: float) -> bool:
    """Whether channel's connection is up but carries no call: a probe (CONNECTION_PROBE_METHOD, an empty request)
    unanswered within deadline_s while gRPC holds the connection READY (its keepalive pings answered). Any answer, an
    error too, is the connection carrying calls; one not READY (UNAVAILABLE) is lost, which its calls see too."""
    probe = channel.unary_unary(CONNECTION_PROBE_METHOD)  # (bytes in, bytes out)
    try:
        await probe(b"", timeout=deadline_s)
    except grpc.aio.AioRpcError as exc:
        up = channel.get_state() == grpc.ChannelConnectivity.READY
        return exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED and up
    return False


# gRPC's refusal, in this process and before anything is sent, of a message over the channel's send limit
_CLIENT_TOO_LARGE = re.compile(r"CLIENT: Sent message larger than max \((\d+) vs\. (\d+)\)")
# a method no coordinator has: a probe within the send limit is answered UNIMPLEMENTED, touching nothing
PROBE_METHOD = "/aitbc.coordinator.v1.MinerService/ProbeSendLimit"
PROBE_TIMEOUT_S = 10.0


def channel_send_limit(exc: grpc.aio.AioRpcError) -> int:
    """The channel's send limit if exc is gRPC's refusal, in this process, of a message over it; 0 otherwise."""
    if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or coordinator_reason(exc):
        return 0
    found = _CLIENT_TOO_LARGE.match(exc.details() or "")
    return int(found.group(2)) if found else 0


async def probe_send_limit(channel: grpc.aio.Channel, size: int) -> int:
    """The channel's send limit if a message of `size` bytes is over it; 0 if it is not (or the probe failed
    otherwise). A unary call, whose status gRPC reports as it is (a stream's failed write loses it), of `size`
    bytes to PROBE_METHOD: over the limit, refused in this process and nothing sent; within it, sent once and
    answered UNIMPLEMENTED (or UNAVAILABLE, the connection gone: the reason the write failed)."""
    probe = channel.unary_unary(PROBE_METHOD)  # (bytes in, bytes out)
    try:
        await probe(bytes(size), timeout=PROBE_TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        return channel_send_limit(exc)
    return 0


def refused_by_coordinator(exc: grpc.aio.AioRpcError) -> bool:
    """Whether a stream (past its welcome) ended because the coordinator could not take a message on it:
    INVALID_ARGUMENT (a field out of bounds, a malformed message), RESOURCE_EXHAUSTED for its size (the
    coordinator's MESSAGE_TOO_LARGE, or its gRPC receive limit), or the coordinator's INTERNAL (handling it failed).
    Not a rate limit, and not an INTERNAL without the coordinator's details: grpc.aio ends a call INTERNAL
    itself when a write finds the connection gone (a restart, a network blip), and so may a proxy; counted
    against the results on the stream, those would drop valid results after a few restarts."""
    code = exc.code()
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return True
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:  # (not this process's channel refusing to send it)
        return coordinator_reason(exc) not in _NOT_ABOUT_A_MESSAGE and not channel_send_limit(exc)
    return code == grpc.StatusCode.INTERNAL and coordinator_reason(exc) == "INTERNAL"


def results_messages(
    results: list[miner_service_pb2.Result], limit: int = RESULTS_MESSAGE_BYTES
) -> list[miner_service_pb2.ConnectRequest]:
    """Results messages carrying `results`, each under `limit` bytes and RESULTS_PER_MESSAGE results (a
    larger result goes alone): results finished together never add up to a message the coordinator refuses."""
    messages: list[miner_service_pb2.ConnectRequest] = []
    batch: list[miner_service_pb2.Result] = []
    size = MESSAGE_FRAMING_BYTES
    for result in results:
        n = result.ByteSize() + 6  # its tag and length in the list
        if batch and (size + n > limit or len(batch) == RESULTS_PER_MESSAGE):
            messages.append(
                miner_service_pb2.ConnectRequest(results=miner_service_pb2.Results(results=batch))
            )
            batch, size = [], MESSAGE_FRAMING_BYTES
        batch.append(result)
        size += n
    if batch:
        messages.append(miner_service_pb2.ConnectRequest(results=miner_service_pb2.Results(results=batch)))
    return messages


def install_signal_handlers(miner: Miner) -> None:
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, miner.drain)
    loop.add_signal_handler(signal.SIGINT, miner.stop)
