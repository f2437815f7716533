"""L7 load-balancing of Services by annotation (``service.cilium.io/lb-l7: enabled``, research §5.6).

Cilium redirects such a Service's traffic to the node's Envoy with BPF. Here the socket
load-balancer rewrites ``connect()`` to the ClusterIP to the client's node's Envoy, at the address
:mod:`nodemesh.lbl7` derives: so every node's Envoy gets, in its own snapshot
(``Translation.node_resources``), one HTTP listener ``<ns>/<svc>/lb-l7-<port>/node`` per TCP port on
``<router IP of the node>:<lb-l7 listener port>``, routing everything to the Service's cluster with the
algorithm of ``service.cilium.io/lb-l7-algorithm`` (``round_robin`` default, ``least_request``,
``random``; anything else is reported and round_robin used). A LoadBalancer Service's ingress address
also gets a listener ``<ns>/<svc>/lb-l7-<port>`` shared by every node (north-south traffic reaches
Envoy there untranslated).
Every listener's access log names the Service (``nodemesh.service`` tag), for the L7 flows.
"""

from __future__ import annotations

from nodemesh import lbl7

from .index import Index, as_dict, as_int, as_list, meta
from .model import Backend, ListenerModel, Match, Model, Route, RouteTable
from .types import TranslateInput, Translation

__all__ = ["ALGORITHM", "ANNOTATION", "ingest", "node_pod_cidrs"]

ANNOTATION = lbl7.ANNOTATION
ALGORITHM = lbl7.ALGORITHM_ANNOTATION


def node_pod_cidrs(inp: TranslateInput) -> dict[str, str]:
    """Node name → its pod CIDR (``spec.podCIDR``), for the nodes that have one."""
    out = {}
    for n in inp.of("Node"):
        name = str(as_dict(n.get("metadata")).get("name") or "")
        cidr = str(as_dict(n.get("spec")).get("podCIDR") or "")
        if name and lbl7.router_ip(cidr):
            out[name] = cidr
    return out


def ingest(idx: Index, inp: TranslateInput, model: Model, out: Translation) -> None:
    services = [s for s in idx.all("Service") if lbl7.enabled(as_dict(meta(s).get("annotations")))]
    if not services:
        return
    ports = lbl7.assign(c for s in services for c in lbl7.claims(s))
    out.errors.extend(ports.notes)
    out.errors.extend(ports.errors)
    cidrs = node_pod_cidrs(inp)
    for svc in services:
        m = meta(svc)
        ns, name = m.get("namespace", "") or "default", m.get("name", "")
        spec = as_dict(svc.get("spec"))
        if spec.get("type") == "ExternalName" or spec.get("clusterIP") == "None":
            out.errors.append(
                f"Service {ns}/{name}: lb-l7 does not apply to headless or ExternalName Services"
            )
            continue
        algo, err = lbl7.algorithm(as_dict(m.get("annotations")))
        if err:
            out.errors.append(f"Service {ns}/{name}: {err}")
        lb_address = idx.lb_address(ns, name)
        for p in as_list(spec.get("ports")):
            if (
                not isinstance(p, dict)
                or p.get("protocol", "TCP") != "TCP"
                or not isinstance(p.get("port"), int)
            ):
                continue
            port = as_int(p["port"])
            if not 0 < port < 65536:
                continue
            rname = f"{ns}/{name}/lb-l7-{port}"
            b = Backend(ns, name, port, h2=p.get("appProtocol") in ("kubernetes.io/h2c", "grpc"))
            model.use(b)
            model.lb_policy[b.cluster] = algo

            if lb_address:  # north-south: Envoy listens on the LoadBalancer address itself
                _fill(model.listener(rname, lb_address, port), b, rname)
            lport = ports.ports.get(lbl7.PortKey(ns, name, port))
            if lport is None:
                continue
            for node, cidr in sorted(cidrs.items()):
                where = lbl7.listener(cidr, lport)
                if where is None:
                    continue
                # not rname: a node's resources replace shared ones of the same name (LB address)
                lm = ListenerModel(name=f"{rname}/node", address=where[0], port=where[1])
                lm.freebind = True  # bound even before the datapath put the router IP on lo
                _fill(lm, b, rname)
                model.node_listeners.setdefault(node, []).append(lm)


def _fill(lm: ListenerModel, b: Backend, route_name: str) -> None:
    """Everything on the listener goes to the Service port's cluster."""
    svc = f"{b.namespace}/{b.service}"
    lm.sources.append(f"Service/{svc}")
    lm.service = svc
    lm.http = RouteTable(route_name, b.port)
    lm.http.add("*", Route(match=Match("prefix", "/"), backends=[b], source=svc))
