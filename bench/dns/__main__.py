"""``python -m bench.dns``: the cluster DNS server's queries/s and latency with 10,000 Services loaded.

The server is the real service process (``python -m services.dns``) fed over a real nats-server with
9,000 ClusterIP and 1,000 headless Services (each headless one with a 3-endpoint EndpointSlice), pinned
to one CPU; the load generator is dnsperf (C, Debian's ``dnsperf``) pinned to the other. The query mix
is what a pod's resolver sends with ``ndots:5``: for each lookup of ``<svc>.<ns>.svc.cluster.local``,
A and AAAA for the three search-path expansions (NXDOMAIN) and the name itself (an answer, or NODATA
for AAAA) — 8 queries, 75 % NXDOMAIN — over the 10,000 names in random order.

Then, alternating, max runs on the DNS server with and without ``--churn`` EndpointSlice changes a
second (default 100) arriving over NATS: every change drops the cached answers of the Service it
touches (and only those: dropping them all would bring every run down to the cold rate).

Measured, per round, for the DNS server and the baseline (``bench.dns.echo``: the same socket loop
sending every datagram back, i.e. the cost of the path itself), alternating which goes first:

* **max**: dnsperf with 4 clients and 200 queries outstanding for ``--seconds``: the most it answers;
* **at rate**: dnsperf offering ``--rate`` queries/s (default 10,000), every latency recorded
  (``-v``): p50/p99/max at that load, and whether the rate was sustained without loss.

Once, also the DNS server with its answer cache off (``--cache-entries 0``): every query through
dnspython (the slow path), to show what the cache buys.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from nodemesh import subjects
from nodemesh.bus import Bus, connect
from nodemesh.messages.k8s import ObjectEvent, Synced
from nodemesh.streams import provision
from testkit.k8sobjects import endpoint, endpoint_slice, service
from testkit.natsserver import NatsServer, free_port

HOST = "127.0.0.1"


@dataclass
class Run:
    server: str  # dns | dns-nocache | echo
    mode: str  # max | rate
    qps: float
    sent: int
    completed: int
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    avg_ms: float = 0.0


# --- the cluster ---------------------------------------------------------------------------------
def names(n: int) -> list[tuple[str, str, bool]]:
    """(namespace, service, headless): 100 namespaces, one headless Service in ten."""
    return [(f"ns{i % 100}", f"svc{i}", i % 10 == 9) for i in range(n)]


async def load(bus: Bus, svcs: list[tuple[str, str, bool]]) -> None:
    async def pub(obj: dict[str, object]) -> None:
        meta = obj["metadata"]
        assert isinstance(meta, dict)
        ns, name, kind = str(meta["namespace"]), str(meta["name"]), str(obj["kind"])
        api = str(obj["apiVersion"])
        ev = ObjectEvent(type="upsert", kind=kind, api_version=api, namespace=ns, name=name, obj=obj)
        await bus.js_publish(subjects.k8s_object(kind, ns, name), ev)

    pending = []
    for i, (ns, name, headless) in enumerate(svcs):
        ip = None if headless else f"10.96.{40 + i // 250}.{i % 250 + 1}"
        pending.append(pub(service(name, ns=ns, ip=ip, ports=[("http", 80, "TCP")])))
        if headless:
            eps = [endpoint(f"10.{200 + j}.{i // 250}.{i % 250 + 1}") for j in range(3)]
            pending.append(pub(endpoint_slice(f"{name}-1", name, eps, ns=ns, ports=[("http", 8080, "TCP")])))
        if len(pending) >= 500:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    seq = (await bus.js.stream_info("K8S")).state.last_seq
    await bus.js_publish(subjects.K8S_SYNCED, Synced(watcher="bench", epoch=1, stream_seq=int(seq)))


class Churn:
    """Publishes ``per_s`` EndpointSlice changes a second (a headless Service's endpoints move) from
    a thread of its own, as a busy cluster's rollouts would, until stopped."""

    def __init__(self, nats_url: str, svcs: list[tuple[str, str, bool]], per_s: int) -> None:
        self.nats_url, self.per_s = nats_url, per_s
        self.headless = [(ns, name) for ns, name, h in svcs if h]
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        bus = await connect(self.nats_url, name="bench-churn", max_wait=10)
        rng = random.Random(3)
        start = time.monotonic()
        while not self._stop.is_set():
            ns, name = rng.choice(self.headless)
            eps = [endpoint(f"10.{200 + j}.{rng.randrange(250)}.{rng.randrange(1, 250)}") for j in range(3)]
            obj = endpoint_slice(f"{name}-1", name, eps, ns=ns, ports=[("http", 8080, "TCP")])
            ev = ObjectEvent(type="upsert", kind="EndpointSlice", api_version="discovery.k8s.io/v1",
                             namespace=ns, name=f"{name}-1", obj=obj)  # fmt: skip
            await bus.js_publish(subjects.k8s_object("EndpointSlice", ns, f"{name}-1"), ev)
            self.sent += 1
            await asyncio.sleep(max(0.0, start + self.sent / self.per_s - time.monotonic()))
        await bus.nc.close()

    def __enter__(self) -> Churn:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)


def query_file(path: Path, svcs: list[tuple[str, str, bool]], seed: int = 7) -> int:
    search = ["{ns}.svc.cluster.local", "svc.cluster.local", "cluster.local"]
    order = list(svcs)
    random.Random(seed).shuffle(order)
    lines = []
    for ns, name, _ in order:
        fqdn = f"{name}.{ns}.svc.cluster.local"
        for cand in [f"{fqdn}.{s.format(ns=ns)}" for s in search] + [fqdn]:
            lines += [f"{cand} A", f"{cand} AAAA"]
    path.write_text("\n".join(lines) + "\n")
    return len(lines)


# --- processes -----------------------------------------------------------------------------------
NICE = 0  # --nice: priority of the server and dnsperf against the rest of a shared machine
RT = False  # --realtime: SCHED_FIFO for the latency runs (see set_realtime)


def pinned(cpu: int | None, argv: list[str], realtime: bool = False) -> list[str]:
    if cpu is not None and shutil.which("taskset"):
        argv = ["taskset", "-c", str(cpu), *argv]
    if realtime and RT:
        return ["chrt", "-f", "10", *argv]
    return ["nice", "-n", str(NICE), *argv] if NICE else argv


def set_realtime(pid: int, on: bool) -> None:
    """SCHED_FIFO while latency is measured, so the tail is the server's and not the time slices of
    whatever else shares the CPU (on a shared box, an echo server's p99 goes from ~4 ms to ~0.4 ms).
    Only for the rate runs: there the server is mostly idle, so other work is not starved."""
    if not RT:
        return
    if on:
        os.sched_setscheduler(pid, os.SCHED_FIFO, os.sched_param(10))
    else:
        os.sched_setscheduler(pid, os.SCHED_OTHER, os.sched_param(0))


def start_dns(nats_url: str, port: int, cpu: int | None, cache_entries: int) -> subprocess.Popen[bytes]:
    """The real service process, pinned to ``cpu``; returns once /readyz says it has synced."""
    health = free_port()
    argv = [
        sys.executable, "-m", "services.dns", "--nats-url", nats_url, "--listen", f"{HOST}:{port}",
        "--health-addr", f"{HOST}:{health}", "--log-level", "warning", "--cache-entries", str(cache_entries),
        "--upstreams", "127.0.0.1:9",
    ]  # fmt: skip
    proc = subprocess.Popen(pinned(cpu, argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dns exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{health}/readyz", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:  # refused, or 503 (HTTPError) before the sync
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("dns not ready in 120 s")


def start_echo(port: int, cpu: int | None) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        pinned(cpu, [sys.executable, "-m", "bench.dns.echo", HOST, str(port)]), stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    proc.stdout.readline()  # "ready"
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- dnsperf -------------------------------------------------------------------------------------
def dnsperf(
    port: int, qfile: Path, seconds: float, cpu: int | None, rate: int = 0, once: bool = False
) -> Run:
    argv = ["dnsperf", "-s", HOST, "-p", str(port), "-d", str(qfile), "-l", str(seconds), "-t", "2"]
    if once:
        argv += ["-n", "1"]
    if rate:
        argv += ["-Q", str(rate), "-q", "2000", "-c", "1", "-v"]
    else:
        argv += ["-c", "4", "-q", "200"]
    out = subprocess.run(
        pinned(cpu, argv, realtime=bool(rate)),
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    ).stdout
    stats: dict[str, str] = {}
    lat: list[float] = []
    for line in out.splitlines():
        if line.startswith("> "):
            lat.append(float(line.rsplit(" ", 1)[1]) * 1000)
        elif ":" in line:
            k, _, v = line.strip().partition(":")
            stats[k.strip()] = v.strip()
    sent = int(stats.get("Queries sent", "0"))
    completed = int(stats.get("Queries completed", "0 ").split()[0])
    run = Run("", "rate" if rate else "max", float(stats.get("Queries per second", "0")), sent, completed)
    if lat:
        lat.sort()
        run.p50_ms = lat[len(lat) // 2]
        run.p99_ms = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        run.max_ms = lat[-1]
        run.avg_ms = statistics.fmean(lat)
    else:
        avg = stats.get("Average Latency (s)", "0").split()[0]
        run.avg_ms = float(avg) * 1000
    return run


# --- main ----------------------------------------------------------------------------------------
async def load_cluster(nats_url: str, svcs: list[tuple[str, str, bool]]) -> None:
    bus = await connect(nats_url, name="bench", max_wait=10)
    await provision(bus.js)
    await load(bus, svcs)
    await bus.nc.close()


def bench(args: argparse.Namespace) -> list[Run]:
    cpus = sorted(os.sched_getaffinity(0))
    server_cpu, client_cpu = (cpus[0], cpus[1]) if len(cpus) > 1 else (None, None)
    svcs = names(args.services)
    runs: list[Run] = []

    def measure(server: str, port: int, rate: int, pid: int) -> None:
        set_realtime(pid, bool(rate))
        try:
            r = dnsperf(port, qfile, args.seconds, client_cpu, rate)
        finally:
            set_realtime(pid, False)
        r.server = server
        runs.append(r)
        print(_line(r), flush=True)

    with tempfile.TemporaryDirectory(prefix="nm-bench-dns-") as tmp, NatsServer() as nats:
        qfile = Path(tmp) / "queries.txt"
        n = query_file(qfile, svcs)
        t = time.perf_counter()
        asyncio.run(load_cluster(nats.url, svcs))
        print(f"loaded {args.services} Services into K8S in {time.perf_counter() - t:.1f}s; {n} query lines")
        dns_port, echo_port = free_port(), free_port()
        t = time.perf_counter()
        dns_proc = start_dns(nats.url, dns_port, server_cpu, args.cache_entries)
        print(f"dns ready (synced) in {time.perf_counter() - t:.1f}s")
        echo_proc = start_echo(echo_port, server_cpu)
        try:
            # warm-up: every distinct query once (the slow path fills the answer cache), as on a
            # server that has been running; its rate is the cold-cache number
            cold = dnsperf(dns_port, qfile, 300, client_cpu, once=True)
            cold.server, cold.mode = "dns", "cold"
            runs.append(cold)
            print(_line(cold), flush=True)
            for rnd in range(args.rounds):
                order = [("dns", dns_port, dns_proc.pid), ("echo", echo_port, echo_proc.pid)]
                if rnd % 2:
                    order.reverse()
                for rate in (0, args.rate):
                    for server, port, pid in order:
                        measure(server, port, rate, pid)
            if args.churn:
                # Throughput only: the latency runs need SCHED_FIFO, and a real-time server on a
                # shared box starves the NATS traffic the churn is made of.
                for rnd in range(args.rounds):
                    for churning in (False, True) if rnd % 2 == 0 else (True, False):
                        if not churning:
                            measure("dns-still", dns_port, 0, dns_proc.pid)
                            continue
                        with Churn(nats.url, svcs, args.churn) as churn:
                            measure("dns-churn", dns_port, 0, dns_proc.pid)
                        print(f"  ({churn.sent} EndpointSlice changes during the run)")
        finally:
            stop(dns_proc)
            stop(echo_proc)
        if args.uncached:
            nocache = start_dns(nats.url, dns_port, server_cpu, 0)
            try:
                for rate in (0, args.rate):
                    measure("dns-nocache", dns_port, rate, nocache.pid)
            finally:
                stop(nocache)
    return runs


def _line(r: Run) -> str:
    lost = r.sent - r.completed
    return (
        f"{r.server:12} {r.mode:5} {r.qps:10,.0f} q/s  p50 {r.p50_ms:6.3f} ms  p99 {r.p99_ms:6.3f} ms  "
        f"max {r.max_ms:7.3f} ms  avg {r.avg_ms:6.3f} ms  lost {lost}"
    )


def summary(runs: list[Run], rate: int) -> None:
    def med(server: str, mode: str, field: str) -> float:
        vals = [getattr(r, field) for r in runs if r.server == server and r.mode == mode]
        return statistics.median(vals) if vals else 0.0

    dns_max, echo_max = med("dns", "max", "qps"), med("echo", "max", "qps")
    print()
    ratio = dns_max / echo_max if echo_max else 0.0
    print(f"median max q/s: dns {dns_max:,.0f}, echo baseline {echo_max:,.0f} (dns/echo {ratio:.2f})")
    p50, p99 = med("dns", "rate", "p50_ms"), med("dns", "rate", "p99_ms")
    e50, e99 = med("echo", "rate", "p50_ms"), med("echo", "rate", "p99_ms")
    print(
        f"at {rate:,} q/s offered: dns p50 {p50:.3f} ms p99 {p99:.3f} ms; echo p50 {e50:.3f} p99 {e99:.3f} ms"
    )
    churn, still = med("dns-churn", "max", "qps"), med("dns-still", "max", "qps")
    if churn:
        print(f"max q/s with EndpointSlice churn {churn:,.0f}, without (alternating) {still:,.0f}")
    cold = med("dns", "cold", "qps")
    print(f"cold cache (the warm-up: every distinct query once): {cold:,.0f} q/s")
    nocache = med("dns-nocache", "max", "qps")
    if nocache:
        print(f"cache off: {nocache:,.0f} q/s max (cache on / off: {dns_max / nocache:.1f}x)")
    goal = dns_max >= 10_000 and p99 <= 2.0
    print(f"goal (>= 10,000 q/s, p99 <= 2 ms): {'met' if goal else 'MISSED'}")


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.dns", description=__doc__.split("\n")[0])
    p.add_argument("--services", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rate", type=int, default=10_000, help="offered q/s for the latency runs")
    p.add_argument("--cache-entries", type=int, default=100_000)
    p.add_argument(
        "--churn", type=int, default=100, help="EndpointSlice changes/s in the churn runs (0: none)"
    )
    p.add_argument("--no-uncached", dest="uncached", action="store_false", help="skip the cache-off run")
    p.add_argument("--json", default="", help="write every run here")
    p.add_argument(
        "--nice", type=int, default=-10, help="nice value of server and dnsperf (root: < 0 favours them)"
    )
    p.add_argument(
        "--no-realtime", dest="realtime", action="store_false", help="latency runs without SCHED_FIFO"
    )
    args = p.parse_args()
    global NICE, RT
    NICE = args.nice if os.geteuid() == 0 or args.nice >= 0 else 0
    RT = args.realtime and os.geteuid() == 0 and shutil.which("chrt") is not None
    if not shutil.which("dnsperf"):
        raise SystemExit("dnsperf not found: apt-get install dnsperf (scripts/install-system.sh)")
    runs = bench(args)
    summary(runs, args.rate)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in runs], indent=2))


if __name__ == "__main__":
    main()
