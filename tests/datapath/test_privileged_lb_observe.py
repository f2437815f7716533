"""Services in observability, in the real kernel: pods on the backend's node and on the other node
connect to a ClusterIP; the flows the datapaths publish on ``flows.<node>`` name the Service
(destination_service on requests, source_service on replies), and ``nodemesh service list`` shows
the frontend with the backends the maps hold."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import msgspec
import pytest

from localcluster.layout import ClusterInfo, NodeSpec
from meshctl.main import main as cli
from nodemesh.messages.flow import Flow
from tests.datapath import k8s
from tests.datapath.lb_helpers import put_slice, service, tcp_who
from tests.datapath.test_privileged_lb import Cluster, cluster, start, until_who, web_endpoints, web_pods

__all__ = ["cluster"]  # the fixture, used by name
pytestmark = pytest.mark.privileged


def _svc(f: Flow, side: str) -> tuple[str, str] | None:
    s = f.destination_service if side == "dst" else f.source_service
    return (s.namespace, s.name) if s is not None else None


def _write_cluster(c: Cluster, root: Path) -> None:
    """What `nodemesh up` records, for the CLI: the two agents' nodes under ``root/nodes/<node>``."""
    nodes = [NodeSpec(name=h.cfg.node, index=i + 1, address=h.cfg.node_ip, pod_cidr=h.cfg.pod_cidr)
             for i, h in enumerate((c.x, c.y))]  # fmt: skip
    info = ClusterInfo(data_dir=str(root), nats_url=c.x.cfg.nats_url, api_url="", xds_addr="", nodes=nodes)
    (root / "run").mkdir(parents=True, exist_ok=True)
    (root / "run" / "cluster.json").write_bytes(msgspec.json.encode(info))


async def test_privileged_lb_flows_name_the_service_and_service_list(
    cluster: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    c = cluster
    await start(c, web_pods(c, "web-x", "web-y", "client-x", "client-y"))
    vip = c.vip + "10"
    await k8s.put_obj(c.bus, service("web", vip))
    await put_slice(c.bus, "web", "web-1", web_endpoints(c, "web-x", "web-y"))
    both = {"web-x", "web-y"}
    backends = {c.ips["web-x"], c.ips["web-y"]}
    for client in ("client-x", "client-y"):  # same node as web-x, other node than web-x
        await until_who(c.ns(client), vip, 80, both)
        for _ in range(6):
            await asyncio.to_thread(tcp_who, c.ns(client), vip, 80)
    flows = c.x.flows + c.y.flows

    def requests(client: str, dst_ip: str) -> list[Flow]:  # by address: this harness has no ipcache
        return [
            f for f in flows
            if f.ip is not None and f.ip.source == c.ips[client] and f.ip.destination == dst_ip
            and f.l4 is not None and f.l4.tcp is not None
            and f.l4.tcp.destination_port == 8080
        ]  # fmt: skip

    async def attributed() -> bool:
        flows[:] = c.x.flows + c.y.flows
        return all(
            any(_svc(f, "dst") == ("default", "web") for f in requests(cl, c.ips[be]))
            for cl in ("client-x", "client-y")
            for be in ("web-x", "web-y")
        )

    # every client reached both backends (same node and other node), and the flows say through web
    await k8s.until(attributed, 20)
    # packets carry the backend address (socket LB): no flow goes to the ClusterIP itself
    assert not any(f.ip is not None and f.ip.destination == vip for f in flows)
    # every request to a backend's port names web; replies from it name web as the source
    reqs = [f for cl in ("client-x", "client-y") for be in backends for f in requests(cl, be)]
    assert reqs and all(_svc(f, "dst") == ("default", "web") for f in reqs if not f.is_reply)
    replies = [f for f in flows if f.is_reply and f.ip is not None and f.ip.source in backends
               and f.l4 is not None and f.l4.tcp is not None and f.l4.tcp.source_port == 8080]  # fmt: skip
    if replies:  # the tc programs report replies only where they trace them
        assert all(_svc(f, "src") == ("default", "web") and f.destination_service is None for f in replies)
    wire = msgspec.json.decode(msgspec.json.encode(reqs[0]))
    assert wire["destination_service"] == {"name": "web", "namespace": "default"}
    # traffic to a pod that is no backend carries no Service
    assert not any(
        f.destination_service is not None
        for f in flows
        if f.ip is not None and f.ip.destination == c.ips["client-x"]
    )

    # nodemesh service list, from both nodes' pinned maps
    _write_cluster(c, tmp_path)
    capsys.readouterr()
    assert cli(["service", "list", "-o", "json", "--data-dir", str(tmp_path)]) == 0
    rows = json.loads(capsys.readouterr().out)
    for h in (c.x, c.y):
        mine = {r["frontend"]: r for r in rows if r["node"] == h.cfg.node}
        assert set(mine) == {f"{vip}:80/TCP", f"{vip}:53/UDP"}
        tcp = mine[f"{vip}:80/TCP"]
        assert (tcp["namespace"], tcp["name"], tcp["port_name"], tcp["type"]) == (
            "default",
            "web",
            "http",
            "ClusterIP",
        )
        assert {(b["address"], b["state"]) for b in tcp["backends"]} == {
            (f"{ip}:8080/TCP", "active") for ip in backends
        }
        udp = mine[f"{vip}:53/UDP"]
        assert {b["address"] for b in udp["backends"]} == {f"{ip}:5353/UDP" for ip in backends}
    # the table, one node
    assert cli(["service", "list", "--node", c.y.cfg.node, "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["NODE", "ID", "FRONTEND", "SERVICE", "TYPE", "BACKEND"]
    assert any(f"{vip}:80/TCP" in line and "default/web:http" in line and "(active)" in line for line in out)
    assert all(c.x.cfg.node not in line for line in out)
    # bad input: an unknown node, no cluster
    assert cli(["service", "list", "--node", "nope", "--data-dir", str(tmp_path)]) == 1
    assert "unknown node nope" in capsys.readouterr().err
    assert cli(["service", "list", "--data-dir", str(tmp_path / "none")]) == 1
    assert "run `nodemesh up` first" in capsys.readouterr().err
