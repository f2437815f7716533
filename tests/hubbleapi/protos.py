"""Hubble's flow/observer definitions (meshctl/hubbleapi/proto) compiled with grpcio-tools' protoc.

Compiled once per test session into a temporary directory and imported from there; the
well-known types (Timestamp, BoolValue) come from grpcio-tools' bundled protos. No network.
"""

from __future__ import annotations

import functools
import importlib
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from google.protobuf import json_format
from google.protobuf.message import Message

from meshctl.hubbleapi import PROTO_DIR, PROTO_FILES


@functools.cache
def compiled() -> tuple[ModuleType, ModuleType]:
    """(flow_pb2, observer_pb2)."""
    import grpc_tools
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="nodemesh-hubbleapi-")
    wkt = Path(grpc_tools.__file__).parent / "_proto"
    files = list(PROTO_FILES)
    rc = protoc.main(["protoc", f"-I{PROTO_DIR}", f"-I{wkt}", f"--python_out={out}", *files])
    if rc != 0:
        raise RuntimeError(f"protoc failed ({rc}) on {files}")
    for pkg in ("flow", "relay", "observer"):
        (Path(out) / pkg / "__init__.py").touch()
    sys.path.insert(0, out)
    return importlib.import_module("flow.flow_pb2"), importlib.import_module("observer.observer_pb2")


def strict_response(line: str) -> Message:
    """One ``-o json`` line parsed as observer.GetFlowsResponse; unknown fields or bad values raise."""
    _, observer = compiled()
    msg: Message = observer.GetFlowsResponse()
    json_format.Parse(line, msg, ignore_unknown_fields=False)
    return msg


def descriptor_set() -> bytes:
    """What protoc makes of the .proto files now (to compare with the committed hubble.binpb)."""
    import grpc_tools
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as out:
        wkt = Path(grpc_tools.__file__).parent / "_proto"
        target = Path(out) / "hubble.binpb"
        args = ["protoc", f"-I{PROTO_DIR}", f"-I{wkt}", "--include_imports", f"--descriptor_set_out={target}"]
        rc = protoc.main([*args, *PROTO_FILES])
        if rc != 0:
            raise RuntimeError(f"protoc failed ({rc})")
        return target.read_bytes()
