"""Backend → Service attribution for flows, and the flow builder filling destination_service /
source_service from it (pure)."""

from __future__ import annotations

import socket

from services.datapath.flows import event_to_flow
from services.datapath.lb.attribution import BackendServices
from services.datapath.lb.model import F_CLUSTER_IP, F_NODE_PORT, Backend, Frontend, FrontendPlan, ServiceRef
from services.datapath.maps import DIR_EGRESS, DIR_INGRESS, EVT_TRACE, ip_to_be32
from tests.datapath.test_flows import Dir, _ev

TCP, UDP = 6, 17
B1, B2 = Backend("10.244.1.5", 8080, TCP), Backend("10.244.2.9", 8080, TCP)
FE_WEB = Frontend("10.96.0.20", 80, TCP)
FE_WEB_NP = Frontend("127.0.50.1", 30080, TCP)
FE_ALT = Frontend("10.96.0.30", 80, TCP)


def plan(fe: Frontend, ns: str, name: str, *bes: Backend, flag: int = F_CLUSTER_IP) -> FrontendPlan:
    return FrontendPlan(fe, ServiceRef(ns, name, "http"), flag, bes, tuple(0 for _ in bes))


def test_backend_of_one_service() -> None:
    idx = BackendServices()
    idx.set(FE_WEB, None, plan(FE_WEB, "shop", "web", B1, B2))
    assert idx.lookup("10.244.1.5", 8080, TCP) == ("shop", "web")
    assert idx.lookup("10.244.2.9", 8080, TCP) == ("shop", "web")
    assert idx.lookup("10.244.1.5", 8080, UDP) is None  # the protocol is part of the backend
    assert idx.lookup("10.244.1.5", 9090, TCP) is None


def test_backend_leaving_and_frontend_removed() -> None:
    idx = BackendServices()
    p1 = plan(FE_WEB, "shop", "web", B1, B2)
    idx.set(FE_WEB, None, p1)
    p2 = plan(FE_WEB, "shop", "web", B2)
    idx.set(FE_WEB, p1, p2)
    assert idx.lookup(B1.addr, B1.port, TCP) is None and idx.lookup(B2.addr, B2.port, TCP) == ("shop", "web")
    idx.set(FE_WEB, p2, None)
    assert idx.lookup(B2.addr, B2.port, TCP) is None and len(idx) == 0


def test_shared_backend_names_the_smallest_service_until_it_goes() -> None:
    idx = BackendServices()
    web, alt = plan(FE_WEB, "shop", "web", B1), plan(FE_ALT, "shop", "alt", B1)
    idx.set(FE_WEB, None, web)
    idx.set(FE_WEB_NP, None, plan(FE_WEB_NP, "shop", "web", B1, flag=F_NODE_PORT))
    assert idx.lookup(B1.addr, B1.port, TCP) == ("shop", "web")
    idx.set(FE_ALT, None, alt)
    assert idx.lookup(B1.addr, B1.port, TCP) == ("shop", "alt")  # deterministic: min (namespace, name)
    idx.set(FE_ALT, alt, None)
    assert idx.lookup(B1.addr, B1.port, TCP) == ("shop", "web")  # the NodePort and ClusterIP remain


def test_flows_carry_destination_and_source_service() -> None:
    idx = BackendServices()
    idx.set(FE_WEB, None, plan(FE_WEB, "shop", "web", Backend("10.244.1.5", 80, TCP)))
    # client 10.244.2.7 → backend 10.244.1.5:80 (what a connect to the ClusterIP became)
    req = event_to_flow(_ev(type=EVT_TRACE, drop_reason=0, dir=DIR_INGRESS), Dir(), 0, idx.lookup)
    assert req.destination_service is not None
    assert (req.destination_service.namespace, req.destination_service.name) == ("shop", "web")
    assert req.source_service is None
    # the reply: backend:80 → client; source_service names the backend's Service
    reply = _ev(type=EVT_TRACE, drop_reason=0, dir=DIR_EGRESS, saddr=ip_to_be32("10.244.1.5"),
                daddr=ip_to_be32("10.244.2.7"), sport=socket.htons(80), dport=socket.htons(40000),
                is_reply=1)  # fmt: skip
    f = event_to_flow(reply, Dir(), 0, idx.lookup)
    assert f.source_service is not None and f.source_service.name == "web" and f.destination_service is None
    # the same port over UDP, or no lookup at all: no Service
    assert (
        event_to_flow(_ev(type=EVT_TRACE, drop_reason=0, proto=17), Dir(), 0, idx.lookup).destination_service
        is None
    )
    assert event_to_flow(_ev(type=EVT_TRACE, drop_reason=0), Dir(), 0).destination_service is None
    # a dropped request to a backend names the Service too (a policy denying the backend)
    drop = event_to_flow(_ev(), Dir(), 0, idx.lookup)
    assert drop.verdict == "DROPPED" and drop.destination_service is not None
