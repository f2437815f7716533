"""``service list``'s core: the maps' state joined with the agent's record of names (pure + a file)."""

from __future__ import annotations

from pathlib import Path

from services.datapath.lb.diff import LbState, diff
from services.datapath.lb.listing import list_services, read_names, write_names
from services.datapath.lb.model import (
    BE_TERMINATING,
    F_CLUSTER_IP,
    F_NODE_PORT,
    Backend,
    Frontend,
    FrontendPlan,
    ServiceRef,
)

TCP = 6
B1, B2 = Backend("10.244.1.5", 8080, TCP), Backend("10.244.2.9", 8080, TCP)
FE = Frontend("10.96.0.20", 80, TCP)
NP = Frontend("127.0.50.1", 30080, TCP)
WEB = ServiceRef("shop", "web", "http")


def _state() -> LbState:
    desired = {
        FE: FrontendPlan(FE, WEB, F_CLUSTER_IP, (B1, B2), (0, BE_TERMINATING)),
        NP: FrontendPlan(NP, WEB, F_NODE_PORT, (), (), local=True),
    }
    st = LbState()
    for op in diff(st, desired):
        st.apply(op)
    return st


def test_rows_named_from_the_record(tmp_path: Path) -> None:
    st = _state()
    write_names(tmp_path, {fe: (st.rev_of[fe], WEB) for fe in (FE, NP)})
    rows = list_services(st, read_names(tmp_path), node="node-1")
    by_fe = {r.frontend: r for r in rows}
    r = by_fe["10.96.0.20:80/TCP"]
    assert (r.type, r.namespace, r.name, r.port_name, r.node) == (
        "ClusterIP",
        "shop",
        "web",
        "http",
        "node-1",
    )
    assert [(b.address, b.state) for b in r.backends] == [
        ("10.244.1.5:8080/TCP", "active"),
        ("10.244.2.9:8080/TCP", "terminating"),
    ]
    n = by_fe["127.0.50.1:30080/TCP"]
    assert n.type == "NodePort" and n.traffic_policy_local and n.backends == []  # count 0: refused
    assert [r.id for r in rows] == sorted(r.id for r in rows) and len({r.id for r in rows}) == 2


def test_stale_or_missing_record_leaves_the_name_empty(tmp_path: Path) -> None:
    st = _state()
    assert all(r.name == "" for r in list_services(st, read_names(tmp_path)))  # no file
    # a record whose id now belongs to another frontend does not name it
    write_names(tmp_path, {Frontend("10.96.9.9", 80, TCP): (st.rev_of[FE], WEB)})
    assert all(r.name == "" for r in list_services(st, read_names(tmp_path)))
    (tmp_path / "lb-services.json").write_text("{not json")
    assert read_names(tmp_path) == {}


def test_lb_l7_frontend_shows_envoy_as_its_backend() -> None:
    from meshctl.cmd_service import table_lines

    envoy = Backend("10.244.1.1", 21234, TCP)
    st = LbState()
    for op in diff(st, {FE: FrontendPlan(FE, WEB, F_CLUSTER_IP, (envoy,), (0,), l7_proxy_port=21234)}):
        st.apply(op)
    (r,) = list_services(st, {}, node="node-1")
    assert r.l7_proxy_port == 21234 and [b.address for b in r.backends] == ["10.244.1.1:21234/TCP"]
    assert "ClusterIP (L7: Envoy)" in table_lines([r])[1]
