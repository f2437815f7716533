"""L7 load-balancing of Services by annotation (``service.cilium.io/lb-l7: enabled``, research §5.6).

Cilium redirects such a Service's traffic to the node's Envoy with BPF TPROXY. Here every TCP port of
the Service gets an HTTP listener ``<ns>/<svc>/lb-l7-<port>`` on the Service's LoadBalancer address
(or its ClusterIP, bound with ``freebind`` so the datapath can steer ClusterIP traffic to it), routing
everything to the Service's cluster with the algorithm of ``service.cilium.io/lb-l7-algorithm``
(``round_robin`` default, ``least_request``, ``random``).
"""

from __future__ import annotations

from .index import Index, as_dict, as_int, as_list, meta
from .model import Backend, Match, Model, Route, RouteTable
from .types import TranslateInput, Translation

__all__ = ["ALGORITHM", "ANNOTATION", "ingest"]

ANNOTATION = "service.cilium.io/lb-l7"
ALGORITHM = "service.cilium.io/lb-l7-algorithm"


def ingest(idx: Index, inp: TranslateInput, model: Model, out: Translation) -> None:
    for svc in idx.all("Service"):
        m = meta(svc)
        ann = as_dict(m.get("annotations"))
        if str(ann.get(ANNOTATION, "")).lower() != "enabled":
            continue
        ns, name = m.get("namespace", ""), m.get("name", "")
        spec = as_dict(svc.get("spec"))
        address = idx.lb_address(ns, name)
        freebind = False
        if not address:
            address = str(spec.get("clusterIP") or "")
            freebind = True
        if not address or address == "None":
            out.errors.append(f"Service {ns}/{name}: lb-l7 needs a ClusterIP or LoadBalancer address")
            continue
        algo = str(ann.get(ALGORITHM, "round_robin"))
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
            lm = model.listener(f"{ns}/{name}/lb-l7-{port}", address, port)
            lm.freebind = freebind
            lm.sources.append(f"Service/{ns}/{name}")
            b = Backend(ns, name, port, h2=p.get("appProtocol") in ("kubernetes.io/h2c", "grpc"))
            lm.http = RouteTable(f"{ns}/{name}/lb-l7-{port}", port)
            lm.http.add("*", Route(match=Match("prefix", "/"), backends=[b], source=f"{ns}/{name}"))
            model.use(b)
            model.lb_policy[b.cluster] = algo
