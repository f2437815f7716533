"""Identity benchmarks: allocation rate, pod event → ipcache event latency, CSR → SVID latency.

    .venv/bin/python -m bench.identity [--sets 4000] [--rounds 3] [--pods 300] [--csrs 300]
                                       [--startup-pods 5000] [--only alloc|service|startup]

1. **Allocation** — 4 allocator processes (each with its own NATS connection and bucket mirror,
   as 4 replicas) allocate fresh label sets concurrently; 0 duplicates is checked (one number per
   label set, no number shared). Interleaved per round: A = look the label index up on the server
   on a mirror miss, one allocation in flight (the naive loop); B = A pipelined (64 in flight);
   C = B but trusting a mirror miss (create-if-absent is the lock anyway; the default); D = C with
   every label set allocated by *two* allocators at once (the racing case); E = atomic batches
   (JetStream atomic batch publish, 250 identities = 500 create-if-absent messages, all or nothing;
   4 batches in flight per allocator); F = E raced. Ratios against A.
2. **Pod event → ipcache event** — a real identity service (subprocess) and a client that plays
   the watcher: publish a Pod on the K8S stream, wait for its ``IPCacheEvent`` (one at a time, so
   this is latency, not queueing). A = new labels (allocates), B = existing labels (reference only).
3. **CSR → SVID** — authd's request on ``svid.sign.<node>`` to the same service, CSR prepared
   beforehand; A = sequential, B = 8 concurrent requesters.
4. **Start-up** — the service starts over a cluster of ``--startup-pods`` pods (4 per identity)
   and is timed until the ipcache is complete: A = per-pod allocation only (the default), B = the
   leader first allocates every new label set in atomic batches (``--batch-preallocate true``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from nats.js.api import DeliverPolicy

from nodemesh import subjects
from nodemesh.bus import connect
from nodemesh.codec import decode
from nodemesh.messages.identity import IPCacheEntry, IPCacheEvent, SvidReply, SvidRequest
from nodemesh.messages.k8s import ObjectEvent, Synced
from nodemesh.streams import ipcache_key, provision
from testkit.natsserver import NatsServer


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


# --- 1. allocation ---------------------------------------------------------------------------------
from bench.identity.allocworker import MODES, _worker  # noqa: E402  (spawned processes import it)


def alloc_round(
    url: str, sets: list[list[str]], mode: tuple[Any, ...], pool: Any, go: Any, ready: Any
) -> tuple[float, int]:
    _, inflight, trust, dup, batch = mode
    n = 4
    work: list[list[list[str]]] = [[] for _ in range(n)]
    for i, s in enumerate(sets):
        work[i % n].append(s)
        if dup:
            work[(i + 1) % n].append(s)
    go.clear()
    res = [
        pool.apply_async(_worker, ((url, w, inflight, trust, batch, k, go, ready),))
        for k, w in enumerate(work)
    ]
    for _ in work:
        ready.get(timeout=600)  # every worker connected and synced its mirror (not timed)
    go.set()
    out = [r.get(600) for r in res]
    wall = max(t1 for _, t1, _ in out) - min(t0 for t0, _, _ in out)
    by_set: dict[str, set[int]] = defaultdict(set)
    for _, _, got in out:
        for k, v in got.items():
            by_set[k].add(v)
    numbers = [next(iter(v)) for v in by_set.values()]
    dups = sum(len(v) - 1 for v in by_set.values()) + len(numbers) - len(set(numbers))
    return len(sets) / wall, dups


async def _purge(url: str) -> None:
    b = await connect(url, name="bench-purge", max_wait=10)
    await b.js.purge_stream("KV_identities")
    await b.nc.close()


def bench_alloc(url: str, n_sets: int, rounds: int) -> list[str]:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    manager = ctx.Manager()
    go = manager.Event()
    ready = manager.Queue()
    results: dict[str, list[float]] = defaultdict(list)
    dups_total = 0
    with ctx.Pool(4) as pool:
        for r in range(rounds):
            for mode in MODES:
                name = mode[0]
                sets = [
                    [f"k8s:app=r{r}-{name[0]}-{i}", "k8s:io.kubernetes.pod.namespace=bench"]
                    for i in range(n_sets)
                ]
                # Every mode starts from an empty bucket: otherwise later modes allocate in a
                # 65k-number space that earlier ones filled up, and measure that instead.
                asyncio.run(_purge(url))
                rate, dups = alloc_round(url, sets, mode, pool, go, ready)
                results[name].append(rate)
                dups_total += dups
                print(f"  round {r} {name}: {rate:,.0f} identities/s, duplicates {dups}", flush=True)
    manager.shutdown()
    base = statistics.median(results[MODES[0][0]])
    lines = ["| mode (4 allocator processes) | new identities/s (median) | vs A |", "|---|---|---|"]
    for name, *_ in MODES:
        med = statistics.median(results[name])
        lines.append(f"| {name} | {med:,.0f} | {med / base:.2f}x |")
    lines.append(f"\nduplicates across all rounds: **{dups_total}**")
    return lines


# --- 2 + 3. against a running service ---------------------------------------------------------------
def _pod(ns: str, name: str, labels: dict[str, str], ip: str) -> ObjectEvent:
    obj = {
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": "node-1", "serviceAccountName": "default"},
        "status": {"phase": "Running", "podIP": ip},
    }
    return ObjectEvent(type="upsert", kind="Pod", api_version="v1", namespace=ns, name=name, obj=obj)


async def bench_service(url: str, n_pods: int, n_csrs: int, workdir: str) -> list[str]:
    bus = await connect(url, name="bench-watcher", max_wait=10)
    bus.js._timeout = 60.0
    ns = ObjectEvent(
        type="upsert",
        kind="Namespace",
        api_version="v1",
        namespace="",
        name="bench",
        obj={"metadata": {"name": "bench"}},
    )
    await bus.js_publish(subjects.k8s_object("Namespace", "", "bench"), ns)
    info = await bus.js.stream_info("K8S")
    await bus.js_publish(
        subjects.K8S_SYNCED, Synced(watcher="bench", epoch=1, stream_seq=int(info.state.last_seq))
    )
    env = {**os.environ, "NODEMESH_LOG_LEVEL": "warning"}
    proc = subprocess.Popen(  # noqa: ASYNC220  (started once; the bench needs it as a child)
        [
            sys.executable,
            "-m",
            "services.identity",
            "--nats-url",
            url,
            "--data-dir",
            workdir,
            "--svid-ttl",
            "3600",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            try:
                await bus.nc.request("$SRV.PING.nodemesh-identity", b"", timeout=0.2)
                break
            except Exception:
                await asyncio.sleep(0.1)
        waiting: dict[str, asyncio.Future[float]] = {}

        async def on_event(msg: Any) -> None:
            ev = decode(msg.data, IPCacheEvent)
            fut = waiting.pop(ev.entry.pod, None)
            if fut is not None and not fut.done():
                fut.set_result(time.perf_counter())

        sub = await bus.js.subscribe(
            subjects.IPCACHE_EVENTS, ordered_consumer=True, deliver_policy=DeliverPolicy.NEW, cb=on_event
        )
        lat: dict[str, list[float]] = {"A new labels (allocates)": [], "B existing labels (ref only)": []}
        loop = asyncio.get_running_loop()
        # Warm up: the shared identity for B, and the service's first writes.
        for i in range(20):
            name = f"warm-{i}"
            waiting[name] = loop.create_future()
            await bus.js_publish(
                subjects.k8s_object("Pod", "bench", name),
                _pod("bench", name, {"app": "shared"}, f"10.250.0.{i + 1}"),
            )
            await asyncio.wait_for(waiting[name], 30)
        for i in range(n_pods):
            for key, labels in (
                ("A new labels (allocates)", {"app": f"u{i}"}),
                ("B existing labels (ref only)", {"app": "shared"}),
            ):
                name = f"{key[0]}-{i}"
                ip = f"10.{251 if key[0] == 'A' else 252}.{i // 250}.{i % 250 + 1}"
                fut = waiting[name] = loop.create_future()
                t0 = time.perf_counter()
                await bus.js_publish(
                    subjects.k8s_object("Pod", "bench", name), _pod("bench", name, labels, ip)
                )
                lat[key].append((await asyncio.wait_for(fut, 30)) - t0)
        await sub.unsubscribe()
        lines = ["| pod event → ipcache event | p50 | p99 | max |", "|---|---|---|---|"]
        base = statistics.median(lat["A new labels (allocates)"])
        for key, xs in lat.items():
            lines.append(f"| {key} (n={len(xs)}) | {ms(pct(xs, 50))} | {ms(pct(xs, 99))} | {ms(max(xs))} |")
        lines.append(
            f"\nB/A median ratio: {statistics.median(lat['B existing labels (ref only)']) / base:.2f}"
        )

        # CSR → SVID for an identity hosted on node-1 (the shared one).
        kv = await bus.kv("ipcache")
        hosted = decode((await kv.get(ipcache_key("10.250.0.1"))).value or b"", IPCacheEntry).identity
        csrs = []
        for _ in range(n_csrs):
            priv = ec.generate_private_key(ec.SECP256R1())
            csr = (
                x509.CertificateSigningRequestBuilder()
                .subject_name(x509.Name([]))
                .sign(priv, hashes.SHA256())
            )
            csrs.append(csr.public_bytes(serialization.Encoding.PEM).decode())
        subject = subjects.svid_sign("node-1")

        async def sign(c: str) -> float:
            t0 = time.perf_counter()
            await bus.request(subject, SvidRequest(identity=hosted, csr_pem=c), SvidReply, timeout=30)
            return time.perf_counter() - t0

        seq = [await sign(c) for c in csrs]
        sem = asyncio.Semaphore(8)

        async def limited(c: str) -> float:
            async with sem:
                return await sign(c)

        t0 = time.perf_counter()
        conc = await asyncio.gather(*(limited(c) for c in csrs))
        conc_rate = len(csrs) / (time.perf_counter() - t0)
        lines += [
            "",
            "| CSR → SVID | p50 | p99 | throughput |",
            "|---|---|---|---|",
            f"| A sequential (n={len(seq)}) | {ms(pct(seq, 50))} | {ms(pct(seq, 99))} | "
            f"{len(seq) / sum(seq):,.0f}/s |",
            f"| B 8 concurrent (n={len(conc)}) | {ms(pct(conc, 50))} | {ms(pct(conc, 99))} | "
            f"{conc_rate:,.0f}/s ({conc_rate / (len(seq) / sum(seq)):.2f}x A) |",
        ]
        return lines
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        await bus.nc.close()


# --- 4. start-up: a new leader over an existing cluster ------------------------------------------------
async def _startup_once(n_pods: int, batch: bool) -> float:
    with (
        tempfile.TemporaryDirectory(prefix="nm-bench-identity-") as tmp,
        NatsServer(store_dir=f"{tmp}/nats") as nats,
    ):
        bus = await connect(nats.url, name="bench-startup", max_wait=10)
        bus.js._timeout = 60.0
        await provision(bus.js)
        ns = {"metadata": {"name": "bench"}}
        await bus.js_publish(
            subjects.k8s_object("Namespace", "", "bench"),
            ObjectEvent(
                type="upsert", kind="Namespace", api_version="v1", namespace="", name="bench", obj=ns
            ),
        )
        for i in range(n_pods):
            ip = f"10.{100 + i // 62500}.{(i // 250) % 250}.{i % 250 + 1}"
            pod = _pod("bench", f"p{i}", {"app": f"deploy-{i % max(1, n_pods // 4)}"}, ip)
            await bus.js_publish(subjects.k8s_object("Pod", "bench", f"p{i}"), pod)
        info = await bus.js.stream_info("K8S")
        await bus.js_publish(
            subjects.K8S_SYNCED, Synced(watcher="bench", epoch=1, stream_seq=int(info.state.last_seq))
        )
        kv = await bus.kv("ipcache")
        flags = ["--batch-preallocate", "true" if batch else "false", "--log-level", "warning"]
        t0 = time.perf_counter()
        proc = subprocess.Popen(  # noqa: ASYNC220  (the service under test is a child process)
            [
                sys.executable,
                "-m",
                "services.identity",
                "--nats-url",
                nats.url,
                "--data-dir",
                f"{tmp}/id",
                *flags,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            while (await kv.status()).values < n_pods:
                await asyncio.sleep(0.02)
            return time.perf_counter() - t0
        finally:
            proc.terminate()
            proc.wait(20)
            await bus.nc.close()


async def bench_startup(n_pods: int, rounds: int) -> list[str]:
    res: dict[str, list[float]] = defaultdict(list)
    modes = [("A per-pod allocation only (default)", False), ("B atomic-batch pre-allocation first", True)]
    for r in range(rounds):
        for name, batch in modes:
            dt = await _startup_once(n_pods, batch)
            res[name].append(dt)
            print(f"  round {r} {name}: {dt:.2f} s", flush=True)
    base = statistics.median(res[modes[0][0]])
    lines = [
        f"| {n_pods} pods, {n_pods // 4} identities: process start → full ipcache | median | vs A |",
        "|---|---|---|",
    ]
    for name, _ in modes:
        med = statistics.median(res[name])
        lines.append(f"| {name} | {med:.2f} s ({n_pods / med:,.0f} pods/s) | {base / med:.2f}x speed |")
    return lines


async def main() -> None:
    ap = argparse.ArgumentParser(prog="bench.identity")
    ap.add_argument("--sets", type=int, default=4000, help="label sets per allocation round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pods", type=int, default=300)
    ap.add_argument("--csrs", type=int, default=300)
    ap.add_argument("--startup-pods", type=int, default=5000, help="0 skips the start-up comparison")
    ap.add_argument("--only", choices=("alloc", "service", "startup"), default=None)
    args = ap.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="nm-bench-identity-") as tmp,
        NatsServer(store_dir=f"{tmp}/nats") as nats,
    ):
        b = await connect(nats.url, name="bench", max_wait=10)
        await provision(b.js)
        await b.nc.close()
        if args.only in (None, "alloc"):
            print("## allocation: 4 concurrent allocators", flush=True)
            out = await asyncio.to_thread(bench_alloc, nats.url, args.sets, args.rounds)
            print("\n".join(out), flush=True)
        if args.only in (None, "service"):
            print("\n## identity service: pod → ipcache event, CSR → SVID", flush=True)
            out2 = await bench_service(nats.url, args.pods, args.csrs, f"{tmp}/identity")
            print("\n".join(out2), flush=True)
    if args.startup_pods and args.only in (None, "startup"):
        print("\n## start-up: a new leader over an existing cluster", flush=True)
        print("\n".join(await bench_startup(args.startup_pods, args.rounds)), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
