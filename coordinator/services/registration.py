"""How the servicers join the gRPC server: through their generic handlers only.

The generated `add_*Servicer_to_server` functions register each service twice: a generic handler (one dict
lookup by method name) and "registered method" handlers. For each registered method grpc.aio keeps a call
request of its own pending, and its accept loop waits on all of them at once (`asyncio.wait` over one future
per method, plus one for unregistered methods) for every call that arrives: with this server's 31 methods
that wait costs ~10 us of the event loop per call, against ~1 us for the one future left without them. The
generic handlers serve the same methods with the same handlers (grpc.aio looks a method up among the
registered ones first, then the generic ones), so the registration is left out. (Reflection still registers
its one method: its helper takes only a real grpc.aio server.)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc


class GenericOnly:
    """The server as an `add_*Servicer_to_server` function sees it: generic handlers are added, registered
    method handlers are not (see the module)."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self.server = server

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self.server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service_name: str, handlers: dict[str, Any]) -> None:
        """Left out: the generic handler added with them serves these methods."""


def generic_only(server: grpc.aio.Server) -> Any:
    """server for an `add_*Servicer_to_server(servicer, generic_only(server))` call."""
    return GenericOnly(server)
