"""A revocation published while the datapath is down is honoured once it is back: the auth map is
reconciled against KV ``auth`` (real nats-server, real BPF, same node and across nodes)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from nodemesh import subjects
from nodemesh.bus import connect
from nodemesh.codec import encode
from nodemesh.messages.auth import AuthEntry, AuthVerdict
from nodemesh.messages.auth import AuthKey as AuthKeyMsg
from nodemesh.policy.model import PolicyKey, PolicyValue
from nodemesh.streams import BUCKET_AUTH, auth_key, provision
from services.datapath.authsync import AuthSync
from services.datapath.maps import AuthKey
from testkit.datapath_node import TPod, ingress_policy
from testkit.natsserver import NatsServer
from testkit.podnet import echo, eventually, servers, tcp_ok, tcp_open, wait_for

from .placement import NODE_IDS, WHERE, Placed

pytestmark = pytest.mark.privileged

AUTH_REQUIRED = 189
ING, TCP = 0, 6


async def until(cond: object, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.05)
    return bool(cond())  # type: ignore[operator]


@pytest.mark.parametrize("where", WHERE)
async def test_privileged_revocation_while_datapath_down_is_honoured(make_node, subnet, where) -> None:  # type: ignore[no-untyped-def]
    def setup() -> tuple[Placed, TPod, TPod]:  # netlink and BCC want no running event loop
        c = Placed(make_node, where)
        return c, c.pod("a", subnet + "2", 1001, on="x"), c.pod("b", subnet + "3", 1002, on="y")

    c, a, b = await asyncio.to_thread(setup)  # a: the server, its node enforces auth
    an = c.node(a)
    c.set_policy(a, ingress_policy({PolicyKey(1002, ING, TCP, 80, 16): PolicyValue(auth_type=1)}))
    me, peer = c.node_name(a), c.node_name(b)
    names = {"node-x": NODE_IDS["x"], "node-y": NODE_IDS["y"]}

    def key_of(k: AuthKeyMsg) -> AuthKey:  # the agent's node ids: 0 for its own node
        nid = 0 if k.remote_node == me else names[k.remote_node]
        return AuthKey(local_identity=k.local_identity, remote_identity=k.remote_identity,
                       remote_node_id=nid, auth_type=k.auth_type)  # fmt: skip

    msg_key = AuthKeyMsg(local_identity=1001, remote_identity=1002, remote_node=peer, auth_type=1)
    bpf_key = key_of(msg_key).to_bytes()
    kv_key = auth_key(me, 1001, 1002, peer, 1)

    def held() -> bool:
        return any(k.to_bytes() == bpf_key for k, _ in an.maps.auth_items())

    with NatsServer() as nats:
        bus = await connect(nats.url, name="authd-and-datapath")
        try:
            await provision(bus.js)
            kv = await bus.kv(BUCKET_AUTH.name)
            # authd granted the pair (as it does: a KV entry next to the core NATS verdict)
            entry = AuthEntry(key=msg_key, node=me, state="authenticated", expires=time.time() + 3600)
            await kv.put(kv_key, encode(entry))
            sync = AuthSync(bus, me, an.maps, key_of)
            task = asyncio.create_task(sync.run())
            assert await until(held)
            with servers(a.ns, tcp=(80,)):
                assert await asyncio.to_thread(eventually, tcp_ok, b.ns, a.ip, 80)
                conn = await asyncio.to_thread(tcp_open, b.ns, a.ip, 80)
                assert await asyncio.to_thread(echo, conn)
                # the datapath agent goes down (programs and pins stay)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await asyncio.to_thread(an.stop_agent)
                # authd revokes meanwhile: the core NATS message reaches nobody, the KV key goes
                await bus.publish(subjects.auth_revoked(me), AuthVerdict(key=msg_key, expires=entry.expires))
                await kv.delete(kv_key)
                await asyncio.sleep(0.2)
                # nobody removed the pinned entry: the established connection still flows
                assert await asyncio.to_thread(echo, conn, b"while-down")
                # back: the map is reconciled against KV auth on its first sync
                await asyncio.to_thread(an.restart_agent)
                assert held()  # the pin survived the restart, still granting
                before = an.drops()
                sync = AuthSync(bus, me, an.maps, key_of)
                task = asyncio.create_task(sync.run())
                assert await until(lambda: sync.reconciles >= 1)
                assert not held() and sync.removed == 1
                # honoured: the established connection is cut, a new one is dropped for want of auth
                assert not await asyncio.to_thread(echo, conn, b"after-restart")
                conn.close()
                assert not await asyncio.to_thread(tcp_ok, b.ns, a.ip, 80)
                assert wait_for(lambda: an.drops().get(AUTH_REQUIRED, 0) > before.get(AUTH_REQUIRED, 0))
                # a later grant comes in through the KV watch as it happens
                entry = AuthEntry(key=msg_key, node=me, state="authenticated", expires=time.time() + 3600)
                await kv.put(kv_key, encode(entry))
                assert await until(held)
                assert await asyncio.to_thread(eventually, tcp_ok, b.ns, a.ip, 80)
                # an entry whose revocation this agent missed while its connection was down goes at
                # the re-sync that follows the reconnect
                follow = asyncio.create_task(sync.follow_reconnects(interval=0.2))
                stale = AuthKey(local_identity=1001, remote_identity=1009, remote_node_id=0, auth_type=1)
                an.maps.set_auth(stale, time.monotonic_ns() + 3600 * 10**9)
                n = sync.reconciles
                await asyncio.to_thread(nats.restart)
                assert await until(lambda: sync.reconciles > n, 30)
                assert not any(k.to_bytes() == stale.to_bytes() for k, _ in an.maps.auth_items())
                assert held()
                for t in (task, follow):
                    t.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await t
        finally:
            await bus.nc.close()
