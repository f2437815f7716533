"""``python -m bench.services``: new connections/s and per-connection latency from a pod to a
ClusterIP with 100 / 1k / 10k Services loaded, against the pod-IP path and kube-proxy iptables rules.

One run, interleaved A/B (every repetition measures every configuration in turn). Two pods made by
the datapath's own plumbing (netns + veth, /32 + host route); a select()-based echo server in the
server pod listens on two ports (the measured Service's two endpoints); the client in the client pod
connects, sends 16 bytes, reads them back, closes (SO_LINGER 0: an RST, no TIME_WAIT piling up
across rounds), timing each connection. The same client for every variant. ``--client c`` (the
default) is ``loadgen.c``, compiled at bench time with the system ``cc``, in ``--procs`` processes
with a threaded C server: a few µs of its own per connection, so the ratios measure the path.
``--client python`` is the original single Python loop and select() server (~200 µs per connection
of its own, which flattened every ratio towards 1).

- ``pod``: no socket programs; the client connects to the server pod's IP.
- ``bpf-N``: ``bpf/nm_sock.c`` attached to the cgroup v2 root (the agent's own loader), the client
  pod's netns registered as a pod, N ClusterIP Services of 2 endpoints each in the maps (written
  through the agent's diff → map writer); the client connects to the measured ClusterIP.
- ``ipt-N``: no programs; the same N Services as kube-proxy's iptables mode writes them
  (KUBE-SERVICES → KUBE-SVC-<hash> with ``-m statistic --mode random --probability`` per endpoint
  → KUBE-SEP-<hash> DNAT, chain names hashed the way kube-proxy does), loaded with
  ``iptables-legacy-restore --noflush`` into the host's nat table, jumped to from PREROUTING for packets
  from the client pod's veth, removed after the round. The measured Service sits in the middle of
  KUBE-SERVICES (kube-proxy writes Services in map order: on average, half the list is walked).

Root only. Everything (rules, netns, cgroup programs, pins) is removed in ``finally``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from nodemesh.netns import netns_path
from services.datapath.lb.diff import LbState, diff
from services.datapath.lb.loader import SockLoader
from services.datapath.lb.maps import NS_POD, LbMaps
from services.datapath.lb.model import F_CLUSTER_IP, Backend, Frontend, FrontendPlan, ServiceRef
from services.datapath.pods.netns import PodLink, create_pod_netns, delete_pod_netns
from services.datapath.services import netns_cookie

SIZES = (100, 1_000, 10_000)
CLIENT_IP, SERVER_IP = "10.98.255.2", "10.98.255.3"
# iptables-legacy (x_tables, kube-proxy's classic backend): iptables-nft-restore takes ~2 min to
# load and remove 10k Services' rules on this machine, too long to interleave
IPT, IPT_RESTORE = "iptables-legacy", "iptables-legacy-restore"
PORTS = (8080, 8081)  # the measured Service's two endpoints: both in the server pod

SERVER = r"""
import selectors, socket, sys
sel = selectors.DefaultSelector()
for p in sys.argv[2:]:
    ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((sys.argv[1], int(p))); ls.listen(1024); sel.register(ls, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        c, _a = key.fileobj.accept()
        d = c.recv(64)
        if d:
            c.sendall(d)
        c.close()
"""

CLIENT = r"""
import json, socket, struct, sys, time
ip, port, n, warm = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
lin = struct.pack("ii", 1, 0)
lat, errs = [], 0
msg = b"0123456789abcdef"
t0 = 0.0
for i in range(warm + n):
    if i == warm:
        t0 = time.perf_counter()
    t = time.perf_counter()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, lin)
    s.settimeout(2)
    try:
        s.connect((ip, port)); s.sendall(msg); got = b""
        while len(got) < len(msg):
            d = s.recv(64)
            if not d:
                break
            got += d
        ok = got == msg
    except OSError:
        ok = False
    s.close()
    if i >= warm:
        if ok:
            lat.append(time.perf_counter() - t)
        else:
            errs += 1
print(json.dumps({"secs": time.perf_counter() - t0, "lat": lat, "errors": errs}))
"""


def sh(*args: str, ns: str = "", check: bool = True, input: str | None = None) -> str:
    cmd = (["nsenter", f"--net={netns_path(ns)}", "--"] if ns else []) + list(args)
    r = subprocess.run(cmd, capture_output=True, text=True, input=input)
    if check and r.returncode:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip()[:500]}")
    return r.stdout


def vip(i: int) -> str:
    return f"10.97.{i // 250}.{i % 250 + 1}"


def fake_backends(i: int) -> list[str]:
    return [f"10.98.{(2 * i + j) // 250}.{(2 * i + j) % 250 + 1}" for j in range(2)]


def _kp_hash(prefix: str, s: str) -> str:
    # kube-proxy: servicePortChainName / servicePortEndpointChainName (base32 of sha256, 16 chars)
    return prefix + base64.b32encode(hashlib.sha256(s.encode()).digest()).decode()[:16]


LOADGEN_C = Path(__file__).with_name("loadgen.c")


def build_loadgen(out_dir: str) -> str:
    """Compile loadgen.c with the system cc; returns the binary's path."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("--client c needs a C compiler (cc); or use --client python")
    exe = os.path.join(out_dir, "loadgen")
    subprocess.run([cc, "-O2", "-o", exe, str(LOADGEN_C), "-lpthread"], check=True)
    return exe


class Bench:
    def __init__(self, conns: int, client: str = "c", procs: int = 2) -> None:
        self.tok = secrets.token_hex(3)
        self.conns = conns
        self.client_kind = client
        self.procs = procs
        self.tmp = tempfile.mkdtemp(prefix="nmbench-")
        self.loadgen = build_loadgen(self.tmp) if client == "c" else ""
        self.mid = {n: n // 2 for n in SIZES}  # index of the measured Service at each size
        self.pin_root = f"/sys/fs/bpf/nmbench-{self.tok}"
        self.client: PodLink | None = None
        self.server: PodLink | None = None
        self.server_proc: subprocess.Popen[str] | None = None
        self.loader: SockLoader | None = None
        self.ipt_loaded = False
        self.attached = False
        self.top = f"NMB-SERVICES-{self.tok}"
        self.masq = f"NMB-MARK-MASQ-{self.tok}"
        self.svc_chains: list[str] = []
        self.sep_chains: list[str] = []

    def setup(self) -> None:
        self.client = create_pod_netns(f"nm-bsvc-c-{self.tok}", f"lxcsc{self.tok}", CLIENT_IP)
        self.server = srv = create_pod_netns(f"nm-bsvc-s-{self.tok}", f"lxcss{self.tok}", SERVER_IP)
        serve = [self.loadgen, "server"] if self.loadgen else [sys.executable, "-c", SERVER]
        self.server_proc = subprocess.Popen(
            ["nsenter", f"--net={netns_path(srv.netns)}", "--", *serve, SERVER_IP, *map(str, PORTS)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.server_proc.stdout is not None
        self.server_proc.stdout.readline()
        os.makedirs(self.pin_root)
        self.loader = SockLoader(os.path.join(self.pin_root, "node"))
        self.maps: LbMaps = self.loader.load()
        self.maps.set_netns(netns_cookie(f"nm-bsvc-c-{self.tok}"), NS_POD)
        self.state = LbState()
        self.n_bpf = 0

    # --- plans ----------------------------------------------------------------------------------
    def plan(self, i: int, n: int) -> FrontendPlan:
        ips = [SERVER_IP, SERVER_IP] if i == self.mid[n] else fake_backends(i)
        ports = PORTS if i == self.mid[n] else (8080, 8080)
        bes = tuple(sorted(Backend(ip, p, 6) for ip, p in zip(ips, ports, strict=True)))
        ref = ServiceRef("default", f"s{i}", "http")
        return FrontendPlan(Frontend(vip(i), 80, 6), ref, F_CLUSTER_IP, bes)

    def set_bpf(self, n: int) -> None:
        desired = {(fp := self.plan(i, n)).frontend: fp for i in range(n)}
        for op in diff(self.state, desired):
            self.maps.write(op)
            self.state.apply(op)
        if not self.attached:
            assert self.loader is not None
            self.loader.attach()
            self.attached = True

    def detach_bpf(self) -> None:
        if self.attached and self.loader is not None:
            self.loader.detach()
            self.attached = False

    # --- iptables, the way kube-proxy writes it ------------------------------------------------
    def ipt_rules(self, n: int) -> str:
        assert self.client is not None
        chains, rules = [self.top, self.masq], [f"-A {self.masq} -j MARK --or-mark 0x4000"]
        svc, sep = [], []
        for i in range(n):
            name = f"default/s{i}:http"
            sc = _kp_hash("KUBE-SVC-", f"{self.tok}{name}tcp")
            svc.append(sc)
            rules.append(f'-A {self.top} -m comment --comment "{name} cluster IP" -m tcp -p tcp '
                         f"-d {vip(i)}/32 --dport 80 -j {sc}")  # fmt: skip
            rules.append(f'-A {sc} -m comment --comment "{name} cluster IP" -m tcp -p tcp '
                         f"-d {vip(i)}/32 --dport 80 ! -s 10.98.0.0/16 -j {self.masq}")  # fmt: skip
            eps = [(b, 8080) for b in fake_backends(i)]
            if i == self.mid[n]:
                eps = [(SERVER_IP, p) for p in PORTS]
            for k, (ip, port) in enumerate(eps):
                ec = _kp_hash("KUBE-SEP-", f"{self.tok}{name}tcp{ip}:{port}")
                sep.append(ec)
                prob = f" -m statistic --mode random --probability {1 / (len(eps) - k):.11f}"
                rules.append(f'-A {sc} -m comment --comment "{name} -> {ip}:{port}"'
                             f"{prob if k < len(eps) - 1 else ''} -j {ec}")  # fmt: skip
                rules.append(f'-A {ec} -m comment --comment "{name}" -s {ip}/32 -j {self.masq}')
                rules.append(f'-A {ec} -m comment --comment "{name}" -m tcp -p tcp '
                             f"-j DNAT --to-destination {ip}:{port}")  # fmt: skip
        self.svc_chains, self.sep_chains = svc, sep
        chains += svc + sep
        rules.append(f"-I PREROUTING 1 -i {self.client.host_ifname} -j {self.top}")
        return "*nat\n" + "".join(f":{c} - [0:0]\n" for c in chains) + "\n".join(rules) + "\nCOMMIT\n"

    def set_ipt(self, n: int) -> None:
        text = self.ipt_rules(n)
        self.ipt_loaded = True
        sh(IPT_RESTORE, "--noflush", input=text)

    def clear_ipt(self) -> None:
        if not self.ipt_loaded:
            return
        assert self.client is not None
        sh(IPT, "-t", "nat", "-D", "PREROUTING", "-i", self.client.host_ifname, "-j", self.top,
           check=False)  # fmt: skip
        chains = [self.top, self.masq, *self.svc_chains, *self.sep_chains]
        text = "*nat\n" + "".join(f":{c} - [0:0]\n" for c in chains)  # declaring a chain flushes it
        text += "".join(f"-X {c}\n" for c in chains) + "COMMIT\n"
        sh(IPT_RESTORE, "--noflush", input=text, check=False)
        self.ipt_loaded = False

    # --- measurement ----------------------------------------------------------------------------
    def measure(self, ip: str, port: int) -> dict[str, Any]:
        assert self.client is not None
        if self.loadgen:
            args = [self.loadgen, "client", ip, str(port), str(self.conns), "50", str(self.procs)]
        else:
            args = [sys.executable, "-c", CLIENT, ip, str(port), str(self.conns), "50"]
        out = sh(*args, ns=self.client.netns)
        r = json.loads(out)
        lat = sorted(r["lat"])
        ok = len(lat)
        return {
            "conn_per_s": ok / r["secs"] if r["secs"] else 0.0,
            "p50_us": lat[ok // 2] * 1e6 if ok else 0.0,
            "p99_us": lat[min(ok - 1, int(ok * 0.99))] * 1e6 if ok else 0.0,
            "errors": r["errors"],
        }

    def run_config(self, name: str) -> dict[str, Any]:
        kind, _, ns = name.partition("-")
        n = int(ns or 0)
        try:
            if kind == "pod":
                return self.measure(SERVER_IP, PORTS[0])
            if kind == "bpf":
                self.set_bpf(n)
            else:
                self.set_ipt(n)
            return self.measure(vip(self.mid[n]), 80)
        finally:
            self.detach_bpf()
            self.clear_ipt()

    def close(self) -> None:
        try:
            self.clear_ipt()
        finally:
            try:
                self.detach_bpf()
                if self.loader is not None:
                    self.loader.close()
            finally:
                if self.server_proc is not None:
                    self.server_proc.terminate()
                    self.server_proc.wait()
                for p in (self.client, self.server):
                    if p is not None:
                        delete_pod_netns(p.netns, p.host_ifname)
                shutil.rmtree(self.pin_root, ignore_errors=True)
                shutil.rmtree(self.tmp, ignore_errors=True)


def _med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.services")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--conns", type=int, default=2000, help="connections per measurement")
    ap.add_argument("--json", default="", help="also write the raw samples here")
    ap.add_argument("--client", choices=("c", "python"), default="c",
                    help="c: loadgen.c built with cc (default); python: the Python loop")  # fmt: skip
    ap.add_argument("--procs", type=int, default=2, help="client processes (--client c)")
    a = ap.parse_args()
    configs = ["pod"] + [f"{k}-{n}" for n in SIZES for k in ("bpf", "ipt")]
    samples: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
    b = Bench(a.conns, a.client, a.procs)
    try:
        b.setup()
        for rep in range(a.reps):  # Ctrl-C: clean up, then report the repetitions that completed
            for c in configs:
                t0 = time.perf_counter()
                samples[c].append(r := b.run_config(c))
                print(f"rep {rep} {c:10} {r['conn_per_s']:8.0f} conn/s p50 {r['p50_us']:7.1f} us "
                      f"p99 {r['p99_us']:7.1f} us err {r['errors']} ({time.perf_counter() - t0:.1f} s)",
                      flush=True)  # fmt: skip
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    finally:
        b.close()
    done = min(len(s) for s in samples.values())
    samples = {c: s[:done] for c, s in samples.items()}
    print(f"\ncomplete repetitions: {done}")
    # ratios per repetition (against that repetition's pod / ipt sample), then medians
    print("\n| config | conn/s | p50 µs | p99 µs | conn/s vs pod | p99 vs pod | p50 added vs pod µs "
          "| conn/s vs ipt | p99 ipt/bpf |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for c in configs:
        s = samples[c]
        row = [f"{_med([x['conn_per_s'] for x in s]):.0f}", f"{_med([x['p50_us'] for x in s]):.0f}",
               f"{_med([x['p99_us'] for x in s]):.0f}"]  # fmt: skip
        pod = samples["pod"]
        row.append(f"{_med([x['conn_per_s'] / p['conn_per_s'] for x, p in zip(s, pod, strict=True)]):.2f}")
        row.append(f"{_med([x['p99_us'] / p['p99_us'] for x, p in zip(s, pod, strict=True)]):.2f}")
        # what the path adds to a connection over the pod-IP path (the client's own cost cancels)
        row.append(f"{_med([x['p50_us'] - p['p50_us'] for x, p in zip(s, pod, strict=True)]):.1f}")
        if c.startswith("bpf"):
            ipt = samples["ipt" + c[3:]]
            pairs = list(zip(s, ipt, strict=True))
            row.append(f"{_med([x['conn_per_s'] / i['conn_per_s'] for x, i in pairs]):.2f}")
            row.append(f"{_med([i['p99_us'] / x['p99_us'] for x, i in zip(s, ipt, strict=True)]):.2f}")
        else:
            row += ["", ""]
        print(f"| {c} | " + " | ".join(row) + " |")
    errs = sum(x["errors"] for s in samples.values() for x in s)
    print(f"\nerrors (failed connections) in all rounds: {errs}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(samples, fh)


if __name__ == "__main__":
    main()
