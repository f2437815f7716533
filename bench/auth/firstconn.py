"""First TCP connection of a new pod across two simulated nodes with the real BPF datapath:
no auth policy vs reactive auth (drop, signal, verdict, SYN retransmit) vs proactive auth.

Needs root (BPF, netns). The datapath's loader, maps and pod plumbing are driven as its own tests
drive them (``tests/datapath/conftest.py`` ``TNode``); the glue between them and NATS is what the
datapath service does: auth-required events → ``auth.required.<node>``, ``auth.granted.<node>`` →
the BPF auth map. Each trial: the identity service's writes (identity, ipcache) for a new client
identity, then the pod's netns appears on node x and connects at once to a server pod on node y
whose ingress policy requires auth (mode none: it does not).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import time

from nodemesh.policy.model import PolicyKey, PolicyValue
from services.datapath.maps import IPCacheValue
from services.datapath.pods.netns import netns_socket
from testkit.authd_cluster import Cluster
from testkit.authd_datapath import NODE_IDS, Glue
from testkit.datapath_node import TNode, ingress_policy
from testkit.podnet import servers

ING, TCP = 0, 6
AUTH_REQUIRED = 189  # drop reason (Cilium's DROP_POLICY_AUTH_REQUIRED)
MODES = ("none", "reactive", "proactive")
SERVER_IDS = {"none": 1102, "reactive": 1103, "proactive": 1104}


def _connect_time(ns: str, ip: str, port: int, timeout: float = 5.0) -> float:
    s = netns_socket(ns)
    s.settimeout(timeout)
    t0 = time.perf_counter()
    try:
        s.connect((ip, port))
        return time.perf_counter() - t0
    except OSError:
        return float("inf")
    finally:
        s.close()


def _has_entry(y: TNode, local: int, remote: int) -> bool:
    return any(k.local_identity == local and k.remote_identity == remote for k, _ in y.maps.auth_items())


async def first_connection(c: Cluster, trials: int) -> dict[str, list[float]]:
    tok = secrets.token_hex(3)
    pin_root = f"/sys/fs/bpf/nmbench-{os.getpid()}-{tok}"
    os.makedirs(pin_root)
    net = f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(256)}."
    loop = asyncio.get_running_loop()
    # pyroute2's and BCC's synchronous APIs must not run on the event loop's thread
    x = await loop.run_in_executor(None, TNode(f"b{tok}x", pin_root).start)
    y = await loop.run_in_executor(None, TNode(f"b{tok}y", pin_root).start)
    out: dict[str, list[float]] = {m: [] for m in MODES}
    out.update({f"{m}:pod-ready": [] for m in MODES})
    out.update({f"{m}:auth-drops": [] for m in MODES})
    out["proactive:verdict-first"] = []
    pump: asyncio.Task[None] | None = None
    try:
        await c.add_node("node-x", "127.0.50.1")
        await c.add_node("node-y", "127.0.50.2")
        spec = {
            "endpointSelector": {"matchLabels": {"app": "server"}},
            "ingress": [
                {
                    "fromEndpoints": [{"matchLabels": {"app": "client"}}],
                    "authentication": {"mode": "required"},
                }
            ],
        }
        await c.put_policy("auth", spec, ns="fc-proactive")
        await c.mark_synced()
        glue = Glue(c, y)
        await glue.start()
        srv, rules = {}, {}
        for i, mode in enumerate(MODES):
            sid, ip = SERVER_IDS[mode], f"{net}{10 + i}"
            await c.add_identity(sid, "server", ns=f"fc-{mode}")
            await c.add_pod(ip, sid, "node-y", ns=f"fc-{mode}")
            srv[mode] = await loop.run_in_executor(None, y.add_pod, f"s{mode[0]}", ip, sid)
            x.maps.set_ipcache(f"{ip}/32", IPCacheValue(identity=sid, node_id=NODE_IDS["node-y"]))
            rules[mode] = {}
        await c.start_authd("node-x")
        await c.start_authd("node-y")
        pump = asyncio.create_task(glue.pump())
        stacks = [servers(srv[m].ns, tcp=(80,)) for m in MODES]
        for s in stacks:
            s.__enter__()
        try:
            for i in range(trials):
                for j, mode in enumerate(MODES):
                    cid = 30000 + i * 10 + j
                    ip = f"{net}{100 + i * 3 + j}"
                    # what the identity service writes when the pod is scheduled
                    await c.add_identity(cid, "client", ns=f"fc-{mode}", extra=(f"k8s:trial={i}",))
                    t_ipcache = time.perf_counter()
                    await c.add_pod(ip, cid, "node-x", ns=f"fc-{mode}")
                    # what the datapath on y knows: the new peer, and the server's policy for it
                    y.maps.set_ipcache(f"{ip}/32", IPCacheValue(identity=cid, node_id=NODE_IDS["node-x"]))
                    rules[mode][PolicyKey(cid, ING, TCP, 80, 16)] = PolicyValue(
                        auth_type=0 if mode == "none" else 1
                    )
                    pol = ingress_policy(dict(rules[mode]))
                    await loop.run_in_executor(None, y.set_policy, srv[mode], pol)
                    # the pod appears on x and its workload connects at once
                    pod = await loop.run_in_executor(None, x.add_pod, f"c{i}{mode[0]}", ip, cid)
                    out[f"{mode}:pod-ready"].append(time.perf_counter() - t_ipcache)
                    if mode == "proactive":
                        ready = _has_entry(y, SERVER_IDS[mode], cid)
                        out["proactive:verdict-first"].append(1.0 if ready else 0.0)
                    before = y.drops().get(AUTH_REQUIRED, 0)
                    out[mode].append(
                        await loop.run_in_executor(None, _connect_time, pod.ns, srv[mode].ip, 80)
                    )
                    out[f"{mode}:auth-drops"].append(float(y.drops().get(AUTH_REQUIRED, 0) - before))
        finally:
            for s in stacks:
                s.__exit__(None, None, None)
    finally:
        if pump is not None:
            pump.cancel()
        await c.stop_all()
        for n in (x, y):
            await loop.run_in_executor(None, n.close)
        shutil.rmtree(pin_root, ignore_errors=True)
        socket.socket().close()
    return out
