"""Per-packet cost of the tc programs before/after the L7 redirect (BPF_PROG_TEST_RUN), interleaved
A/B: a TCP ACK of an established flow through nm_from_pod and nm_to_pod; then nm_from_pod once a
connection was redirected by an ingress policy (every TCP packet leaving a pod then pays the
``nm_proxy_flows`` lookup). Root. ``python -m bench.l7policy [REV]`` (REV: the baseline's commit,
default e681a8b, the last one before the redirect)."""

import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

from services.datapath.bpfsys import MapFd, prog_test_run
from services.datapath.loader import Loader
from services.datapath.maps import EndpointInfo, ip_to_be32

REPO = Path(__file__).resolve().parents[2]


def tcp(src: str, dst: str, sport: int, dport: int, flags: int = 0x10) -> bytes:
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 40, 1, 0, 64, 6, 0, socket.inet_aton(src), socket.inet_aton(dst)
    )
    th = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 5 << 4, flags, 1000, 0, 0)
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + th + b"\0" * 6


rev = sys.argv[1] if len(sys.argv) > 1 else "e681a8b"
old_bpf = Path(tempfile.mkdtemp(prefix="nm-bpf-"))
for f in ("nm_tc.c", "include/nm_maps.h", "lib/parse.h", "lib/policy.h"):
    (old_bpf / f).parent.mkdir(parents=True, exist_ok=True)
    (old_bpf / f).write_bytes(subprocess.check_output(["git", "-C", str(REPO), "show", f"{rev}:bpf/{f}"]))
root = f"/sys/fs/bpf/nmcost-{os.getpid()}"
os.makedirs(root)
IFX = 1  # loopback: BPF_PROG_TEST_RUN needs an existing device
loaders: dict[str, Loader] = {}
try:
    for name, d in (("before", old_bpf), ("after", REPO / "bpf")):
        ld = Loader(f"c{name}", pin_root=os.path.join(root, name), bpf_dir=d)
        m = ld.load()
        m.set_endpoint(IFX, EndpointInfo(identity=300, ipv4=ip_to_be32("10.9.0.2"), ep_id=1, flags=0))
        loaders[name] = ld
    out_pkt = tcp("10.9.0.2", "10.9.0.3", 40000, 8080, 0x02)
    in_pkt = tcp("10.9.0.3", "10.9.0.2", 40001, 8080, 0x02)
    for ld in loaders.values():  # create the CT entries (SYN), then measure ACKs of established flows
        prog_test_run(ld.from_fd, out_pkt, ifindex=IFX)
        prog_test_run(ld.to_fd, in_pkt, ifindex=IFX)
    out_ack, in_ack = tcp("10.9.0.2", "10.9.0.3", 40000, 8080), tcp("10.9.0.3", "10.9.0.2", 40001, 8080)
    keys = ("before/from_pod", "after/from_pod", "before/to_pod", "after/to_pod")
    res: dict[str, list[int]] = {k: [] for k in keys}
    for _ in range(7):  # interleaved
        for name, ld in loaders.items():
            res[f"{name}/from_pod"].append(prog_test_run(ld.from_fd, out_ack, repeat=300_000, ifindex=IFX)[1])
            res[f"{name}/to_pod"].append(prog_test_run(ld.to_fd, in_ack, repeat=300_000, ifindex=IFX)[1])
    act = MapFd.pinned(os.path.join(root, "after", "nm_proxy_active"))
    act.update((0).to_bytes(4, "little"), (1).to_bytes(4, "little"))
    res["active/from_pod"] = []
    for _ in range(7):
        res["active/from_pod"].append(
            prog_test_run(loaders["after"].from_fd, out_ack, repeat=300_000, ifindex=IFX)[1]
        )
    med = {k: statistics.median(v) for k, v in res.items()}
    for k, v in med.items():
        print(f"{k}: {v} ns (runs {res[k]})")
    ratio = med["active/from_pod"] / med["before/from_pod"]
    print(
        f"from_pod once an ingress L7 redirect was recorded (nm_proxy_active=1): after/before = {ratio:.2f}"
    )
    for p in ("from_pod", "to_pod"):
        print(f"{p}: after/before = {med['after/' + p] / med['before/' + p]:.2f}")
finally:
    for ld in loaders.values():
        ld.close()
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(old_bpf, ignore_errors=True)
