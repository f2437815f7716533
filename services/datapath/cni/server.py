"""The node-local endpoint socket the ``nodemesh-cni`` plugin talks to (:mod:`nodemesh.messages.cni`).

Authenticated by file permissions: the socket is 0600 in a 0700 directory, both owned by the agent
(root), and a peer whose uid (SO_PEERCRED) is neither root nor the agent's own is refused. One JSON
request line, one JSON reply line per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec

from nodemesh.messages.cni import CNI_ERR_INVALID_CONFIG, CNI_ERR_IO, EndpointReply, EndpointRequest

__all__ = ["EndpointSocket"]

log = logging.getLogger("nodemesh.datapath.cni")
Handler = Callable[[EndpointRequest], Awaitable[EndpointReply]]
_MAX_REQUEST = 64 * 1024


class EndpointSocket:
    def __init__(self, path: str, handler: Handler) -> None:
        self.path = Path(path)
        self.handler = handler
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        d = self.path.parent
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o700)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a previous run's socket: nobody listens on it any more
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=_MAX_REQUEST)
        os.chmod(self.path, 0o600)
        log.info("CNI endpoint socket listening", extra={"path": str(self.path)})

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            reply = await self._reply(reader, writer)
            writer.write(msgspec.json.encode(reply) + b"\n")
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the plugin went away (its runtime timed out): nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _reply(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> EndpointReply:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
            if uid not in (0, os.geteuid()):
                log.warning("CNI request from uid %d refused", uid)
                return EndpointReply(ok=False, code=CNI_ERR_IO, msg="permission denied")
        try:
            line = await reader.readline()
            req = msgspec.json.decode(line, type=EndpointRequest)
        except (ValueError, asyncio.LimitOverrunError, msgspec.DecodeError, msgspec.ValidationError) as e:
            return EndpointReply(
                ok=False, code=CNI_ERR_INVALID_CONFIG, msg="malformed endpoint request", details=str(e)
            )
        try:
            return await self.handler(req)
        except Exception as e:  # one bad request must never take the socket down
            log.exception("CNI %s %s failed", req.command, req.container_id)
            return EndpointReply(ok=False, code=CNI_ERR_IO, msg=f"{req.command} failed", details=str(e))
