"""The local API server creates the LoadBalancer Services Ingresses need (dedicated and shared), as
Cilium's ingress controller does, and LB-IPAM gives them addresses."""

from __future__ import annotations

from typing import Any

from tests.localapi.helpers import Client, until

ING = "/apis/networking.k8s.io/v1/namespaces/default/ingresses"
SVC = "/api/v1/namespaces/default/services"
SHARED = "/api/v1/namespaces/kube-system/services/cilium-ingress"


def _ingress(name: str, cls: str = "nodemesh", annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {"name": name, "annotations": annotations or {}},
        "spec": {
            "ingressClassName": cls,
            "rules": [
                {
                    "http": {
                        "paths": [
                            {
                                "path": "/",
                                "pathType": "Prefix",
                                "backend": {"service": {"name": "web", "port": {"number": 80}}},
                            }
                        ]
                    }
                }
            ],
        },
    }


def _lb_ip(svc: dict[str, Any]) -> str:
    ing = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    return str(ing[0].get("ip", "")) if ing else ""


async def test_ingress_lb_services(client: Client) -> None:
    async def svc(path: str) -> dict[str, Any] | None:
        st, body = await client.get(path)
        return body if st == 200 else None

    async def has_ip(path: str) -> bool:
        s = await svc(path)
        return s is not None and bool(_lb_ip(s))

    async def gone(path: str) -> bool:
        return await svc(path) is None

    # Dedicated (the default): cilium-ingress-<name> in the Ingress's namespace, owned by it, an address.
    st, ing = await client.post(ING, _ingress("shop"))
    assert st == 201, ing
    await until(lambda: has_ip(f"{SVC}/cilium-ingress-shop"), what="dedicated ingress service address")
    s = await svc(f"{SVC}/cilium-ingress-shop")
    assert s is not None
    assert s["spec"]["type"] == "LoadBalancer"
    assert {p["port"] for p in s["spec"]["ports"]} == {80, 443}
    assert [r["uid"] for r in s["metadata"]["ownerReferences"]] == [ing["metadata"]["uid"]]
    assert _lb_ip(s).startswith("127.0.100.")

    # Shared mode: one cilium-ingress in kube-system, whatever the Ingress's namespace.
    await client.post(ING, _ingress("a", annotations={"ingress.cilium.io/loadbalancer-mode": "shared"}))
    await client.post(ING, _ingress("b", annotations={"ingress.cilium.io/loadbalancer-mode": "shared"}))
    await until(lambda: has_ip(SHARED), what="shared ingress service address")
    assert await svc(f"{SVC}/cilium-ingress-a") is None

    # Another class: no Service. A user's Service with our name is left alone.
    await client.post(ING, _ingress("other", cls="nginx"))
    user = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "cilium-ingress-mine"}}
    user["spec"] = {"ports": [{"port": 8080}]}
    await client.post(SVC, user)
    await client.post(ING, _ingress("mine"))

    # Deleting the dedicated Ingress removes its Service; the last shared one removes the shared Service.
    await client.delete(f"{ING}/shop")
    await until(lambda: gone(f"{SVC}/cilium-ingress-shop"), what="dedicated service removed")
    await client.delete(f"{ING}/a")
    await client.delete(f"{ING}/b")
    await until(lambda: gone(SHARED), what="shared service removed")
    assert await svc(f"{SVC}/cilium-ingress-other") is None
    mine = await svc(f"{SVC}/cilium-ingress-mine")
    assert mine is not None and mine["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert [p["port"] for p in mine["spec"]["ports"]] == [8080]

    # A malformed Ingress (rules of the wrong type) never stalls the controller.
    bad = _ingress("bad")
    bad["spec"]["rules"] = "oops"
    await client.post(ING, bad)
    await client.post(ING, _ingress("after"))
    await until(lambda: has_ip(f"{SVC}/cilium-ingress-after"), what="controller still works")
