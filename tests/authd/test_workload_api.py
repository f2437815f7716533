"""The SPIFFE Workload API: py-spiffe's X509Source in a pod gets that pod's SVID and bundle; another
pod gets only its own; a caller that is no pod of the node is denied. Pods are real network
namespaces named as the datapath names them (``nm-*`` under /run/netns)."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator

import grpc
import pytest
from spiffe import WorkloadApiClient
from spiffe._proto import workload_pb2, workload_pb2_grpc

from nodemesh.netns import netns_name
from testkit.authd_cluster import Cluster, poll

POD_A, POD_B = ("10.244.1.21", 1001), ("10.244.1.22", 1006)

DENIED = r"""
from spiffe import WorkloadApiClient
client = WorkloadApiClient()
try:
    client.fetch_x509_svid(timeout=20)
    print("got an SVID")
except Exception as e:
    print("denied" if "PERMISSION_DENIED" in str(e).upper() or "no identity issued" in str(e) else repr(e))
"""

FETCH = r"""
import json, sys
from spiffe import X509Source, TrustDomain
with X509Source(timeout_in_seconds=30) as src:
    ctx = src.get_x509_context()
    svid = ctx.default_svid
    bundle = src.get_bundle_for_trust_domain(TrustDomain(sys.argv[1]))
    print(json.dumps({
        "ids": [str(s.spiffe_id) for s in ctx.x509_svids],
        "roots": len(bundle.x509_authorities) if bundle else 0,
        "has_key": svid.private_key is not None,
    }))
"""


ROTATE = r"""
import sys, time
from spiffe import X509Source
with X509Source(timeout_in_seconds=30) as src:
    first = src.get_x509_context().default_svid.leaf.serial_number
    deadline = time.time() + 40
    while time.time() < deadline:
        if src.get_x509_context().default_svid.leaf.serial_number != first:
            print("rotated")
            sys.exit(0)
        time.sleep(0.1)
print("no rotation")
"""


@pytest.fixture
def pod_netns() -> Iterator[dict[str, str]]:
    """Two pods' network namespaces, named as the datapath names them, one pod address each; plus
    ``pods``: the pod names (unique per run)."""
    token = f"{os.getpid()}-{secrets.token_hex(3)}"
    pods = {"a": f"wl-a-{token}", "b": f"wl-b-{token}"}
    names = {k: netns_name("node-1", "default", p) for k, p in pods.items()}
    names["pod-a"], names["pod-b"] = pods["a"], pods["b"]
    names["c"] = f"nm-{token.replace('-', '')}c"  # an impostor: pod a's address, not pod a's netns
    try:
        for (ip, _), ns in zip((POD_A, POD_B, POD_A), (names["a"], names["b"], names["c"]), strict=True):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
            subprocess.run(["ip", "-n", ns, "addr", "add", f"{ip}/32", "dev", "lo"], check=True)
        yield names
    finally:
        for ns in (names["a"], names["b"], names["c"]):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _fetch_in(ns: str, sock: str, td: str, script: str = FETCH) -> dict[str, object]:
    env = {**os.environ, "SPIFFE_ENDPOINT_SOCKET": f"unix://{sock}"}
    r = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", script, td],
        capture_output=True,
        text=True,
        env=env,
        timeout=90,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    last = r.stdout.strip().splitlines()[-1]
    out: dict[str, object] = json.loads(last) if last.startswith("{") else {"said": last}
    return out


@pytest.mark.privileged
async def test_privileged_x509source_gets_its_own_svid_only(
    cluster: Cluster, pod_netns: dict[str, str]
) -> None:
    c, td = cluster, cluster.ca.trust_domain
    c.ca.ttl = 6.0  # the workload's SVID rotates every ~3 s: the stream must push it
    for ident, app in ((POD_A[1], "client"), (POD_B[1], "other")):
        await c.add_identity(ident, app)
    await c.add_pod(POD_A[0], POD_A[1], "node-1", pod=pod_netns["pod-a"])
    await c.add_pod(POD_B[0], POD_B[1], "node-1", pod=pod_netns["pod-b"])
    sock = os.path.join(c.tmp, "workload.sock")
    await c.start_authd("node-1", workload_api=True, workload_socket=sock)
    await poll(lambda: c.manager("node-1").store.get(POD_B[1]), 30, "SVIDs of both pods' identities")
    loop = asyncio.get_running_loop()

    a = await loop.run_in_executor(None, _fetch_in, pod_netns["a"], sock, td)
    assert a == {"ids": [f"spiffe://{td}/identity/{POD_A[1]}"], "roots": 1, "has_key": True}
    b = await loop.run_in_executor(None, _fetch_in, pod_netns["b"], sock, td)
    assert b["ids"] == [f"spiffe://{td}/identity/{POD_B[1]}"], "pod b gets its own SVID, never pod a's"

    # A namespace that holds pod a's address but is not the one the datapath made for pod a.
    impostor = await loop.run_in_executor(None, _fetch_in, pod_netns["c"], sock, td, DENIED)
    assert impostor == {"said": "denied"}

    # A rotated SVID reaches the workload over the open stream.
    rotated = await loop.run_in_executor(None, _fetch_in, pod_netns["a"], sock, td, ROTATE)
    assert rotated == {"said": "rotated"}

    # The workload's key is not the key authd handshakes with.
    store = c.manager("node-1").store
    wl, hs = store.get(POD_A[1], "workload"), store.get(POD_A[1], "authd")
    assert wl is not None and hs is not None and wl.key_der() != hs.key_der()

    # This test process runs in the host network namespace: no pod, no SVID.
    def host_fetch() -> str:
        client = WorkloadApiClient(f"unix://{sock}")
        try:
            client.fetch_x509_svid(timeout=20)
        except Exception as e:
            return str(e)
        finally:
            client.close()
        return "got an SVID"

    err = await loop.run_in_executor(None, host_fetch)
    assert "PERMISSION_DENIED" in err.upper() or "no identity issued" in err, err

    # The SPIFFE security header is required.
    async with grpc.aio.insecure_channel(f"unix:{sock}") as ch:
        stub = workload_pb2_grpc.SpiffeWorkloadAPIStub(ch)  # type: ignore[no-untyped-call]
        with pytest.raises(grpc.aio.AioRpcError) as ei:
            async for _ in stub.FetchX509SVID(workload_pb2.X509SVIDRequest()):
                break
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
