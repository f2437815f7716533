"""bench/auth: authd's handshake rate against raw Python TLS 1.3, and time-to-verdict.

Run: ``.venv/bin/python -m bench.auth [--rounds 9] [--handshakes 150] [--pairs 60]``

1. Mutual handshakes per second, one at a time, interleaved A/B in rounds with the same P-256 keys
   and certificates: (A) raw Python ``ssl`` TLS 1.3 mutual handshake over loopback TCP; (B) authd's
   handshake (TLS 1.3 + SPIFFE leaf checks + the responder's node check + close_notify
   confirmation), both ends in this process like A; (B0) the same handshake functions without
   asyncio. Then (C) authd with 8 handshakes in flight.
2. Time to verdict for fresh identity pairs, interleaved: proactive (a new pod appears in the
   ipcache → the verdict is on ``auth.granted``; the datapath would have it before the pod's first
   packet) vs reactive (an ``auth.required`` signal → verdict). With drop-and-retransmit (Cilium,
   and our reactive path) the first TCP connection additionally waits for the SYN retransmit
   (≥ 1 s); with proactive auth it does not wait at all. No auth policy: no wait (0).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from nodemesh import subjects
from nodemesh.bus import connect
from nodemesh.messages.auth import AuthRequired
from nodemesh.streams import provision
from services.authd.handshake import initiate, respond
from services.authd.tlsctx import client_context, server_context
from testkit.authd_cluster import Cluster, key, poll
from testkit.natsserver import NatsServer
from testkit.spiffe_ca import SpiffeCA

ADDRS = ("127.0.50.1", "127.0.50.2", "127.0.50.3", "127.0.50.4")


def raw_rate(ca: SpiffeCA, n: int, confirm: bool = False) -> None:
    """Plain TLS 1.3 mutual handshakes (chain verification only), one at a time, loopback TCP.
    ``confirm``: both sides also exchange close_notify before counting (authd's confirmation)."""
    (cc, ck), (sc, sk) = ca.svid(1001), ca.svid(1002)
    cctx = client_context(cc, ck, ca.bundle_pem)
    sctx = server_context(ca.bundle_pem, sc, sk)
    ls = socket.socket()
    ls.bind((ADDRS[1], 0))
    ls.listen(64)
    port = ls.getsockname()[1]

    def serve() -> None:
        for _ in range(n):
            conn, _ = ls.accept()
            with sctx.wrap_socket(conn, server_side=True) as tls:
                if confirm:
                    tls.unwrap()
                else:
                    tls.recv(1)

    t = threading.Thread(target=serve)
    t.start()
    for _ in range(n):
        raw = socket.create_connection((ADDRS[1], port), source_address=(ADDRS[0], 0))
        with cctx.wrap_socket(raw, server_hostname="1002.cluster.local") as tls:
            tls.getpeercert(binary_form=True)
            if confirm:
                tls.recv(1)
                tls.unwrap()
    t.join()
    ls.close()


def handshake_fn_rate(ca: SpiffeCA, n: int) -> None:
    """authd's blocking handshake functions (``handshake.initiate``/``respond``) without asyncio."""
    (cc, ck), (sc, sk) = ca.svid(1001), ca.svid(1002)
    cctx = client_context(cc, ck, ca.bundle_pem)
    sctx = server_context(ca.bundle_pem, sc, sk)
    ls = socket.socket()
    ls.bind((ADDRS[1], 0))
    ls.listen(64)
    port = ls.getsockname()[1]

    def serve() -> None:
        for _ in range(n):
            conn, _ = ls.accept()
            respond(
                conn,
                sctx,
                trust_domain=ca.trust_domain,
                identity_of=lambda _c: (1002, time.time() + 3600),
                check_initiator=lambda _l, _ip: "node-1",
                timeout=5,
            )

    t = threading.Thread(target=serve)
    t.start()
    for _ in range(n):
        initiate(
            cctx,
            host=ADDRS[1],
            port=port,
            source=ADDRS[0],
            server_name=f"1002.{ca.trust_domain}",
            trust_domain=ca.trust_domain,
            expected_remote=1002,
            local_not_after=time.time() + 3600,
            timeout=5,
        )
    t.join()
    ls.close()


async def authd_rate(c: Cluster, k_list: list[object], n: int, parallel: int) -> None:
    m = c.manager("node-1")
    sem = asyncio.Semaphore(parallel)

    async def one(i: int) -> None:
        async with sem:
            await m._initiate(k_list[i % len(k_list)])  # type: ignore[arg-type]

    await asyncio.gather(*(one(i) for i in range(n)))


async def time_to_verdict(c: Cluster, trials: int) -> tuple[list[float], list[float]]:
    """Interleaved: a fresh client identity per trial, in namespace bench-p (proactive authds
    p-node-1/2) and bench-r (reactive authds r-node-1/2)."""
    pro, rea = [], []
    spec = {
        "endpointSelector": {"matchLabels": {"app": "server"}},
        "ingress": [
            {"fromEndpoints": [{"matchLabels": {"app": "client"}}], "authentication": {"mode": "required"}}
        ],
    }
    for ns, node2, sid in (("bench-p", "p-node-2", 5000), ("bench-r", "r-node-2", 6000)):
        await c.put_policy("auth", spec, ns=ns)
        await c.add_identity(sid, "server", ns=ns)
        await c.add_pod(f"10.245.{sid // 1000}.1", sid, node2, ns=ns)
    await c.mark_synced()
    await poll(lambda: c.manager("p-node-2").store.get(5000) and c.manager("r-node-2").store.get(6000), 30)
    for i in range(trials):
        # proactive: the pod appears; the verdict follows with no signal at all
        cid = 7000 + i
        await c.add_identity(cid, "client", ns="bench-p", extra=(f"k8s:trial={i}",))
        t0 = time.time()
        await c.add_pod(f"10.246.{i // 250}.{i % 250 + 1}", cid, "p-node-1", ns="bench-p")
        k = key(5000, cid, "p-node-1")
        await poll(lambda k=k: c.seen.grants("p-node-2", k), 30)
        pro.append(c.seen.grants("p-node-2", k)[0][0] - t0)
        # reactive: the pod is up (and has its SVID); its first packet is dropped → signal → verdict
        rid = 8000 + i
        await c.add_identity(rid, "client", ns="bench-r", extra=(f"k8s:trial={i}",))
        await c.add_pod(f"10.247.{i // 250}.{i % 250 + 1}", rid, "r-node-1", ns="bench-r")
        await poll(lambda rid=rid: c.manager("r-node-1").store.get(rid), 30)
        k = key(6000, rid, "r-node-1")
        t0 = time.time()
        await c.bus.publish(subjects.auth_required("r-node-2"), AuthRequired(key=k))
        await poll(lambda k=k: c.seen.grants("r-node-2", k), 30)
        rea.append(c.seen.grants("r-node-2", k)[0][0] - t0)
    return pro, rea


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


async def run(args: argparse.Namespace) -> None:
    added = []
    for a in ADDRS:  # 127/8 binds anyway; explicit so `ip addr` shows the simulated nodes
        r = subprocess.run(["ip", "addr", "add", f"{a}/32", "dev", "lo"], capture_output=True)  # noqa: ASYNC221
        if r.returncode == 0:
            added.append(a)
    try:
        await _run(args)
    finally:
        for a in added:
            subprocess.run(["ip", "addr", "del", f"{a}/32", "dev", "lo"], capture_output=True)  # noqa: ASYNC221


async def _run(args: argparse.Namespace) -> None:
    with NatsServer() as ns, tempfile.TemporaryDirectory(prefix="nm-bench-auth-") as tmp:
        bus = await connect(ns.url, name="bench", max_wait=10)
        await provision(bus.js)
        ca = SpiffeCA()
        c = Cluster(bus, ns.url, ca, tmp)
        await c.start()
        if not args.only_first_connection:
            await c.add_node("node-1", ADDRS[0])
            await c.add_node("node-2", ADDRS[1])
            ids = list(range(3001, 3009))
            for i in ids:
                await c.add_identity(i, f"a{i}")
                await c.add_pod(f"10.250.1.{i - 3000}", i, "node-1")
                await c.add_identity(i + 100, f"b{i}")
                await c.add_pod(f"10.250.2.{i - 3000}", i + 100, "node-2")
            await c.start_authd("node-1", proactive=False)
            await c.start_authd("node-2", proactive=False)
            await poll(
                lambda: all(
                    c.manager("node-1").store.get(i) and c.manager("node-2").store.get(i + 100) for i in ids
                ),
                30,
            )
            keys = [key(i, i + 100, "node-2") for i in ids]
            loop = asyncio.get_running_loop()
            n = args.handshakes
            runs = {
                "(A)  raw Python TLS 1.3 mutual, 1 in flight": lambda: loop.run_in_executor(
                    None, raw_rate, ca, n
                ),
                "(A2) raw + close_notify confirmation": lambda: loop.run_in_executor(
                    None, raw_rate, ca, n, True
                ),
                "(B0) authd handshake.py, no asyncio": lambda: loop.run_in_executor(
                    None, handshake_fn_rate, ca, n
                ),
                "(B)  authd handshake, 1 in flight": lambda: authd_rate(c, keys, n, 1),
                "(C)  authd handshake, 8 in flight": lambda: authd_rate(c, keys, n, 8),
            }
            wall: dict[str, list[float]] = {k: [] for k in runs}
            cpu: dict[str, list[float]] = {k: [] for k in runs}
            for _ in range(args.rounds):  # interleaved: A, A2, B, C, A, A2, ...
                for label, fn in runs.items():
                    c0, w0 = time.process_time(), time.perf_counter()
                    await fn()
                    wall[label].append(n / (time.perf_counter() - w0))
                    cpu[label].append(n / (time.process_time() - c0))
            load = os.getloadavg()[0]
            print(f"cpus={os.cpu_count()} load={load:.1f} rounds={args.rounds} handshakes/round={n}")
            print(
                "  handshakes per wall second (both ends in this process) and per CPU second of this process"
            )
            a = next(iter(runs))
            bw, bc = statistics.median(wall[a]), statistics.median(cpu[a])
            for label in runs:
                mw, mc = statistics.median(wall[label]), statistics.median(cpu[label])
                print(f"  {label:44s} {mw:5.0f}/s x{mw / bw:.2f}   {mc:5.0f}/cpu-s x{mc / bc:.2f}")
            await c.stop_all()

            c2 = Cluster(bus, ns.url, ca, tmp)
            c2.seen = c.seen
            await c2.add_node("p-node-1", ADDRS[0])
            await c2.add_node("p-node-2", ADDRS[1])
            await c2.add_node("r-node-1", ADDRS[2])
            await c2.add_node("r-node-2", ADDRS[3])
            for n in ("p-node-1", "p-node-2"):
                await c2.start_authd(n)
            for n in ("r-node-1", "r-node-2"):
                await c2.start_authd(n, proactive=False)
            pro, rea = await time_to_verdict(c2, args.pairs)
            print(f"time to verdict over {args.pairs} fresh pairs (ms)       p50     p99     max")
            for name, xs in (
                ("proactive (pod appears → verdict)", pro),
                ("reactive (signal → verdict)", rea),
            ):
                ms_ = [x * 1000 for x in xs]
                print(f"  {name:36s} {pct(ms_, 50):7.1f} {pct(ms_, 99):7.1f} {max(ms_):7.1f}")
            p50 = pct([x * 1000 for x in rea], 50)
            print(
                "first-connection delay added by auth: proactive 0 (the verdict precedes the first packet);"
            )
            print(f"  reactive = TCP SYN retransmit (>= 1000 ms) + {p50:.1f} ms; no auth policy 0")
            await c2.stop_all()
        if args.first_connection or args.only_first_connection:
            from bench.auth.firstconn import first_connection

            c3 = Cluster(bus, ns.url, ca, tmp)
            trials = args.first_connection or 20
            res = await first_connection(c3, trials)
            print(f"first TCP connection of a new pod, x → y, real BPF datapath ({trials} trials, ms)")
            print("                                        p50     p99     max  (inf = never connected)")
            for mode in ("none", "reactive", "proactive"):
                ms_ = [x * 1000 for x in res[mode]]
                drops = sum(res[f"{mode}:auth-drops"])
                slow = sum(1 for x in ms_ if x > 500)
                print(
                    f"  {mode:36s} {pct(ms_, 50):7.2f} {pct(ms_, 99):7.2f} {max(ms_):7.2f}"
                    f"  >500ms: {slow}  auth-required drops: {drops:.0f}"
                )
            ready = [x * 1000 for x in res["proactive:pod-ready"]]
            first = res["proactive:verdict-first"]
            print(
                f"  proactive: verdict in y's map before the 1st packet: {sum(first):.0f}/{len(first)} trials"
            )
            print(
                f"  (pod netns ready {pct(ready, 50):.1f} ms p50, {min(ready):.1f} ms min after the ipcache)"
            )
        await bus.nc.close()


def main() -> None:
    p = argparse.ArgumentParser(prog="bench.auth")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--handshakes", type=int, default=150)
    p.add_argument("--pairs", type=int, default=60)
    p.add_argument(
        "--first-connection",
        type=int,
        default=0,
        metavar="TRIALS",
        help="also the BPF first-connection bench (root)",
    )
    p.add_argument("--only-first-connection", action="store_true")
    args = p.parse_args()
    asyncio.run(run(args))
    sys.exit(0)


if __name__ == "__main__":
    main()
