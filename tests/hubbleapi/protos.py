"""Hubble's flow/observer definitions (tests/hubbleapi/proto) compiled with grpcio-tools' protoc.

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

PROTO_DIR = Path(__file__).resolve().parent / "proto"


@functools.cache
def compiled() -> tuple[ModuleType, ModuleType]:
    """(flow_pb2, observer_pb2)."""
    import grpc_tools
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="nodemesh-hubbleapi-")
    wkt = Path(grpc_tools.__file__).parent / "_proto"
    files = ["flow/flow.proto", "observer/observer.proto"]
    rc = protoc.main(["protoc", f"-I{PROTO_DIR}", f"-I{wkt}", f"--python_out={out}", *files])
    if rc != 0:
        raise RuntimeError(f"protoc failed ({rc}) on {files}")
    for pkg in ("flow", "observer"):
        (Path(out) / pkg / "__init__.py").touch()
    sys.path.insert(0, out)
    return importlib.import_module("flow.flow_pb2"), importlib.import_module("observer.observer_pb2")


def strict_response(line: str) -> Message:
    """One ``-o json`` line parsed as observer.GetFlowsResponse; unknown fields or bad values raise."""
    _, observer = compiled()
    msg: Message = observer.GetFlowsResponse()
    json_format.Parse(line, msg, ignore_unknown_fields=False)
    return msg
