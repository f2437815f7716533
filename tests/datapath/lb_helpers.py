"""Helpers for the Service load-balancing tests: self-naming backends, Services, EndpointSlices,
clients that say which backend answered (from a pod's netns or from the host)."""

from __future__ import annotations

import socket
import sys
from typing import Any

from nodemesh.bus import Bus
from services.datapath.pods.netns import netns_socket
from tests.datapath import k8s

# Every TCP connection is greeted with the pod's name (then echoed); every UDP datagram is answered
# with "<pod name>:<data>" — so a client knows which backend the kernel chose.
WHOAMI = r"""
import os, socket, sys, threading
name = os.environ.get("POD_NAME", "?").encode()
def tcp(port):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(256)
    while True:
        c, _ = s.accept()
        def serve(c=c):
            with c:
                c.sendall(name + b"\n")
                while True:
                    d = c.recv(4096)
                    if not d: return
                    c.sendall(d)
        threading.Thread(target=serve, daemon=True).start()
def udp(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", port))
    while True:
        d, a = s.recvfrom(4096)
        s.sendto(name + b":" + d, a)
for spec in sys.argv[1:]:
    kind, port = spec.split(":")
    threading.Thread(target={"tcp": tcp, "udp": udp}[kind], args=(int(port),), daemon=True).start()
threading.Event().wait()
"""


def whoami_pod(
    name: str, node: str, labels: dict[str, str], tcp: int = 8080, udp: int = 5353, tcp_name: str = "http"
) -> dict[str, Any]:
    """A pod serving TCP ``tcp`` (container port named ``tcp_name``) and UDP ``udp`` ("dns"),
    ready once TCP listens."""
    pod = k8s.pod(name, node, labels, probe_port=tcp)
    c = pod["spec"]["containers"][0]
    c["command"] = [sys.executable, "-c", WHOAMI, f"tcp:{tcp}", f"udp:{udp}"]
    c["ports"] = [
        {"name": tcp_name, "containerPort": tcp, "protocol": "TCP"},
        {"name": "dns", "containerPort": udp, "protocol": "UDP"},
    ]
    return pod


def service(name: str, cluster_ip: str, **spec: Any) -> dict[str, Any]:
    spec.setdefault("selector", {"app": name})
    spec.setdefault(
        "ports",
        [
            {"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"},
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": "dns"},
        ],
    )
    spec["clusterIP"] = cluster_ip
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
            "spec": spec}  # fmt: skip


def endpoint(ip: str, node: str, ready: bool = True, terminating: bool = False) -> dict[str, Any]:
    serving = ready or terminating
    return {
        "addresses": [ip],
        "nodeName": node,
        "conditions": {"ready": ready and not terminating, "serving": serving, "terminating": terminating},
    }


def endpoint_slice(
    svc: str, name: str, endpoints: list[dict[str, Any]], tcp: int = 8080, udp: int = 5353
) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "default", "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [
            {"name": "http", "port": tcp, "protocol": "TCP"},
            {"name": "dns", "port": udp, "protocol": "UDP"},
        ],
        "endpoints": endpoints,
    }


async def put_slice(bus: Bus, svc: str, name: str, endpoints: list[dict[str, Any]], **kw: int) -> None:
    await k8s.put_obj(bus, endpoint_slice(svc, name, endpoints, **kw))


def _sock(ns: str, kind: int = socket.SOCK_STREAM) -> socket.socket:
    return netns_socket(ns, type=kind) if ns else socket.socket(socket.AF_INET, kind)


def tcp_who(ns: str, ip: str, port: int, timeout: float = 2.0) -> tuple[str, tuple[str, int]] | None:
    """Connect from netns ``ns`` ("" = the host): (the backend's name, getpeername()), or None."""
    s = _sock(ns)
    s.settimeout(timeout)
    try:
        s.connect((ip, port))
        peer = s.getpeername()
        line = b""
        while not line.endswith(b"\n"):
            chunk = s.recv(64)
            if not chunk:
                return None
            line += chunk
        s.sendall(b"ping")
        if s.recv(16) != b"ping":
            return None
        return line.decode().strip(), peer
    except OSError:
        return None
    finally:
        s.close()


def tcp_connect_errno(ns: str, ip: str, port: int, timeout: float = 5.0) -> int:
    """The errno of a connect from ``ns`` (0 = connected)."""
    s = _sock(ns)
    s.settimeout(timeout)
    try:
        s.connect((ip, port))
        return 0
    except TimeoutError:
        return -1
    except OSError as e:
        return e.errno or -2
    finally:
        s.close()


def udp_who(
    ns: str, ip: str, port: int, connected: bool = False, timeout: float = 2.0
) -> tuple[str, tuple[str, int]] | None:
    """One datagram from ``ns`` to ip:port: (the backend's name, the reply's source address as the
    application sees it), or None. ``connected``: connect() then send/recvfrom."""
    s = _sock(ns, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        if connected:
            s.connect((ip, port))
            s.send(b"hi")
        else:
            s.sendto(b"hi", (ip, port))
        data, src = s.recvfrom(256)
        if connected and s.getpeername() != (ip, port):
            return None
        name, _, rest = data.partition(b":")
        return (name.decode(), src) if rest == b"hi" else None
    except OSError:
        return None
    finally:
        s.close()
