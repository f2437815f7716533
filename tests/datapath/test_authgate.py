"""What a new pod waits for before its workload starts (services/datapath/authgate.py): the auth
entries its own policy needs on its node, those local endpoints' policies need toward it, and the
grants other nodes' authds make for their endpoints' policies toward it — the pairs computed as
authd computes them."""

from __future__ import annotations

import asyncio

from nodemesh.messages.auth import AuthKey
from nodemesh.messages.identity import Identity
from nodemesh.policy.incremental import PolicyEngine
from nodemesh.policy.model import AuthPair
from services.authd.policy import PolicyPairs
from services.datapath.authgate import CONDITION, Need, needs, wait

SERVER, CLIENT, OTHER = 1001, 1002, 1003
IDS = {
    SERVER: ["k8s:app=server", "k8s:io.kubernetes.pod.namespace=default"],
    CLIENT: ["k8s:app=client", "k8s:role=caller", "k8s:io.kubernetes.pod.namespace=default"],
    OTHER: ["k8s:app=other", "k8s:io.kubernetes.pod.namespace=default"],
}
SEED = {  # the seed's policy: mutual auth and HTTP rules in one rule
    "kind": "CiliumNetworkPolicy",
    "metadata": {"name": "seed", "namespace": "default"},
    "spec": {
        "endpointSelector": {"matchLabels": {"app": "server"}},
        "ingress": [
            {
                "fromEndpoints": [{"matchLabels": {"role": "caller"}}],
                "authentication": {"mode": "required"},
                "toPorts": [{"ports": [{"port": "8080"}], "rules": {"http": [{"method": "GET"}]}}],
            }
        ],
    },
}


def _engine(*policies: dict[str, object]) -> PolicyEngine:
    eng = PolicyEngine()
    for i, labels in IDS.items():
        eng.upsert_identity(i, labels)
    for p in policies:
        eng.upsert_policy(p)
    return eng


def _key(local: int, remote: int, node: str) -> AuthKey:
    return AuthKey(local_identity=local, remote_identity=remote, remote_node=node, auth_type=1)


def test_pairs_toward_a_peer_are_what_the_peers_authd_authenticates() -> None:
    eng = _engine(SEED)
    assert eng.auth_pairs_toward(CLIENT, [SERVER, OTHER]) == {AuthPair(SERVER, CLIENT, 1)}
    assert eng.auth_pairs_toward(OTHER, [SERVER]) == set()  # not a caller: dropped at L3, no auth
    assert eng.auth_pairs_toward(CLIENT, [OTHER]) == set()  # OTHER's policy requires nothing
    assert eng.auth_pairs_toward(4242, [SERVER]) == set()  # labels not known yet
    # the same pairs as authd's engine (which holds every identity of its node as an endpoint)
    authd, _ = PolicyPairs().compute([SEED], [Identity(id=i, labels=ls) for i, ls in IDS.items()], None)
    assert {p for p in authd if p[1] == CLIENT} == {
        (p.local, p.remote, p.auth_type) for p in eng.auth_pairs_toward(CLIENT, IDS)
    }
    deny = {
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": "deny", "namespace": "default"},
        "spec": {
            "endpointSelector": {"matchLabels": {"app": "server"}},
            "ingressDeny": [{"fromEndpoints": [{"matchLabels": {"app": "client"}}]}],
        },
    }
    assert _engine(SEED, deny).auth_pairs_toward(CLIENT, [SERVER]) == set()  # deny wins: no auth


def test_a_new_client_waits_for_the_servers_node_grant_and_a_new_server_for_its_own_map() -> None:
    nodes = ["n1", "n2", "n3"]
    # a new client on n1, the server on n2 (and on n1): n2's grant in KV, n1's own map entry
    local = [AuthPair(SERVER, CLIENT, 1)]
    remote = [AuthPair(SERVER, CLIENT, 1)]
    at = {SERVER: frozenset({"n1", "n2", "n9"}), CLIENT: frozenset({"n1"})}  # n9: not a known node
    got = needs("n1", CLIENT, local, remote, at, nodes)
    assert got == {Need("n1", _key(SERVER, CLIENT, "n1")), Need("n2", _key(SERVER, CLIENT, "n1"))}
    # a new server on n2 whose callers run on n1 and n2: its own map, one entry per caller's node
    at = {SERVER: frozenset({"n2"}), CLIENT: frozenset({"n1", "n2"})}
    got = needs("n2", SERVER, [AuthPair(SERVER, CLIENT, 1)], [], at, nodes)
    assert got == {Need("n2", _key(SERVER, CLIENT, "n1")), Need("n2", _key(SERVER, CLIENT, "n2"))}
    # reserved and CIDR identities are never authenticated, so never waited for
    assert needs("n1", CLIENT, [AuthPair(CLIENT, 2, 1), AuthPair(CLIENT, 1 << 24, 1)], [], at, nodes) == set()
    assert needs("n1", 2, local, remote, at, nodes) == set()


async def test_wait_until_every_need_is_met_or_the_bound() -> None:
    held: set[AuthKey] = set()
    want = {Need("me", _key(SERVER, CLIENT, "n2"))}
    state: dict[str, set[Need] | None] = {"needs": None}  # identity not known yet

    async def arrive() -> None:
        await asyncio.sleep(0.1)
        state["needs"] = want
        await asyncio.sleep(0.1)
        held.add(_key(SERVER, CLIENT, "n2"))

    task = asyncio.create_task(arrive())
    res = await wait(lambda: state["needs"], lambda k: k in held, None, "me", 30)
    await task
    assert res.ready and res.needs == 1
    assert res.condition()["type"] == CONDITION and res.condition()["status"] == "True"
    # nothing arrives: the workload starts after the bound, and the pod's condition names what is missing
    res = await wait(lambda: want, lambda k: False, None, "me", 0.2)
    assert not res.ready and res.missing == ["me:1001->1002@n2/1"]
    assert res.condition()["status"] == "False" and res.condition()["reason"] == "AuthTimeout"
    res = await wait(lambda: None, lambda k: False, None, "me", 0.1)
    assert not res.ready and res.condition()["reason"] == "IdentityTimeout"
    # no auth required: no wait at all
    assert (await wait(lambda: set(), lambda k: False, None, "me", 30)).condition()[
        "message"
    ] == "no auth required"
