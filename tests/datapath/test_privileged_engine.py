"""The policy engine's output enforced by the tc programs: real CNP/CCNP/NetworkPolicy YAML, real traffic.

Each scenario feeds policies, identities and endpoints to ``PolicyEngine`` exactly as the agent does
(Changes → PolicyWriter deltas, CIDR identities → ipcache) and checks an allow/deny matrix with TCP,
UDP and ICMP from several peers. The server (``web``) is on node x, its peers on the same node and, in
the cross-node runs, on node y (one engine stands for both agents: each writes only its own pods).
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from nodemesh.policy.incremental import Changes, PolicyEngine
from nodemesh.policy.model import Endpoint
from services.datapath.maps import IPCacheValue
from testkit.datapath_node import TPod
from testkit.podnet import eventually, ping_ok, servers, tcp_ok, udp_ok, wait_for

from .placement import WHERE, Placed

pytestmark = pytest.mark.privileged


class Cluster:
    def __init__(self, placed: Placed) -> None:
        self.placed = placed
        self.engine = PolicyEngine()
        self.pods: dict[str, TPod] = {}

    def add(
        self,
        name: str,
        ip: str,
        ident: int,
        labels: dict[str, str],
        ns: str = "default",
        team: str = "a",
        on: str = "y",
    ) -> TPod:
        pod = self.placed.pod(name, ip, ident, on=on)
        self.pods[name] = pod
        ls = [f"k8s:{k}={v}" for k, v in labels.items()]
        ls += [f"k8s:io.kubernetes.pod.namespace={ns}", f"k8s:io.cilium.k8s.namespace.labels.team={team}"]
        self.apply(self.engine.upsert_identity(ident, ls))
        self.apply(self.engine.upsert_endpoint(Endpoint(key=name, identity=ident)))
        return pod

    def policy(self, text: str) -> None:
        obj: dict[str, Any] = yaml.safe_load(text)
        ch = self.engine.upsert_policy(obj)
        assert all(not errs for errs in ch.status.values()), ch.status
        self.apply(ch)

    def delete(self, kind: str, ns: str, name: str) -> None:
        self.apply(self.engine.delete_policy(kind, ns, name))

    def drops(self) -> dict[int, int]:
        """Drops by reason on every node (ingress drops happen on the server's, egress on the client's)."""
        out: dict[int, int] = {}
        for n in self.placed.nodes:
            for reason, count in n.drops().items():
                out[reason] = out.get(reason, 0) + count
        return out

    def del_ipcache(self, prefix: str) -> None:
        for n in self.placed.nodes:
            n.maps.del_ipcache(prefix)

    def apply(self, ch: Changes) -> None:
        for cidr, ident in ch.cidr_upserts.items():
            for n in self.placed.nodes:
                n.maps.set_ipcache(cidr, IPCacheValue(identity=ident))
        for key, ec in ch.endpoints.items():
            pod = self.pods.get(key)
            if pod is None:
                continue
            node = self.placed.node(pod)
            node.writer.apply_delta(pod.ep_id, ec.upserts, ec.deletes)
            pol = self.engine.policy(key)
            assert pol is not None
            node.writer.set_endpoint(pod.link.host_ifindex, pod.ep_id, pod.identity, pod.ip, pol)
        for cidr in ch.cidr_deletes:
            self.del_ipcache(cidr)


@pytest.fixture(params=WHERE)
def cluster(make_node, subnet, request) -> Cluster:  # type: ignore[no-untyped-def]
    c = Cluster(Placed(make_node, request.param))
    c.add("web", subnet + "2", 2001, {"app": "web"}, on="x")
    c.add("client", subnet + "3", 2002, {"app": "client"})
    c.add("other", subnet + "4", 2003, {"app": "other"})
    c.add("prod", subnet + "5", 2004, {"app": "client"}, ns="prod", team="b")
    return c


def test_privileged_cnp_l3_l4_icmp_matrix(cluster: Cluster) -> None:
    web, client, other = cluster.pods["web"], cluster.pods["client"], cluster.pods["other"]
    cluster.policy("""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}, {port: "53", protocol: UDP}]}]
  - fromEndpoints: [{matchExpressions: [{key: app, operator: In, values: [client]}]}]
    icmps: [{fields: [{type: 8, family: IPv4}]}]
""")
    with servers(web.ns, tcp=(80, 81), udp=(53,)):
        assert eventually(tcp_ok, client.ns, web.ip, 80)
        assert eventually(udp_ok, client.ns, web.ip, 53)
        assert eventually(ping_ok, client.ns, web.ip)
        assert not tcp_ok(client.ns, web.ip, 81)
        assert not tcp_ok(other.ns, web.ip, 80)
        assert not udp_ok(other.ns, web.ip, 53)
        assert not ping_ok(other.ns, web.ip)
        # the namespaced policy selects peers in its own namespace only: prod/client is not "client"
        assert not tcp_ok(cluster.pods["prod"].ns, web.ip, 80)
        assert wait_for(lambda: cluster.drops().get(133, 0) >= 5)
        # live change: the policy goes, web is no longer selected, everything flows again
        cluster.delete("CiliumNetworkPolicy", "default", "web")
        assert eventually(tcp_ok, other.ns, web.ip, 81)


def test_privileged_deny_policies_win(cluster: Cluster) -> None:
    web, client, other = cluster.pods["web"], cluster.pods["client"], cluster.pods["other"]
    cluster.policy("""
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: web-open}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEntities: [cluster]
""")
    cluster.policy("""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-deny, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingressDeny:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}]}]
""")
    with servers(web.ns, tcp=(80, 81)):
        assert eventually(tcp_ok, other.ns, web.ip, 80)
        assert eventually(tcp_ok, client.ns, web.ip, 81)
        assert not tcp_ok(client.ns, web.ip, 80)
        assert wait_for(lambda: cluster.drops().get(181, 0) > 0)


def test_privileged_network_policy_namespace_selector_and_port_range(cluster: Cluster) -> None:
    web, client, prod = cluster.pods["web"], cluster.pods["client"], cluster.pods["prod"]
    cluster.policy("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: b}}}]
    ports: [{protocol: TCP, port: 8080, endPort: 8083}]
""")
    with servers(web.ns, tcp=(8080, 8083, 8084)):
        assert eventually(tcp_ok, prod.ns, web.ip, 8080)
        assert eventually(tcp_ok, prod.ns, web.ip, 8083)
        assert not tcp_ok(prod.ns, web.ip, 8084)
        assert not tcp_ok(client.ns, web.ip, 8080)
        assert wait_for(lambda: cluster.drops().get(133, 0) >= 2)


def test_privileged_egress_to_cidr_with_except(cluster: Cluster, subnet: str) -> None:
    web, client, other = cluster.pods["web"], cluster.pods["client"], cluster.pods["other"]
    # web and other play hosts outside the cluster: no ipcache entry of their own
    cluster.del_ipcache(f"{web.ip}/32")
    cluster.del_ipcache(f"{other.ip}/32")
    cluster.policy(f"""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: client-out, namespace: default}}
spec:
  endpointSelector: {{matchLabels: {{app: client}}}}
  egress:
  - toCIDRSet: [{{cidr: {subnet}0/29, except: [{other.ip}/32]}}]
    toPorts: [{{ports: [{{port: "80", protocol: TCP}}]}}]
""")
    with servers(web.ns, tcp=(80, 81)), servers(other.ns, tcp=(80,)):
        assert eventually(tcp_ok, client.ns, web.ip, 80)
        assert not tcp_ok(client.ns, web.ip, 81)
        assert not tcp_ok(client.ns, other.ip, 80)
        assert wait_for(lambda: cluster.drops().get(133, 0) >= 2)


def test_privileged_egress_any_protocol_with_egress_deny(cluster: Cluster) -> None:
    web, client = cluster.pods["web"], cluster.pods["client"]
    cluster.policy("""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-egress, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toEndpoints: [{matchLabels: {app: web}}]
    toPorts: [{ports: [{port: "0", protocol: ANY}]}]
  egressDeny:
  - toEndpoints: [{matchLabels: {app: web}}]
    toPorts: [{ports: [{port: "81", protocol: TCP}]}]
""")
    other = cluster.pods["other"]
    with servers(web.ns, tcp=(80, 81), udp=(53,)), servers(other.ns, tcp=(80,)):
        assert eventually(tcp_ok, client.ns, web.ip, 80)
        assert eventually(udp_ok, client.ns, web.ip, 53)
        assert not tcp_ok(client.ns, web.ip, 81)  # egressDeny wins over the any-port allow
        assert wait_for(lambda: cluster.drops().get(181, 0) > 0)
        assert not tcp_ok(client.ns, other.ip, 80)  # client's egress is default-deny elsewhere
        assert wait_for(lambda: cluster.drops().get(133, 0) > 0)
