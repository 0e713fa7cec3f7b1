"""The base of the coordinator's server interceptors: grpc-interceptor's AsyncServerInterceptor (one `intercept`
per call, for every kind of RPC), with each method's wrapped handler built once.

grpc.aio asks the interceptors for a method's handler on every call. AsyncServerInterceptor answers by building
a new one each time (a handler tuple and a closure per interceptor), and asks the interceptor inside it again
through its continuation: ~11 us per call for this server's two. The handler it builds depends on the method
alone, so the first call of a method keeps it: later calls are answered from a dict (~7 us), and the
interceptors inside are not asked again (theirs is inside the kept one). Only methods the server has are kept
(a call of an unknown method keeps nothing), so the dict holds at most one handler per method; each
interceptor instance serves one server.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
from grpc_interceptor.server import AsyncServerInterceptor


class CachingServerInterceptor(AsyncServerInterceptor):
    def __init__(self) -> None:
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}

    def adapt(self, handler: grpc.RpcMethodHandler, method_name: str) -> grpc.RpcMethodHandler:
        """The handler kept for method_name, made from the one AsyncServerInterceptor built (as is, here)."""
        return handler

    async def intercept_service(
        self, continuation: Callable, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        method_name = handler_call_details.method
        handler = self._handlers.get(method_name)
        if handler is None:
            built = await super().intercept_service(continuation, handler_call_details)
            if built is None:  # not a method of this server (UNIMPLEMENTED): nothing kept
                return None
            handler = self._handlers[method_name] = self.adapt(built, method_name)
        return handler
