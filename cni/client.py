"""The plugin's side of the node-local endpoint socket (:mod:`nodemesh.messages.cni`)."""

from __future__ import annotations

import socket

import msgspec

from nodemesh.messages.cni import EndpointReply, EndpointRequest

__all__ = ["DatapathUnreachable", "call"]


class DatapathUnreachable(Exception):
    """Nothing listens on the socket (the node's datapath is down or not installed)."""


def call(path: str, req: EndpointRequest, timeout: float) -> EndpointReply:
    """One request, one reply. ``timeout`` bounds the whole exchange (ADD waits for policy)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise DatapathUnreachable(f"{path}: {e.strerror}") from None
        s.sendall(msgspec.json.encode(req) + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    finally:
        s.close()
    if not buf:
        raise DatapathUnreachable(f"{path}: the datapath closed the connection without a reply")
    return msgspec.json.decode(buf, type=EndpointReply)
