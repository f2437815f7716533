"""Pure decisions behind conntrack GC and the auth-map reconcile."""

from __future__ import annotations

from nodemesh.messages.auth import AuthEntry
from nodemesh.messages.auth import AuthKey as AuthKeyMsg
from services.datapath.authsync import plan
from services.datapath.conntrack import CtLifetimes, lifetime_s, stale_keys
from services.datapath.maps import AuthKey, CtEntry, CtKey

S = 1_000_000_000
LT = CtLifetimes(tcp=100, tcp_syn=7, tcp_fin=3, any=5)


def _ct(proto: int, tx: int = 0, rx: int = 0, last: int = 0) -> tuple[CtKey, CtEntry]:
    return CtKey(proto=proto), CtEntry(tx_flags_seen=tx, rx_flags_seen=rx, last_seen_ns=last)


def test_lifetime_by_protocol_and_tcp_state() -> None:
    syn, ack, fin, rst = 0x02, 0x10, 0x01, 0x04
    assert lifetime_s(17, _ct(17)[1], LT) == 5
    assert lifetime_s(1, _ct(1)[1], LT) == 5
    assert lifetime_s(6, _ct(6, tx=syn)[1], LT) == 7  # no SYN-ACK yet
    assert lifetime_s(6, _ct(6, tx=syn | ack, rx=syn | ack)[1], LT) == 100
    assert lifetime_s(6, _ct(6, tx=syn | ack | fin, rx=syn | ack)[1], LT) == 3
    assert lifetime_s(6, _ct(6, tx=syn, rx=rst)[1], LT) == 3


def test_stale_keys_only_past_their_lifetime() -> None:
    now = 1000 * S
    udp_old, udp_new = _ct(17, last=now - 6 * S), _ct(17, last=now - 4 * S)
    tcp_est = _ct(6, tx=0x12, rx=0x12, last=now - 50 * S)
    future = _ct(17, last=now + S)  # written after the GC read the clock
    keys = stale_keys([udp_old, udp_new, tcp_est, future], LT, now)
    assert keys == [udp_old[0]]


def test_defines_carry_the_same_values() -> None:
    assert LT.defines() == {
        "NM_CT_LIFETIME_TCP": 100,
        "NM_CT_LIFETIME_TCP_SYN": 7,
        "NM_CT_LIFETIME_TCP_FIN": 3,
        "NM_CT_LIFETIME_ANY": 5,
    }


def _key(k: AuthKeyMsg) -> AuthKey:
    return AuthKey(local_identity=k.local_identity, remote_identity=k.remote_identity,
                   remote_node_id=7 if k.remote_node == "n2" else 0, auth_type=k.auth_type)  # fmt: skip


def test_auth_plan_makes_the_map_equal_the_bucket() -> None:
    now, mono = 10_000.0, 500 * S
    kept = AuthKeyMsg(local_identity=1, remote_identity=2, remote_node="n2")
    new = AuthKeyMsg(local_identity=1, remote_identity=3, remote_node="n1")
    expired = AuthKeyMsg(local_identity=1, remote_identity=4, remote_node="n1")
    revoked = AuthKey(local_identity=1, remote_identity=5, remote_node_id=0, auth_type=1)
    entries = [
        AuthEntry(key=kept, node="n1", state="authenticated", expires=now + 60),
        AuthEntry(key=new, node="n1", state="authenticated", expires=now + 60),
        AuthEntry(key=expired, node="n1", state="authenticated", expires=now - 1),
    ]
    held = {_key(kept).to_bytes(): mono + 60 * S, revoked.to_bytes(): mono + 60 * S}
    writes, deletes = plan(entries, held, _key, now, mono)
    assert writes == {_key(new).to_bytes(): mono + 60 * S}  # kept is unchanged: not rewritten
    assert deletes == [revoked.to_bytes()]  # revoked while nobody listened: its key is gone
