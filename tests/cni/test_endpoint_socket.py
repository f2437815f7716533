"""The datapath's endpoint socket with bad input: a clear CNI error in reply, and it keeps serving."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import msgspec

from nodemesh.messages.cni import EndpointReply, EndpointRequest
from services.datapath.cni.server import EndpointSocket


async def exchange(path: str, line: bytes) -> EndpointReply:
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(line)
    await writer.drain()
    reply = await reader.readline()
    writer.close()
    await writer.wait_closed()
    return msgspec.json.decode(reply, type=EndpointReply)


async def test_bad_requests_get_cni_errors_and_the_socket_keeps_serving(tmp_path: Path) -> None:
    async def handler(req: EndpointRequest) -> EndpointReply:
        if req.container_id == "boom":
            raise RuntimeError("netlink said no")
        return EndpointReply(ok=True, endpoint_id=7)

    sock = EndpointSocket(str(tmp_path / "run" / "cni.sock"), handler)
    await sock.start()
    try:
        path = str(sock.path)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        bad = await exchange(path, b"{not json\n")
        assert (bad.ok, bad.code, bad.msg) == (False, 7, "malformed endpoint request")
        unknown = await exchange(path, b'{"command": "ADD", "container_id": "c", "mode": "x"}\n')
        assert (unknown.ok, unknown.code) == (False, 7) and "mode" in unknown.details
        req = EndpointRequest(command="ADD", container_id="boom", mode="standalone")
        failed = await exchange(path, msgspec.json.encode(req) + b"\n")
        assert (failed.ok, failed.code, failed.msg, failed.details) == (
            False,
            5,
            "ADD failed",
            "netlink said no",
        )
        req = EndpointRequest(command="DEL", container_id="fine", mode="standalone")
        assert await exchange(path, msgspec.json.encode(req) + b"\n") == EndpointReply(ok=True, endpoint_id=7)
    finally:
        await sock.stop()
    assert not sock.path.exists()
