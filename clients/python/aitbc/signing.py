"""HMAC request signing (version 1), shared by the SDK (which signs) and the coordinator (which checks).

A signed call carries three metadata entries besides its API key:

    x-aitbc-timestamp   unix time in seconds, e.g. "1718000000" or "1718000000.250"
    x-aitbc-nonce       8 to 128 characters, unique per call (the SDK uses 32 random hex digits)
    x-aitbc-signature   lowercase hex HMAC-SHA256(secret, string_to_sign)

    string_to_sign = "AITBC-HMAC-SHA256\\n" + method + "\\n" + timestamp + "\\n" + nonce + "\\n" + body_sha256

`method` is the full gRPC path ("/aitbc.coordinator.v1.JobService/SubmitJob"), `timestamp` and `nonce` the
metadata values exactly as sent, and `body_sha256` the lowercase hex SHA-256 of the serialized request
message bytes as they travel on the wire. Calls whose requests are a stream (MinerService.Connect) sign the
call only: `body_sha256` is empty.

The SDK serializes each request once, signs those bytes and sends those same bytes (see SigningChannel), so
the digest never depends on a second serialization agreeing with the first.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc

SCHEME = "AITBC-HMAC-SHA256"
TIMESTAMP = "x-aitbc-timestamp"
NONCE = "x-aitbc-nonce"
SIGNATURE = "x-aitbc-signature"


def string_to_sign(method: str, timestamp: str, nonce: str, body_sha256: str) -> bytes:
    return f"{SCHEME}\n{method}\n{timestamp}\n{nonce}\n{body_sha256}".encode()


def signature(secret: bytes, method: str, timestamp: str, nonce: str, body_sha256: str) -> str:
    return hmac.new(secret, string_to_sign(method, timestamp, nonce, body_sha256), hashlib.sha256).hexdigest()


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def signing_metadata(
    secret: bytes | str,
    method: str,
    body: bytes | None,
    *,
    timestamp: float | None = None,
    nonce: str | None = None,
) -> tuple[tuple[str, str], ...]:
    """The three metadata entries signing one call; body None for a call whose requests are a stream."""
    key = secret.encode() if isinstance(secret, str) else secret
    ts = f"{time.time() if timestamp is None else timestamp:.3f}"
    nonce = nonce or secrets.token_hex(16)
    digest = "" if body is None else body_digest(body)
    return ((TIMESTAMP, ts), (NONCE, nonce), (SIGNATURE, signature(key, method, ts, nonce, digest)))


def _merge(metadata: Sequence[tuple[str, Any]] | None, extra: tuple[tuple[str, str], ...]) -> list:
    return [*(metadata or ()), *extra]


class SigningChannel:
    """Wraps a grpc.aio.Channel so that every call made through stubs built on it is signed.

    Generated stubs ask the channel for multicallables; this one hands out callables that serialize the
    request themselves, sign exactly those bytes, and send them through the real channel unchanged (with an
    identity serializer). Streamed requests are signed per call.
    """

    def __init__(self, channel: grpc.aio.Channel, secret: bytes | str) -> None:
        self.channel = channel
        self.secret = secret.encode() if isinstance(secret, str) else secret

    def unary_unary(self, method: str, request_serializer: Callable | None = None,
                    response_deserializer: Callable | None = None, **kwargs: Any) -> Callable:  # fmt: skip
        inner = self.channel.unary_unary(method, request_serializer=None,
                                         response_deserializer=response_deserializer, **kwargs)  # fmt: skip
        return _SignedUnary(inner, self.secret, method, request_serializer)

    def unary_stream(self, method: str, request_serializer: Callable | None = None,
                     response_deserializer: Callable | None = None, **kwargs: Any) -> Callable:  # fmt: skip
        inner = self.channel.unary_stream(method, request_serializer=None,
                                          response_deserializer=response_deserializer, **kwargs)  # fmt: skip
        return _SignedUnary(inner, self.secret, method, request_serializer)

    def stream_unary(self, method: str, request_serializer: Callable | None = None,
                     response_deserializer: Callable | None = None, **kwargs: Any) -> Callable:  # fmt: skip
        inner = self.channel.stream_unary(method, request_serializer=request_serializer,
                                          response_deserializer=response_deserializer, **kwargs)  # fmt: skip
        return _SignedStream(inner, self.secret, method)

    def stream_stream(self, method: str, request_serializer: Callable | None = None,
                      response_deserializer: Callable | None = None, **kwargs: Any) -> Callable:  # fmt: skip
        inner = self.channel.stream_stream(method, request_serializer=request_serializer,
                                           response_deserializer=response_deserializer, **kwargs)  # fmt: skip
        return _SignedStream(inner, self.secret, method)

    async def close(self, grace: float | None = None) -> None:
        await self.channel.close(grace)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.channel, name)


class _SignedUnary:
    def __init__(self, inner: Callable, secret: bytes, method: str, serializer: Callable | None) -> None:
        self.inner, self.secret, self.method, self.serializer = inner, secret, method, serializer

    def __call__(
        self, request: Any, *, metadata: Sequence[tuple[str, Any]] | None = None, **kwargs: Any
    ) -> Any:
        body = request if self.serializer is None else self.serializer(request)
        extra = signing_metadata(self.secret, self.method, body)
        return self.inner(body, metadata=_merge(metadata, extra), **kwargs)


class _SignedStream:
    def __init__(self, inner: Callable, secret: bytes, method: str) -> None:
        self.inner, self.secret, self.method = inner, secret, method

    def __call__(self, request_iterator: Any = None, *, metadata: Sequence[tuple[str, Any]] | None = None,
                 **kwargs: Any) -> Any:  # fmt: skip
        extra = signing_metadata(self.secret, self.method, None)
        return self.inner(request_iterator, metadata=_merge(metadata, extra), **kwargs)
