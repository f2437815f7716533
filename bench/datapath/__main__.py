"""``python -m bench.datapath``: eBPF policy cost vs rule count, against no programs and iptables.

One run, interleaved A/B (every repetition measures every configuration in turn), ratios against the
no-program baseline of the same repetition. Two pods (netns + veth, the datapath's own plumbing) on
one simulated node; iperf3 server in pod A, client in pod B.

- ``none``: no tc programs.
- ``bpf-N``: the programs attached, pod A ingress-enforced with N policy entries (random identity x
  port, none matching) plus the allow entry for B, and N ipcache /32 entries.
- ``ipt-N``: no programs; in pod A's netns, iptables-legacy INPUT with N non-matching
  ``-s IP -p tcp|udp --dport P -j ACCEPT`` rules, then the allow rule for B, then DROP (G1's method).

Also: time to apply 10k entries and p50/p99 of one rule change at 1k and 60k entries (vs
iptables-nft-restore / iptables-legacy), and flow events/s delivered to a NATS subscriber with the
exact loss accounting (kernel reserve failures + queue drops).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from nodemesh.netns import netns_path
from nodemesh.policy.model import EndpointPolicy, PolicyKey, PolicyValue
from services.datapath.bpfsys import prog_test_run
from services.datapath.endpoints import PolicyWriter
from services.datapath.loader import Loader, detach_tc
from services.datapath.maps import STAT_EVENTS, STAT_LOST_EVENTS, IPCacheValue
from services.datapath.pods.netns import create_pod_netns, delete_pod_netns

SIZES = (100, 1_000, 10_000, 60_000)
A_IP, B_IP = "10.199.7.2", "10.199.7.3"
A_ID, B_ID = 3001, 3002
PORT = 5201


BLASTER = r"""
import socket, sys, time
ip, pps, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
payload, sent, t0 = b"x" * 22, 0, time.perf_counter()
while True:
    el = time.perf_counter() - t0
    if el >= secs:
        break
    due = int(el * pps) - sent
    for _ in range(min(due, 1000)):
        s.sendto(payload, (ip, 9))
    sent += min(due, 1000)
    if due <= 0:
        time.sleep(0.0005)
print(sent)
"""


SUBSCRIBER = r"""
import asyncio, sys, nats
async def main():
    nc = await nats.connect(sys.argv[1])
    n = 0
    async def cb(msg):
        nonlocal n
        n += 1
    await nc.subscribe(sys.argv[2], cb=cb, pending_msgs_limit=10_000_000, pending_bytes_limit=-1)
    await nc.flush()
    print("ready", flush=True)
    last = -1
    while True:
        await asyncio.sleep(0.1)
        if n != last:
            print(n, flush=True)
            last = n
asyncio.run(main())
"""


def sh(*args: str, ns: str = "", check: bool = True, input: str | None = None) -> str:
    cmd = (["nsenter", f"--net={netns_path(ns)}", "--"] if ns else []) + list(args)
    return subprocess.run(cmd, check=check, capture_output=True, text=True, input=input).stdout


class Bench:
    def __init__(self, seconds: float) -> None:
        tok = secrets.token_hex(3)
        self.seconds = seconds
        self.node = f"bench{tok}"
        self.pin_root = f"/sys/fs/bpf/nmbench-{tok}"
        self.a = create_pod_netns(f"nm-bench-a-{tok}", f"lxcba{tok}", A_IP)
        self.b = create_pod_netns(f"nm-bench-b-{tok}", f"lxcbb{tok}", B_IP)
        os.makedirs(self.pin_root)
        self.loader = Loader(self.node, pin_root=self.pin_root)
        self.maps = self.loader.load()
        self.writer = PolicyWriter(self.maps)
        self.server = subprocess.Popen(
            ["nsenter", f"--net={netns_path(self.a.netns)}", "--", "iperf3", "-s", "-p", str(PORT)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(0.5)
        rnd = random.Random(7)
        self.noise = [
            (rnd.randrange(100_000, 1 << 23), rnd.choice((6, 17)), rnd.randrange(1024, 65535))
            for _ in range(max(SIZES))
        ]
        self.noise_ips = [
            f"10.{rnd.randrange(128, 190)}.{rnd.randrange(256)}.{rnd.randrange(1, 255)}"
            for _ in range(max(SIZES))
        ]
        self.cur_n = -1

    # --- configurations -----------------------------------------------------------------------
    def policy(self, n: int) -> EndpointPolicy:
        entries = {PolicyKey(i, 0, p, port, 16): PolicyValue() for i, p, port in self.noise[:n]}
        entries[PolicyKey(B_ID, 0, 6, PORT, 16)] = PolicyValue()
        entries[PolicyKey(B_ID, 0, 17, PORT, 16)] = PolicyValue()
        return EndpointPolicy(ingress_enforced=True, entries=entries)

    def set_bpf(self, n: int) -> None:
        if n != self.cur_n:
            self.writer.apply(1, self.policy(n))
            want = set(self.noise_ips[:n])
            have = {c.split("/")[0] for c, _ in self.maps.ipcache_items()} - {A_IP, B_IP}
            for ip in have - want:
                self.maps.del_ipcache(f"{ip}/32")
            for ip in want - have:
                self.maps.set_ipcache(f"{ip}/32", IPCacheValue(identity=100_000 + len(ip)))
            self.cur_n = n
        for ip, ident in ((A_IP, A_ID), (B_IP, B_ID)):
            self.maps.set_ipcache(f"{ip}/32", IPCacheValue(identity=ident))
        self.writer.set_endpoint(self.a.host_ifindex, 1, A_ID, A_IP, self.policy(0))
        self.writer.set_endpoint(self.b.host_ifindex, 2, B_ID, B_IP, EndpointPolicy())
        self.loader.attach(self.a.host_ifindex)
        self.loader.attach(self.b.host_ifindex)
        self.maps.ct.clear()

    def clear_bpf(self) -> None:
        detach_tc(self.a.host_ifindex)
        detach_tc(self.b.host_ifindex)

    def set_ipt(self, n: int) -> None:
        lines = ["*filter", ":INPUT ACCEPT [0:0]"]
        for (_i, p, port), ip in zip(self.noise[:n], self.noise_ips[:n], strict=True):
            lines.append(f"-A INPUT -s {ip}/32 -p {'tcp' if p == 6 else 'udp'} --dport {port} -j ACCEPT")
        lines += [
            f"-A INPUT -s {B_IP}/32 -p tcp --dport {PORT} -j ACCEPT",
            f"-A INPUT -s {B_IP}/32 -p udp --dport {PORT} -j ACCEPT",
        ]
        lines += ["-A INPUT -j DROP", "COMMIT", ""]
        sh("iptables-legacy-restore", ns=self.a.netns, input="\n".join(lines))

    def clear_ipt(self) -> None:
        sh("iptables-legacy-restore", ns=self.a.netns, input="*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n")

    # --- measurements -------------------------------------------------------------------------
    def iperf(self, udp: bool) -> float:
        args = ["iperf3", "-c", A_IP, "-p", str(PORT), "-t", str(self.seconds), "-J"]
        if udp:
            args += ["-u", "-b", "0", "-l", "64"]
        out = json.loads(sh(*args, ns=self.b.netns, check=False) or "{}")
        end = out.get("end", {})
        if udp:
            s = end.get("sum", {})
            secs = s.get("seconds") or self.seconds
            return float(s.get("packets", 0)) * (1 - float(s.get("lost_percent", 0)) / 100) / secs
        return float(end.get("sum_received", {}).get("bits_per_second", 0.0)) / 1e9

    def run_config(self, name: str) -> dict[str, float]:
        kind, _, n = name.partition("-")
        if kind == "bpf":
            self.set_bpf(int(n))
        elif kind == "ipt":
            self.set_ipt(int(n))
        try:
            return {"tcp_gbps": self.iperf(False), "udp_pps": self.iperf(True)}
        finally:
            if kind == "bpf":
                self.clear_bpf()
            elif kind == "ipt":
                self.clear_ipt()

    def close(self) -> None:
        self.server.terminate()
        self.server.wait()
        self.clear_bpf()
        self.loader.close()
        delete_pod_netns(self.a.netns, self.a.host_ifname)
        delete_pod_netns(self.b.netns, self.b.host_ifname)
        shutil.rmtree(self.pin_root, ignore_errors=True)


def udp_packet(src: str, dst: str, dport: int) -> bytes:
    """A 64-byte Ethernet frame: IPv4 + UDP with 22 bytes of payload."""
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 50, 1, 0, 64, 17, 0, socket.inet_aton(src), socket.inet_aton(dst)
    )
    return (
        b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + struct.pack("!HHHH", 40000, dport, 30, 0) + b"x" * 22
    )


def prog_cost(b: Bench, sizes: list[int], repeat: int = 500_000) -> dict[str, float]:
    """G1(c): ns per packet of nm_to_pod via BPF_PROG_TEST_RUN (no traffic generator, so the
    machine's load barely matters): an established flow, a denied new flow, a non-endpoint packet."""
    out: dict[str, float] = {}
    allowed, denied = udp_packet(B_IP, A_IP, PORT), udp_packet(B_IP, A_IP, PORT + 77)
    for n in sizes:
        b.set_bpf(n)
        prog_test_run(b.loader.to_fd, allowed, ifindex=b.a.host_ifindex)  # creates the CT entry
        for name, pkt, ifx in (
            ("established", allowed, b.a.host_ifindex),
            ("denied_new", denied, b.a.host_ifindex),
        ):
            runs = [prog_test_run(b.loader.to_fd, pkt, repeat=repeat, ifindex=ifx)[1] for _ in range(3)]
            out[f"{name}_ns_at_{n}"] = statistics.median(runs)
        b.clear_bpf()
    runs = [prog_test_run(b.loader.to_fd, allowed, repeat=repeat)[1] for _ in range(3)]
    out["not_an_endpoint_ns"] = statistics.median(runs)
    b.cur_n = -1
    return out


def apply_times(b: Bench) -> dict[str, Any]:
    """G2: bulk apply of 10k entries and single changes at 1k and 60k entries."""
    out: dict[str, Any] = {}
    bulk, bulk_cpu = [], []
    for _ in range(5):
        b.writer.apply(1, EndpointPolicy(ingress_enforced=True))
        pol = b.policy(10_000)
        t0, c0 = time.perf_counter(), time.process_time()
        b.writer.apply(1, pol)  # encode + diff + 10k map writes + revision bump
        bulk.append((time.perf_counter() - t0) * 1e3)
        bulk_cpu.append((time.process_time() - c0) * 1e3)  # CPU time (user + kernel) of the apply
    out["bpf_apply_10k_ms_min"] = min(bulk)
    out["bpf_apply_10k_ms_median"] = statistics.median(bulk)
    out["bpf_apply_10k_cpu_ms_median"] = statistics.median(bulk_cpu)
    for n in (1_000, 60_000):
        b.writer.apply(1, b.policy(n))
        lat = []
        for i in range(300):
            key = PolicyKey(4_000_000 + i, 0, 6, 80, 16)
            t0 = time.perf_counter()
            b.writer.apply_delta(1, {key: PolicyValue()}, ())
            lat.append((time.perf_counter() - t0) * 1e3)
            b.writer.apply_delta(1, {}, (key,))
        lat.sort()
        out[f"bpf_one_change_at_{n}_p50_ms"] = lat[len(lat) // 2]
        out[f"bpf_one_change_at_{n}_p99_ms"] = lat[int(len(lat) * 0.99)]
    b.cur_n = -1
    for tool in ("iptables-legacy", "iptables-nft"):
        rules = "\n".join(
            f"-A INPUT -s {ip}/32 -p tcp --dport {port} -j ACCEPT"
            for (_i, _p, port), ip in zip(b.noise[:10_000], b.noise_ips[:10_000], strict=True)
        )
        t0 = time.perf_counter()
        sh(f"{tool}-restore", ns=b.a.netns, input=f"*filter\n:INPUT ACCEPT [0:0]\n{rules}\nCOMMIT\n")
        out[f"{tool}_restore_10k_ms"] = (time.perf_counter() - t0) * 1e3
        lat = []
        for i in range(20):
            t0 = time.perf_counter()
            sh(
                tool,
                "-A",
                "INPUT",
                "-s",
                f"192.0.2.{i + 1}/32",
                "-p",
                "tcp",
                "--dport",
                "80",
                "-j",
                "ACCEPT",
                ns=b.a.netns,
            )
            lat.append((time.perf_counter() - t0) * 1e3)
        out[f"{tool}_one_change_at_10k_median_ms"] = statistics.median(lat)
        sh(f"{tool}-restore", ns=b.a.netns, input="*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n")
    return out


async def flow_rate(b: Bench, pps: int, seconds: float) -> dict[str, float]:
    """G7: drop events at ``pps`` → ring buffer → EventPump → NATS → subscriber; exact accounting.

    ``delivered_per_s`` is delivered events over the time from the first packet sent to the last
    event received (sending plus draining), so it is the sustained end-to-end rate."""
    from prometheus_client import CollectorRegistry

    from nodemesh import subjects
    from nodemesh.bus import connect
    from nodemesh.streams import provision
    from services.datapath.events import EventPump
    from testkit.natsserver import NatsServer

    class Dir:
        node = b.node
        version = 0

        def pod_of(self, ip: str) -> tuple[str, str]:
            return ("default", "a" if ip == A_IP else "b")

        def labels_of(self, identity: int) -> list[str]:
            return [f"k8s:app={identity}"]

        def node_name(self, node_id: int) -> str:
            return b.node

    with NatsServer() as srv:
        pub = await connect(srv.url, name="bench-pub", max_wait=10)
        await provision(pub.js)
        # the subscriber is its own process, as a real consumer would be
        sub = await asyncio.create_subprocess_exec(
            sys.executable, "-c", SUBSCRIBER, srv.url, subjects.flows(b.node), stdout=asyncio.subprocess.PIPE
        )
        assert sub.stdout is not None
        await sub.stdout.readline()  # "ready"
        counts = [0]

        async def read_counts() -> None:
            assert sub.stdout is not None
            async for line in sub.stdout:
                counts[0] = int(line)

        reader = asyncio.create_task(read_counts())
        await asyncio.to_thread(b.set_bpf, 100)
        pump = EventPump(b.loader, Dir(), pub, CollectorRegistry(), max_batches=100_000)
        pump.start()
        task = asyncio.create_task(pump.run())
        await asyncio.sleep(1.0)  # events left from the throughput runs drain first
        base = counts[0]
        ev0, lost0, q0 = b.loader.stat(STAT_EVENTS), b.loader.stat(STAT_LOST_EVENTS), pump.lost_queue
        # UDP to a denied port from a paced sender: every packet is one drop event
        t0, c0 = time.perf_counter(), time.process_time()
        senders = 2  # two paced sender processes: one Python sender tops out near 45k pps here
        await asyncio.gather(
            *(
                asyncio.to_thread(
                    sh, sys.executable, "-c", BLASTER, A_IP, str(pps // senders), str(seconds), ns=b.b.netns
                )
                for _ in range(senders)
            )
        )
        emitted = b.loader.stat(STAT_EVENTS) - ev0
        lost_k = b.loader.stat(STAT_LOST_EVENTS) - lost0
        deadline = time.perf_counter() + 60
        while counts[0] - base + pump.lost_queue - q0 < emitted and time.perf_counter() < deadline:
            await asyncio.sleep(0.1)
        await pub.nc.flush()
        await asyncio.sleep(0.5)
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - c0  # this process: ring buffer poll thread + convert + publish
        pump.stop()
        task.cancel()
        await asyncio.to_thread(b.clear_bpf)
        await asyncio.sleep(0.5)
        got = counts[0] - base
        sub.terminate()
        await sub.wait()
        reader.cancel()
        await pub.nc.close()
        return {
            "target_pps": pps, "emitted": emitted, "delivered": got, "lost_ringbuf": lost_k,
            "lost_queue": pump.lost_queue - q0, "delivered_per_s": got / elapsed,
            "exporter_cpu_s": cpu, "delivered_per_cpu_s": got / max(cpu, 1e-9), "send_seconds": seconds,
        }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.datapath")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--flow-rates", default="20000,50000,100000")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    configs = ["none"] + [f"bpf-{n}" for n in sizes] + [f"ipt-{n}" for n in sizes]
    b = Bench(args.seconds)
    results: dict[str, list[dict[str, float]]] = {c: [] for c in configs}
    try:
        for rep in range(args.reps):
            for c in configs:
                r = b.run_config(c)
                results[c].append(r)
                print(
                    f"rep {rep} {c:10s} tcp {r['tcp_gbps']:6.2f} Gb/s  udp64 {r['udp_pps'] / 1e3:7.1f} kpps",
                    flush=True,
                )
        g1c = prog_cost(b, sizes)
        g2 = apply_times(b)
        g7 = [asyncio.run(flow_rate(b, int(p), args.seconds)) for p in args.flow_rates.split(",") if p]
    finally:
        b.close()
    print(
        "\nconfig      TCP Gb/s (med)  ratio   UDP-64 kpps (med)  ratio   [ratios per rep vs same-rep none]"
    )
    summary: dict[str, Any] = {}
    for c in configs:
        tcp = [r["tcp_gbps"] for r in results[c]]
        udp = [r["udp_pps"] for r in results[c]]
        rt = [
            r["tcp_gbps"] / max(n["tcp_gbps"], 1e-9) for r, n in zip(results[c], results["none"], strict=True)
        ]
        ru = [
            r["udp_pps"] / max(n["udp_pps"], 1e-9) for r, n in zip(results[c], results["none"], strict=True)
        ]
        summary[c] = {"tcp_gbps": tcp, "udp_pps": udp, "tcp_ratio": rt, "udp_ratio": ru}
        med_tcp, med_rt, med_udp, med_ru = (statistics.median(x) for x in (tcp, rt, udp, ru))
        print(
            f"{c:10s} {med_tcp:8.2f}       {med_rt:5.2f}   {med_udp / 1e3:9.1f}"
            f"          {med_ru:5.2f}   min/max udp ratio {min(ru):.2f}/{max(ru):.2f}"
        )
    for n in sizes:
        bu = statistics.median(summary[f"bpf-{n}"]["udp_pps"])
        iu = statistics.median(summary[f"ipt-{n}"]["udp_pps"])
        print(f"eBPF/iptables UDP-64 pps at {n}: {bu / max(iu, 1e-9):.1f}x")
    print("\nper-packet cost (BPF_PROG_TEST_RUN, nm_to_pod):", json.dumps(g1c, indent=1))
    print("\napply times:", json.dumps({k: round(v, 3) for k, v in g2.items()}, indent=1))
    print("flow events:")
    for r in g7:
        print("  ", json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in r.items()}))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "throughput": summary,
                    "prog_cost": g1c,
                    "apply": g2,
                    "flows": g7,
                    "kernel": os.uname().release,
                }
            )
        )


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("bench.datapath needs root (netns, BPF)")
    main()
