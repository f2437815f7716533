"""The committed descriptor set (meshctl/hubbleapi/hubble.binpb, what `nodemesh hubble serve` loads)
is what protoc makes of the .proto files next to it. After editing them, regenerate it with:

    .venv/bin/python -c 'from tests.hubbleapi.protos import descriptor_set as d; \
        open("meshctl/hubbleapi/hubble.binpb", "wb").write(d())'
"""

from __future__ import annotations

from meshctl.hubbleapi import DESCRIPTOR_SET, messages
from tests.hubbleapi.protos import compiled, descriptor_set


def test_committed_descriptor_set_is_up_to_date() -> None:
    assert DESCRIPTOR_SET.read_bytes() == descriptor_set()


def test_runtime_classes_and_compiled_modules_agree() -> None:
    flow_pb2, observer_pb2 = compiled()
    m = messages()
    assert m["flow.Flow"].DESCRIPTOR.full_name == flow_pb2.Flow.DESCRIPTOR.full_name
    assert [f.name for f in m["observer.GetFlowsRequest"].DESCRIPTOR.fields] == [
        f.name for f in observer_pb2.GetFlowsRequest.DESCRIPTOR.fields
    ]
