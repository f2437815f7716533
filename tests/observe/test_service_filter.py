"""``--to-service`` / ``--from-service`` / ``--service``: Hubble's Service filters over the flows'
``destination_service`` / ``source_service``."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from meshctl.cmd_observe import register
from meshctl.flowfilter import build_filters, matches
from nodemesh.messages.flow import Flow, Service
from tests.observe.flows import FE, WEB, flow

TO_WEB = msgspec.structs.replace(flow(FE, WEB), destination_service=Service(namespace="prod", name="web"))
FROM_WEB = msgspec.structs.replace(
    flow(WEB, FE, sip="10.244.1.7", dip="10.244.1.5"), source_service=Service(namespace="prod", name="web")
)
TO_WEB_ADMIN = msgspec.structs.replace(
    flow(FE, WEB), destination_service=Service(namespace="prod", name="web-admin")
)
TO_DEV_WEB = msgspec.structs.replace(flow(FE, WEB), destination_service=Service(namespace="dev", name="web"))
NO_SERVICE = flow(FE, WEB)
ALL = {"to-web": TO_WEB, "from-web": FROM_WEB, "to-web-admin": TO_WEB_ADMIN, "to-dev-web": TO_DEV_WEB,
       "none": NO_SERVICE}  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "want"),
    [
        ({"to_service": ["prod/web"]}, {"to-web", "to-web-admin"}),  # a name prefix, as for pods
        ({"to_service": ["prod/web-admin"]}, {"to-web-admin"}),
        ({"to_service": ["web"]}, {"to-web", "to-web-admin", "to-dev-web"}),  # bare: any namespace
        ({"to_service": ["dev/"]}, {"to-dev-web"}),
        ({"from_service": ["prod/web"]}, {"from-web"}),
        ({"service": ["prod/web"]}, {"to-web", "to-web-admin", "from-web"}),  # either side
        ({"to_service": ["prod/web"], "from_pod": ["prod/fe"]}, {"to-web", "to-web-admin"}),
        ({"to_service": ["prod/nothing"]}, set()),
    ],
)
def test_service_filters(flags: dict[str, Any], want: set[str]) -> None:
    fs = build_filters(**flags)
    assert {k for k, f in ALL.items() if matches(f, fs)} == want


def test_service_flags_reach_the_filters() -> None:
    import argparse

    from meshctl.cmd_observe import filters_from_args

    p = argparse.ArgumentParser()
    register(p.add_subparsers())
    args = p.parse_args(["observe", "--to-service", "prod/web", "--from-service", "dev/db"])
    (f,), deny = filters_from_args(args)
    assert deny == []
    assert f.destination_service == ["prod/web"] and f.source_service == ["dev/db"]


def test_json_field_names_are_hubbles() -> None:
    wire = msgspec.json.decode(msgspec.json.encode(TO_WEB))
    assert wire["destination_service"] == {"name": "web", "namespace": "prod"}
    assert "source_service" not in wire  # omitted when unset, as protojson does
    assert msgspec.json.decode(msgspec.json.encode(TO_WEB), type=Flow) == TO_WEB
