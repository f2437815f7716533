"""lb-l7 Services in the agents' maps (real kernel, two simulated nodes): each node sends the
ClusterIP to its own router IP at the port of nodemesh/lbl7.py; of two colliding Services the older
keeps its port, the younger takes the next one and moves back when the older goes; without the
annotation the Service returns to its pods. (Envoy and traffic: tests/local/test_privileged_lbl7.py.)"""

from __future__ import annotations

from typing import Any

import pytest

from nodemesh import lbl7
from services.datapath.lb.model import Backend, Frontend
from tests.datapath import k8s
from tests.datapath.lb_helpers import put_slice, service
from tests.datapath.test_privileged_lb import Cluster, cluster, start, web_endpoints, web_pods
from tests.datapath.test_privileged_service import Harness

pytestmark = pytest.mark.privileged
__all__ = ["cluster"]


def _colliding() -> tuple[str, str]:
    seen: dict[int, str] = {}
    for i in range(100000):
        p = lbl7.preferred_port(lbl7.PortKey("default", f"l7s{i}", 80))
        if p in seen:
            return seen[p], f"l7s{i}"
        seen[p] = f"l7s{i}"
    raise AssertionError("no collision")


def l7service(name: str, vip: str, created: str, enabled: bool = True) -> dict[str, Any]:
    s = service(name, vip, selector={"app": "web"})
    s["metadata"]["creationTimestamp"] = created
    s["metadata"]["annotations"] = {lbl7.ANNOTATION: "enabled" if enabled else "disabled"}
    return s


async def test_privileged_lb_l7_frontends_go_to_each_node_s_router_ip(cluster: Cluster) -> None:
    c = cluster
    await start(c, web_pods(c, "web-x", "web-y"))
    old, young = _colliding()
    want = lbl7.preferred_port(lbl7.PortKey("default", old, 80))
    nxt = want + 1 if want + 1 < lbl7.PORT_BASE + lbl7.PORT_COUNT else lbl7.PORT_BASE
    va, vb = c.vip + "21", c.vip + "22"
    await k8s.put_obj(c.bus, l7service(old, va, "2026-01-01T00:00:00Z"))
    await k8s.put_obj(c.bus, l7service(young, vb, "2026-01-01T00:00:09Z"))
    await put_slice(c.bus, young, f"{young}-1", web_endpoints(c, "web-x", "web-y"))
    routers = {h.cfg.node: lbl7.router_ip(h.cfg.pod_cidr) for h in (c.x, c.y)}

    def on(h: Harness, fe: Frontend) -> set[Backend]:
        return c.backends_in_map(h, fe)

    for h in (c.x, c.y):
        r = routers[h.cfg.node]
        await k8s.until(lambda h=h, r=r: on(h, Frontend(va, 80, 6)) == {Backend(r, want, 6)}, 30)
        await k8s.until(lambda h=h, r=r: on(h, Frontend(vb, 80, 6)) == {Backend(r, nxt, 6)}, 30)
        # UDP is balanced at the socket, over the pods (written once the slice is seen: wait for it too)
        udp = {Backend(c.ips["web-x"], 5353, 17), Backend(c.ips["web-y"], 5353, 17)}
        await k8s.until(lambda h=h, udp=udp: on(h, Frontend(vb, 53, 17)) == udp, 30)
    # the older Service goes: the younger one takes its preferred port (what xds computes too)
    await k8s.del_obj(c.bus, "Service", "default", old)
    for h in (c.x, c.y):
        r = routers[h.cfg.node]
        await k8s.until(lambda h=h, r=r: on(h, Frontend(vb, 80, 6)) == {Backend(r, want, 6)}, 30)
    # without the annotation: the pods again
    await k8s.put_obj(c.bus, l7service(young, vb, "2026-01-01T00:00:09Z", enabled=False))
    pods = {Backend(c.ips["web-x"], 8080, 6), Backend(c.ips["web-y"], 8080, 6)}
    for h in (c.x, c.y):
        await k8s.until(lambda h=h: on(h, Frontend(vb, 80, 6)) == pods, 30)
