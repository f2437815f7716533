"""The local API server speaks the Kubernetes REST protocol: CRUD, RVs, status, list/watch, 410, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from localcluster.apiserver.app import LocalApi
from tests.localapi.helpers import Client, pod, until

PODS = "/api/v1/namespaces/default/pods"


async def test_create_get_replace_conflict_and_generation(client: Client) -> None:
    st, p = await client.post(PODS, pod("a", {"app": "x"}))
    assert st == 201
    meta = p["metadata"]
    assert meta["uid"] and meta["creationTimestamp"] and meta["generation"] == 1
    st, again = await client.post(PODS, pod("a"))
    assert st == 409 and again["kind"] == "Status" and again["reason"] == "AlreadyExists"

    # The scheduler binds the pod and writes its status (new RVs); continue from its final state.
    async def scheduled() -> bool:
        _, cur = await client.get(f"{PODS}/a")
        return bool(cur.get("status", {}).get("phase"))

    await until(scheduled, what="scheduled")
    _, p = await client.get(f"{PODS}/a")
    rv1, gen = int(p["metadata"]["resourceVersion"]), p["metadata"]["generation"]

    # A label change is not a spec change: generation stays; RV grows.
    p["metadata"]["labels"]["tier"] = "web"
    st, p2 = await client.put(f"{PODS}/a", p)
    assert st == 200 and p2["metadata"]["generation"] == gen and int(p2["metadata"]["resourceVersion"]) > rv1
    # Replacing with the stale RV is a conflict, as kube-apiserver answers it.
    p["metadata"]["labels"]["tier"] = "db"
    st, err = await client.put(f"{PODS}/a", p)
    assert st == 409 and err["reason"] == "Conflict" and "the object has been modified" in err["message"]
    p2["spec"]["containers"][0]["image"] = "nginx"
    st, p3 = await client.put(f"{PODS}/a", p2)
    assert st == 200 and p3["metadata"]["generation"] == gen + 1
    # generateName
    st, g = await client.post(PODS, {**pod(""), "metadata": {"generateName": "gen-"}})
    assert st == 201 and g["metadata"]["name"].startswith("gen-") and len(g["metadata"]["name"]) == 9
    # A namespace that does not exist
    st, err = await client.post("/api/v1/namespaces/nope/pods", pod("b"))
    assert st == 404 and err["reason"] == "NotFound" and "nope" in err["message"]
    st, got = await client.get(f"{PODS}/a")
    assert st == 200 and got["spec"]["containers"][0]["image"] == "nginx"
    st, err = await client.get(f"{PODS}/missing")
    assert st == 404 and err == {**err, "kind": "Status", "code": 404, "reason": "NotFound"}


async def test_status_subresource_only_touches_status(client: Client) -> None:
    st, p = await client.post(PODS, {**pod("s"), "status": {"phase": "Bogus"}})
    assert st == 201 and p.get("status", {}).get("phase") != "Bogus"  # status is not set on create
    # PATCH …/status: spec in the patch is ignored, status applied.
    st, p = await client.patch(
        f"{PODS}/s/status", {"spec": {"nodeName": "node-9"}, "status": {"podIP": "10.0.0.9"}}
    )
    assert st == 200 and p["status"]["podIP"] == "10.0.0.9" and p["spec"].get("nodeName") != "node-9"
    # PATCH of the main resource: status in the patch is ignored.
    st, p = await client.patch(
        f"{PODS}/s", {"metadata": {"labels": {"l": "1"}}, "status": {"podIP": "1.1.1.1"}}
    )
    assert st == 200 and p["status"]["podIP"] == "10.0.0.9" and p["metadata"]["labels"] == {"l": "1"}
    # PUT …/status with a stale RV conflicts; with a uid precondition that does not match too.
    stale = {**p, "metadata": {**p["metadata"], "resourceVersion": "1"}}
    st, err = await client.put(f"{PODS}/s/status", stale)
    assert st == 409
    st, err = await client.patch(f"{PODS}/s/status", {"metadata": {"uid": "other"}, "status": {"phase": "X"}})
    assert st == 409 and "UID" in err["message"]
    # strategic merge merges conditions by type; JSON patch works too.
    ssm = "application/strategic-merge-patch+json"
    await client.patch(
        f"{PODS}/s/status", {"status": {"conditions": [{"type": "Ready", "status": "False"}]}}, ssm
    )
    st, p = await client.patch(
        f"{PODS}/s/status", {"status": {"conditions": [{"type": "Init", "status": "True"}]}}, ssm
    )
    # (the scheduler may have added PodScheduled before these patches)
    assert [c["type"] for c in p["status"]["conditions"] if c["type"] != "PodScheduled"] == ["Ready", "Init"]
    st, p = await client.patch(
        f"{PODS}/s",
        [{"op": "add", "path": "/metadata/labels/j", "value": "2"}],
        "application/json-patch+json",
    )
    assert st == 200 and p["metadata"]["labels"]["j"] == "2"
    # Kinds without status have no status subresource.
    st, _ = await client.get("/api/v1/namespaces/default/configmaps/x/status")
    assert st == 404


async def test_list_selectors_and_watch_in_rv_order_with_bookmarks(client: Client) -> None:
    await client.post(PODS, pod("w1", {"app": "a"}, node="node-1"))
    await client.post(PODS, pod("w2", {"app": "b"}, node="node-2"))
    await until(lambda: _settled(client), what="scheduler done")
    st, lst = await client.get(f"{PODS}?labelSelector=app%3Da")
    assert st == 200 and lst["kind"] == "PodList" and [i["metadata"]["name"] for i in lst["items"]] == ["w1"]
    start = lst["metadata"]["resourceVersion"]
    st, lst = await client.get("/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-2")
    assert [i["metadata"]["name"] for i in lst["items"]] == ["w2"]
    st, lst = await client.get(f"{PODS}?labelSelector=app+in+(a,b),!gone")
    assert len(lst["items"]) == 2
    st, err = await client.get(f"{PODS}?fieldSelector=spec.bogus%3D1")
    assert st == 400 and err["reason"] == "BadRequest"

    await client.patch(f"{PODS}/w1", {"metadata": {"labels": {"v": "2"}}})
    await client.delete(f"{PODS}/w2")
    await client.post(PODS, pod("w3", {"app": "a"}))
    events = await client.watch(
        f"{PODS}?watch=1&resourceVersion={start}&allowWatchBookmarks=true&timeoutSeconds=20",
        lambda evs: any(e["type"] == "BOOKMARK" for e in evs),
    )
    changes = [e for e in events if e["type"] != "BOOKMARK"]
    # The scheduler also writes (status of w3), so look at the first event per pod.
    first = {}
    for e in changes:
        first.setdefault(e["object"]["metadata"]["name"], e["type"])
    assert first == {"w1": "MODIFIED", "w2": "DELETED", "w3": "ADDED"}
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in changes]
    assert rvs == sorted(rvs) and rvs[0] > int(start)
    bookmark = next(e for e in events if e["type"] == "BOOKMARK")
    assert (
        bookmark["object"]["kind"] == "Pod"
        and int(bookmark["object"]["metadata"]["resourceVersion"]) >= rvs[-1]
    )
    # A label-filtered watch: an object that stops matching is a DELETED for that watcher.
    await until(lambda: _settled(client), what="scheduler done")
    st, lst = await client.get(f"{PODS}?labelSelector=app%3Da")
    rv = lst["metadata"]["resourceVersion"]
    await client.patch(f"{PODS}/w1", {"metadata": {"labels": {"app": "c"}}})
    events = await client.watch(
        f"{PODS}?watch=1&resourceVersion={rv}&labelSelector=app%3Da", lambda evs: True
    )
    assert events[0]["type"] == "DELETED" and events[0]["object"]["metadata"]["name"] == "w1"


async def _settled(client: Client) -> bool:
    """Every pod has been scheduled and given a phase (the controllers' writes are done)."""
    _, lst = await client.get(PODS)
    return all(p.get("status", {}).get("phase") for p in lst["items"])


async def test_watch_from_expired_rv_gets_410_error_event(client: Client, api: LocalApi) -> None:
    for i in range(3):
        await client.post(
            "/api/v1/namespaces/default/configmaps",
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"c{i}"}},
        )
    api.store.compact()
    await client.post(
        "/api/v1/namespaces/default/configmaps",
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "after"}},
    )
    events = await client.watch(
        "/api/v1/namespaces/default/configmaps?watch=1&resourceVersion=2", lambda e: True
    )
    assert events[0]["type"] == "ERROR"
    status = events[0]["object"]
    assert status["kind"] == "Status" and status["code"] == 410 and status["reason"] == "Expired"
    assert status["message"].startswith("too old resource version: 2")
    # Watching from the compaction point still works.
    events = await client.watch(
        f"/api/v1/namespaces/default/configmaps?watch=1&resourceVersion={api.store.floor}", lambda e: True
    )
    assert events[0]["type"] == "ADDED" and events[0]["object"]["metadata"]["name"] == "after"


async def test_restart_keeps_objects_and_resource_versions(tmp_path: Path) -> None:
    a = LocalApi(tmp_path, nodes=1)
    await a.start()
    async with aiohttp.ClientSession() as s:
        c = Client(a.url, s)
        _, p = await c.post(PODS, pod("keep", node="node-1"))
        _, lst = await c.get("/api/v1/pods")
    rv_before = int(lst["metadata"]["resourceVersion"])
    await a.stop()
    b = LocalApi(tmp_path, nodes=1)
    await b.start()
    try:
        async with aiohttp.ClientSession() as s:
            c = Client(b.url, s)
            st, got = await c.get(f"{PODS}/keep")
            assert st == 200 and got["metadata"]["uid"] == p["metadata"]["uid"]
            _, lst = await c.get("/api/v1/pods")
            assert int(lst["metadata"]["resourceVersion"]) == rv_before
            _, new = await c.post(PODS, pod("new", node="node-1"))
            assert int(new["metadata"]["resourceVersion"]) > rv_before
            _, classes = await c.get("/apis/gateway.networking.k8s.io/v1/gatewayclasses")
            assert sorted(i["metadata"]["name"] for i in classes["items"]) == ["cilium", "nodemesh"]
    finally:
        await b.stop()


async def test_bad_input_gets_status_errors_and_server_keeps_running(client: Client) -> None:
    st, err = await client.call("POST", PODS, raw=b"{not json")
    assert st == 400 and err["kind"] == "Status" and err["reason"] == "BadRequest"
    st, err = await client.get("/apis/example.com/v1/namespaces/default/widgets")
    assert st == 404 and err["kind"] == "Status"
    st, err = await client.call(
        "POST", "/api/v1/namespaces/default/configmaps", raw=b'{"a":"' + b"x" * (4 << 20) + b'"}'
    )
    assert st == 413 and err["reason"] == "RequestEntityTooLarge"
    st, err = await client.post(PODS, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}})
    assert st == 400
    st, err = await client.post(PODS, pod("Bad_Name"))
    assert (
        st == 422 and err["reason"] == "Invalid" and err["details"]["causes"][0]["field"] == "metadata.name"
    )
    st, err = await client.post(PODS, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "nospec"}})
    assert st == 422 and err["reason"] == "Invalid"  # schema validation (validation) rejects it
    st, err = await client.post(PODS, [1, 2])
    assert st == 400
    st, err = await client.patch(f"{PODS}/none", {"x": 1}, "text/plain")
    assert st == 415
    st, err = await client.get(f"{PODS}?watch=1&resourceVersion=abc")
    assert st == 200 and "invalid resourceVersion" in err["object"]["message"]
    st, _ = await client.post(PODS, pod("fine"))
    assert st == 201


def test_runs_as_a_process(tmp_path: Path) -> None:
    """``python -m localcluster.apiserver`` serves the protocol and stops cleanly on SIGTERM."""
    import json
    import subprocess
    import sys
    import urllib.request

    from testkit.natsserver import free_port

    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "localcluster.apiserver",
            "--data-dir",
            str(tmp_path),
            "--port",
            str(port),
            "--nodes",
            "3",
            "--log-format",
            "text",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for _ in range(50):  # log lines may come first
            lines.append(proc.stdout.readline().decode())
            if "listening on" in lines[-1]:
                break
        assert f"listening on http://127.0.0.1:{port}" in lines[-1], lines
        # It made its bearer token (0600) at start; requests carry it (tests/security: without, 401).
        token = (tmp_path / "api" / "token").read_text().strip()
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/v1/nodes", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            nodes = json.loads(r.read())
        assert [n["metadata"]["name"] for n in nodes["items"]] == ["node-1", "node-2", "node-3"]
        assert nodes["items"][2]["spec"]["podCIDR"] == "10.244.3.0/24"
    finally:
        proc.terminate()
        assert proc.wait(15) == 0
        if proc.stdout is not None:
            proc.stdout.close()
    assert (tmp_path / "api" / "store.db").exists()


async def test_paginated_list_is_a_consistent_snapshot(client: Client, api: LocalApi) -> None:
    cms = "/api/v1/namespaces/default/configmaps"
    for i in range(5):
        await client.post(cms, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"p{i}"}})
    st, page = await client.get(f"{cms}?limit=2")
    assert st == 200 and [i["metadata"]["name"] for i in page["items"]] == ["p0", "p1"]
    rv, token = page["metadata"]["resourceVersion"], page["metadata"]["continue"]
    assert page["metadata"]["remainingItemCount"] == 3
    # Changes between pages do not show: the pages are one snapshot at one resourceVersion.
    await client.delete(f"{cms}/p3")
    await client.post(cms, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "p9"}})
    names = []
    while token:
        st, page = await client.get(f"{cms}?limit=2&continue={token}")
        assert st == 200 and page["metadata"]["resourceVersion"] == rv
        names += [i["metadata"]["name"] for i in page["items"]]
        token = page["metadata"].get("continue")
    assert names == ["p2", "p3", "p4"]
    st, err = await client.get(f"{cms}?limit=2&continue=bogus")
    assert st == 410 and err["reason"] == "Expired"


async def test_service_defaults_and_cluster_ip_allocation(client: Client) -> None:
    svcs = "/api/v1/namespaces/default/services"

    def svc(name: str, **spec: Any) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name},
            "spec": {"selector": {"app": name}, "ports": [{"port": 80}], **spec},
        }

    _, a = await client.post(svcs, svc("a"))
    _, b = await client.post(svcs, svc("b"))
    _, h = await client.post(svcs, svc("h", clusterIP="None"))
    assert a["spec"]["type"] == "ClusterIP" and a["spec"]["ports"] == [
        {"port": 80, "protocol": "TCP", "targetPort": 80}
    ]
    assert a["spec"]["clusterIP"] == "10.96.0.2" and a["spec"]["clusterIPs"] == ["10.96.0.2"]
    assert b["spec"]["clusterIP"] == "10.96.0.3" and h["spec"]["clusterIP"] == "None"
    # A replace that omits clusterIP keeps the allocated one.
    st, a2 = await client.put(f"{svcs}/a", svc("a"))
    assert st == 200 and a2["spec"]["clusterIP"] == "10.96.0.2"
    # NodePort / LoadBalancer: a nodePort per port, kept on replace, never one another Service has
    _, n = await client.post(
        svcs, svc("n", type="NodePort", ports=[{"port": 80}, {"port": 81, "nodePort": 30000}])
    )
    assert [p["nodePort"] for p in n["spec"]["ports"]] == [30001, 30000]
    _, lb = await client.post(svcs, svc("lb", type="LoadBalancer"))
    assert lb["spec"]["ports"][0]["nodePort"] == 30002
    st, n2 = await client.put(f"{svcs}/n", svc("n", type="NodePort", ports=[{"port": 80}, {"port": 81}]))
    assert st == 200 and [p["nodePort"] for p in n2["spec"]["ports"]] == [30001, 30000]
    _, no = await client.post(svcs, svc("no", type="LoadBalancer", allocateLoadBalancerNodePorts=False))
    assert "nodePort" not in no["spec"]["ports"][0] and "nodePort" not in a["spec"]["ports"][0]


async def test_corrupt_stored_row_is_skipped_not_fatal(tmp_path: Path) -> None:
    import sqlite3

    a = LocalApi(tmp_path, nodes=1)
    await a.start()
    await a.stop()
    db = sqlite3.connect(tmp_path / "api" / "store.db")
    db.execute("INSERT INTO objects VALUES ('ConfigMap', 'default', 'bad', ?)", (b"{not json",))
    db.commit()
    db.close()
    b = LocalApi(tmp_path, nodes=1)
    await b.start()
    try:
        async with aiohttp.ClientSession() as s:
            c = Client(b.url, s)
            st, _ = await c.get("/api/v1/namespaces/default/configmaps/bad")
            assert st == 404
            st, _ = await c.post(
                "/api/v1/namespaces/default/configmaps",
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "bad"}},
            )
            assert st == 201  # the corrupt row is replaced by a good object
    finally:
        await b.stop()
