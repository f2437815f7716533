"""authd runs as its least-privileged NATS user (``authd-<node>``, nodemesh.natsauth): CSRs, KV
reads, verdicts, events, KV ``auth`` writes, the list endpoint and the K8S replay all work with
exactly the rights local mode gives it; the datapath's user can signal it."""

from __future__ import annotations

import tempfile
from pathlib import Path

from localcluster.cells import AUTHD, CELLS, DATAPATH
from nodemesh import subjects
from nodemesh.bus import connect
from nodemesh.messages.auth import AuthListReply, AuthListRequest, AuthRequired
from nodemesh.natsauth import local_auth
from nodemesh.streams import provision
from services.authd.manager import kv_key
from testkit.authd_cluster import Cluster, key, poll
from testkit.natsserver import NatsServer
from testkit.spiffe_ca import SpiffeCA
from tests.authd.test_paths import BOTH_AUTH, CLIENT, EGRESS_AUTH, SERVER, _pods


async def test_authd_as_its_own_nats_user(node_addresses: tuple[str, ...]) -> None:
    with tempfile.TemporaryDirectory(prefix="nm-authd-perm-") as tmp:
        config, creds = local_auth(CELLS, ["node-1", "node-2"], tmp)
        with NatsServer(config=config) as server:

            def login(user: str) -> dict[str, str]:
                return {"nats_user": user, "nats_password": creds[user]["password"]}

            admin = await connect(server.url, name="admin", user="admin", password=creds["admin"]["password"])
            await provision(admin.js)
            c = Cluster(admin, server.url, SpiffeCA(), str(Path(tmp)))
            try:
                await c.start()
                await c.add_node("node-1", node_addresses[0])
                await c.add_node("node-2", node_addresses[1])
                await _pods(c)
                await c.put_policy("server-in", BOTH_AUTH)
                await c.put_policy("client-out", EGRESS_AUTH)
                await c.start_authd("node-1", **login(AUTHD.user("node-1")))
                await c.start_authd("node-2", proactive=False, **login(AUTHD.user("node-2")))
                k1, k2 = key(CLIENT, SERVER, "node-2"), key(SERVER, CLIENT, "node-1")
                await poll(lambda: c.seen.grants("node-1", k1), 30, "node-1's proactive verdict")
                await poll(lambda: c.seen.grants("node-2", k2), 30, "node-2's verdict as responder")
                kv = await admin.kv("auth")
                assert (await kv.get(kv_key("node-2", k2))).value
                # The datapath's user may signal its own node's authd.
                dp = await connect(
                    server.url,
                    name="dp",
                    user=DATAPATH.user("node-2"),
                    password=creds[DATAPATH.user("node-2")]["password"],
                )
                await dp.publish(subjects.auth_required("node-2"), AuthRequired(key=k2))
                await dp.nc.flush()
                await poll(
                    lambda: c.manager("node-2").m.signals.labels(outcome="cached")._value.get() >= 1,
                    30,
                    "the signal to arrive",
                )
                listed = await admin.request(subjects.auth_list("node-2"), AuthListRequest(), AuthListReply)
                assert [(e.key, e.state) for e in listed.entries] == [(k2, "authenticated")]
                await dp.nc.close()
            finally:
                await c.stop_all()
                await admin.nc.close()
