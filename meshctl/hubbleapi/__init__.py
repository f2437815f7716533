"""Hubble's flow/observer API as nodemesh restates it (``proto/``), loaded without generated code.

``hubble.binpb`` is the FileDescriptorSet protoc makes from ``proto/`` (tests/hubbleapi checks that it
is up to date); :func:`messages` loads it into a pool of its own (so it never collides with modules
protoc generates from the same files, as the tests do) and returns the message classes. Only
``nodemesh hubble serve`` and the tests import this.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = ["DESCRIPTOR_SET", "PROTO_DIR", "PROTO_FILES", "messages"]

PROTO_DIR = Path(__file__).resolve().parent / "proto"
PROTO_FILES = ("flow/flow.proto", "relay/relay.proto", "observer/observer.proto")
DESCRIPTOR_SET = Path(__file__).resolve().parent / "hubble.binpb"


@functools.cache
def messages() -> dict[str, Any]:
    """Full message name (``observer.GetFlowsResponse``) → its class."""
    fds = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    out: dict[str, Any] = {}
    for fd in fds.file:  # dependencies first (protoc's order), the well-known types included
        pool.Add(fd)
    for fd in fds.file:
        for m in fd.message_type:
            name = f"{fd.package}.{m.name}"
            out[name] = message_factory.GetMessageClass(pool.FindMessageTypeByName(name))
    return out
