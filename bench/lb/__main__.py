"""``python -m bench.lb``: how fast an EndpointSlice change reaches the socket load-balancer's maps.

A real nats-server and one datapath service (the same ``run_service`` path as production, with its
socket programs attached to the cgroup v2 root). ``--services`` Services with ``--backends``
endpoints each are published on the K8S stream; then:

- initial sync: agent start → every frontend in the maps (one full diff);
- ``--changes`` times: one EndpointSlice of one Service loses or regains an endpoint; measured from
  the JetStream publish to the slot-0 count the kernel sees (polled with bpf() lookups), and the
  agent's own plan+write time (``nodemesh_lb_map_update_seconds``).

Root only (BPF, cgroup). Cleans up after itself (``cleanup_all``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from nodemesh.bus import connect
from nodemesh.netns import scope_for
from nodemesh.runtime import run_service
from nodemesh.streams import provision
from services.datapath.app import main as datapath_main
from services.datapath.bpfsys import KeyNotFound, MapFd
from services.datapath.cleanup import cleanup_all
from services.datapath.config import DatapathConfig
from services.datapath.lb.maps import SvcValue, svc_key
from services.datapath.lb.model import Frontend
from testkit.k8sstream import put_node, put_obj, synced
from testkit.natsserver import NatsServer, free_port


def _service(name: str, vip: str) -> dict[str, Any]:
    return {
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"clusterIP": vip, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
    }


def _slice(svc: str, ips: list[str], node: str) -> dict[str, Any]:
    return {
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{svc}-1",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": svc},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "nodeName": node, "conditions": {"ready": True}} for ip in ips],
    }


def _count(m: MapFd, fe: Frontend) -> int:
    try:
        return int(SvcValue.from_buffer_copy(m.lookup(svc_key(fe, 0))).count)
    except KeyNotFound:
        return -1


async def _until(cond: Any, timeout: float = 60) -> float:
    t0 = time.perf_counter()
    while not cond():
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("the maps did not follow")
        await asyncio.sleep(0)  # poll as fast as the loop allows: we measure the agent, not us
    return time.perf_counter()


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


async def run(services: int, backends: int, changes: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="nm-bench-lb-"))
    pin_root = f"/sys/fs/bpf/nmbench-{secrets.token_hex(3)}"
    os.makedirs(pin_root)
    node = "bench-lb"
    with NatsServer() as nats:
        bus = await connect(nats.url, name="bench", max_wait=10)
        await provision(bus.js)
        cfg = DatapathConfig(
            nats_url=nats.url, node=node, data_dir=str(tmp / "nodes" / node), pin_root=pin_root,
            pod_cidr="10.233.0.0/24", node_ip="127.0.50.240", log_format="text", log_level="warning",
            health_addr=f"127.0.0.1:{free_port()}", lb_host_sockets=False,
        )  # fmt: skip
        await put_node(bus, node, cfg.node_ip, "10.233.0.0/24")
        fes = []
        for i in range(services):
            vip = f"10.97.{i // 250}.{i % 250 + 1}"
            await put_obj(bus, _service(f"s{i}", vip))
            n0 = i * backends
            ips = [f"10.234.{(n0 + j) // 250 % 250}.{(n0 + j) % 250 + 1}" for j in range(backends)]
            await put_obj(bus, _slice(f"s{i}", ips, node))
            fes.append((Frontend(vip, 80, 6), f"s{i}", ips))
        await synced(bus)
        stop = asyncio.Event()
        t0 = time.perf_counter()
        task = asyncio.create_task(
            run_service("datapath", cfg, datapath_main, install_signals=False, stop=stop)
        )
        pin = os.path.join(pin_root, scope_for(cfg.data_dir), node)
        while not await asyncio.to_thread(os.path.exists, os.path.join(pin, "nm_lb_svc")):
            await asyncio.sleep(0.01)
        m = MapFd.pinned(os.path.join(pin, "nm_lb_svc"))
        try:
            last = fes[-1][0]
            t_sync = await _until(lambda: _count(m, last) == backends, 120) - t0
            lat: list[float] = []
            for n in range(changes):
                fe, name, ips = fes[n % len(fes)]
                shrink = (n // len(fes)) % 2 == 0
                want = backends - 1 if shrink else backends
                t1 = time.perf_counter()
                await put_obj(bus, _slice(name, ips[:want], node))
                lat.append(await _until(lambda fe=fe, want=want: _count(m, fe) == want) - t1)
            import aiohttp

            async with aiohttp.ClientSession() as s, s.get(f"http://{cfg.health_addr}/metrics") as r:
                metrics = await r.text()
        finally:
            m.close()
            stop.set()
            await asyncio.wait_for(task, 30)
            await bus.nc.close()
            cleanup_all(str(tmp))
            shutil.rmtree(pin_root, ignore_errors=True)
            shutil.rmtree(tmp, ignore_errors=True)

    def metric(name: str) -> float:
        return next(float(ln.split()[-1]) for ln in metrics.splitlines() if ln.startswith(name))

    total = metric('nodemesh_lb_map_update_seconds_sum{trigger="service"}')
    count = metric('nodemesh_lb_map_update_seconds_count{trigger="service"}')
    sync = metric('nodemesh_lb_map_update_seconds_sum{trigger="sync"}')
    return {
        "services": services,
        "backends_per_service": backends,
        "agent_start_to_all_frontends_s": round(t_sync, 3),
        "slice_publish_to_map_ms": {
            "p50": round(statistics.median(lat) * 1e3, 2),
            "p90": round(_pct(lat, 0.9) * 1e3, 2),
            "max": round(max(lat) * 1e3, 2),
            "n": len(lat),
        },
        "agent_initial_plan_and_write_s": round(sync, 3),
        "agent_change_plan_and_write_ms_mean": round(total / count * 1e3, 3) if count else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.lb")
    ap.add_argument("--services", type=int, default=100)
    ap.add_argument("--backends", type=int, default=10)
    ap.add_argument("--changes", type=int, default=200)
    a = ap.parse_args()
    import json

    print(json.dumps(asyncio.run(run(a.services, a.backends, a.changes)), indent=1))


if __name__ == "__main__":
    main()
