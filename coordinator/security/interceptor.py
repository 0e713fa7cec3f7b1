"""The server interceptor: authenticates the API key, enforces roles per service, maps errors to statuses.

Built on grpc-interceptor's AsyncServerInterceptor, which passes both async-generator and read/write style
streaming handlers through. Cancellation is never swallowed: asyncio.CancelledError propagates untouched.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from grpc_interceptor.server import AsyncServerInterceptor

from ..domain.errors import CoordinatorError, Kind
from ..services.status import abort
from .keys import Identity, KeyRing

log = logging.getLogger("coordinator.rpc")

PACKAGE = "/aitbc.coordinator.v1."
ROLES_BY_SERVICE = {
    "JobService": frozenset({"client"}),
    "MinerService": frozenset({"miner"}),
    "AdminService": frozenset({"admin"}),
    "ReceiptService": frozenset({"client", "miner", "admin"}),
}

current_identity: contextvars.ContextVar[Identity] = contextvars.ContextVar("identity")


def identity() -> Identity:
    """The authenticated caller of the current RPC."""
    return current_identity.get()


def presented_key(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str:
    for key, value in metadata or ():
        if key == "x-api-key":
            return value if isinstance(value, str) else value.decode()
        if key == "authorization":
            text = value if isinstance(value, str) else value.decode()
            if text[:7].lower() == "bearer ":
                return text[7:].strip()
    return ""


class AuthInterceptor(AsyncServerInterceptor):
    def __init__(self, keyring: KeyRing) -> None:
        self.keyring = keyring

    async def intercept(
        self, method: Callable, request_or_iterator: Any, context: grpc.aio.ServicerContext, method_name: str
    ) -> Any:
        if not method_name.startswith(PACKAGE):
            return await _call(method, request_or_iterator, context)  # health, reflection: open
        service = method_name[len(PACKAGE) :].split("/", 1)[0]
        try:
            who = self._authenticate(context, service)
        except CoordinatorError as error:
            await abort(context, error)
            return None
        current_identity.set(who)
        result = method(request_or_iterator, context)
        if inspect.isasyncgen(result):
            return _guard_stream(result, context)
        try:
            return await result
        except CoordinatorError as error:
            await abort(context, error)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _internal(context, method_name, exc)

    def _authenticate(self, context: grpc.aio.ServicerContext, service: str) -> Identity:
        key = presented_key(context.invocation_metadata())
        if not key:
            raise CoordinatorError(Kind.UNAUTHENTICATED, "UNAUTHENTICATED",
                                   "missing API key: send it as x-api-key metadata or authorization: Bearer KEY")  # fmt: skip
        who = self.keyring.identify(key)
        if who is None:
            raise CoordinatorError(Kind.UNAUTHENTICATED, "UNAUTHENTICATED", "unknown or disabled API key")
        allowed = ROLES_BY_SERVICE.get(service)
        if allowed is None or who.role not in allowed:
            raise CoordinatorError(Kind.PERMISSION_DENIED, "WRONG_ROLE",
                                   f"a {who.role} key cannot call {service}",
                                   metadata={"role": who.role, "service": service})  # fmt: skip
        return who


async def _call(method: Callable, request: Any, context: grpc.aio.ServicerContext) -> Any:
    result = method(request, context)
    if inspect.isasyncgen(result):
        return result
    return await result


async def _guard_stream(stream: AsyncIterator, context: grpc.aio.ServicerContext) -> AsyncIterator:
    try:
        async for item in stream:
            yield item
    except CoordinatorError as error:
        await abort(context, error)
    except grpc.aio.AbortError:
        raise
    except Exception as exc:
        await _internal(context, "stream", exc)


async def _internal(context: grpc.aio.ServicerContext, method_name: str, exc: Exception) -> None:
    """An unexpected failure: logged with its trace; the caller gets INTERNAL, never a crash or hang."""
    log.exception("unexpected error in %s", method_name, exc_info=exc)
    await abort(
        context, CoordinatorError(Kind.INTERNAL, "INTERNAL", "internal error; see the coordinator log")
    )
