"""The outermost server interceptor: a request id for every call (logged with each line it causes) and, when
tracing is on, the caller's W3C trace context from the gRPC metadata."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import grpc
from aitbc.randomness import random_hex

from ..logs import request_id
from ..security.intercepting import CachingServerInterceptor
from . import tracing

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def new_request_id() -> str:
    return random_hex(8)


class RequestContextInterceptor(CachingServerInterceptor):
    """Sets the request id (the caller's `x-request-id` when well formed, else a fresh one)."""

    async def intercept(
        self, method: Callable, request_or_iterator: Any, context: grpc.aio.ServicerContext, method_name: str
    ) -> Any:
        metadata = context.invocation_metadata()
        rid = None
        for key, value in metadata or ():
            if key == "x-request-id" and isinstance(value, str) and _SAFE_ID.match(value):
                rid = value
                break
        request_id.set(rid or new_request_id())  # each RPC runs in its own task: no reset needed
        if tracing.ENABLED:
            return await tracing.traced_call(method, request_or_iterator, context, method_name, metadata)
        result = method(request_or_iterator, context)
        if hasattr(result, "__aiter__"):
            return result
        return await result
