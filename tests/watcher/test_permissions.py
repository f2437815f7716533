"""The watcher works as the least-privilege NATS user ``watcher`` (nodemesh.natsauth), as in local mode."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from localcluster.apiserver.app import LocalApi
from localcluster.cells import CELLS
from nodemesh import subjects
from nodemesh.bus import connect
from nodemesh.k8scache import K8sCache
from nodemesh.kinds import by_kind
from nodemesh.messages.k8s import StatusPatch
from nodemesh.natsauth import local_auth
from testkit.natsserver import NatsServer
from tests.localapi.helpers import until
from tests.watcher.harness import InProcessWatcher, converged


async def test_watcher_as_its_nats_user(
    tmp_path: Path, api: LocalApi, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="nodemesh.bus")
    config, creds = local_auth(CELLS, ["node-1"], str(tmp_path / "cluster"))
    pod_kind = by_kind("Pod")
    api.store.create(
        pod_kind,
        {
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c", "image": "x"}]},
        },
    )
    with NatsServer(config=config) as server:
        server.provision("admin", creds["admin"]["password"])  # the admin step; the watcher only waits
        w = await InProcessWatcher(
            server.url, api.url, "w", nats_user="watcher", nats_password=creds["watcher"]["password"]
        ).start()
        admin = await connect(
            server.url, name="admin", user="admin", password=creds["admin"]["password"], max_wait=10
        )
        cache = K8sCache(admin)
        try:
            await cache.start()
            await cache.wait_synced(30)
            await converged(api, cache)
            api.store.create(by_kind("ConfigMap"), {"metadata": {"name": "later", "namespace": "default"}})
            await converged(api, cache)
            await admin.publish(
                subjects.k8s_node_status("node-1", "Pod", "default", "p"),
                StatusPatch(
                    kind="Pod",
                    api_version="v1",
                    namespace="default",
                    name="p",
                    status={"podIP": "10.244.1.3"},
                ),
            )
            await until(
                lambda: (
                    (api.store.get(pod_kind, "default", "p").get("status") or {}).get("podIP") == "10.244.1.3"
                ),
                what="status patch applied",
            )
        finally:
            await cache.stop()
            await admin.nc.close()
            await w.stop()
    violations = [r.getMessage() for r in caplog.records if "permission" in r.getMessage().lower()]
    assert violations == []
