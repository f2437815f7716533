"""ctypes mirrors of ``bpf/include/nm_lb.h`` and one node's pinned LB maps (written op by op).

Every Structure here mirrors a struct of ``nm_lb.h`` field for field
(``tests/datapath/test_privileged_lb.py`` compares sizes and offsets with the loaded program's BTF).
:class:`LbMaps` opens the pins in the node's pin directory by path, so the CLI or a later tool can
read them without BCC; :meth:`LbMaps.write` performs one :data:`~services.datapath.lb.diff.Op`, and
:meth:`LbMaps.read_state` rebuilds the agent's mirror after a restart.
"""

from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Iterator

from services.datapath.bpfsys import KeyNotFound, MapFd
from services.datapath.lb.diff import (
    DelAffMatch,
    DelBackend,
    DelNodePort,
    DelRevNat,
    DelSlot,
    LbState,
    Op,
    PutAffMatch,
    PutBackend,
    PutNodePort,
    PutRevNat,
    PutSlot,
    SlotZero,
    SvcEntry,
)
from services.datapath.lb.model import Backend, Frontend
from services.datapath.maps import be32_to_ip, ip_to_be32

__all__ = [
    "LAYOUT_STRUCTS",
    "LB_PINNED",
    "NS_HOST",
    "NS_POD",
    "STAT_NAMES",
    "AffMatchKey",
    "AffinityKey",
    "AffinityValue",
    "BackendValue",
    "LbMaps",
    "NodePortKey",
    "RevNatValue",
    "RevSkKey",
    "RevSkValue",
    "SvcKey",
    "SvcValue",
]

MAP_SVC = "nm_lb_svc"
MAP_BE = "nm_lb_be"
MAP_REVNAT = "nm_lb_revnat"
MAP_REV_SK = "nm_lb_rev_sk"
MAP_AFFINITY = "nm_lb_affinity"
MAP_AFF_MATCH = "nm_lb_aff_match"
MAP_NETNS = "nm_lb_netns"
MAP_NODEPORTS = "nm_lb_nodeports"

# Must be in sync with NM_LB_NS_* and NM_LB_STAT_* in bpf/include/nm_lb.h
NS_POD = 1
NS_HOST = 2
STAT_NAMES = ("translated", "no_backend", "reverse", "affinity", "inconsistent", "bind_denied")


def _htons(v: int) -> int:
    return int.from_bytes(v.to_bytes(2, "big"), "little")


class _S(ctypes.Structure):
    def to_bytes(self) -> bytes:
        return bytes(self)


class SvcKey(_S):
    # Must be in sync with struct nm_lb_svc_key in bpf/include/nm_lb.h
    _fields_ = [
        ("addr", ctypes.c_uint32),
        ("dport", ctypes.c_uint16),  # network order
        ("slot", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("scope", ctypes.c_uint8),
        ("pad", ctypes.c_uint16),
    ]


class SvcValue(_S):
    # Must be in sync with struct nm_lb_svc_value in bpf/include/nm_lb.h
    _fields_ = [
        ("backend_id", ctypes.c_uint32),
        ("count", ctypes.c_uint16),
        ("rev_nat_id", ctypes.c_uint16),
        ("affinity_timeout", ctypes.c_uint32),
        ("flags", ctypes.c_uint16),
        ("l7_proxy_port", ctypes.c_uint16),  # network order
    ]


class BackendValue(_S):
    # Must be in sync with struct nm_lb_backend in bpf/include/nm_lb.h
    _fields_ = [
        ("addr", ctypes.c_uint32),
        ("port", ctypes.c_uint16),  # network order
        ("proto", ctypes.c_uint8),
        ("state", ctypes.c_uint8),
    ]


class RevNatValue(_S):
    # Must be in sync with struct nm_lb_revnat in bpf/include/nm_lb.h
    _fields_ = [("addr", ctypes.c_uint32), ("port", ctypes.c_uint16), ("pad", ctypes.c_uint16)]


class RevSkKey(_S):
    # Must be in sync with struct nm_lb_rev_sk_key in bpf/include/nm_lb.h
    _fields_ = [
        ("cookie", ctypes.c_uint64),
        ("addr", ctypes.c_uint32),
        ("port", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
    ]


class RevSkValue(_S):
    # Must be in sync with struct nm_lb_rev_sk_value in bpf/include/nm_lb.h
    _fields_ = [("addr", ctypes.c_uint32), ("port", ctypes.c_uint16), ("rev_nat_id", ctypes.c_uint16)]


class AffinityKey(_S):
    # Must be in sync with struct nm_lb_affinity_key in bpf/include/nm_lb.h
    _fields_ = [
        ("netns_cookie", ctypes.c_uint64),
        ("rev_nat_id", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
        ("pad2", ctypes.c_uint32),
    ]


class AffinityValue(_S):
    # Must be in sync with struct nm_lb_affinity_value in bpf/include/nm_lb.h
    _fields_ = [("last_used_ns", ctypes.c_uint64), ("backend_id", ctypes.c_uint32), ("pad", ctypes.c_uint32)]


class AffMatchKey(_S):
    # Must be in sync with struct nm_lb_aff_match_key in bpf/include/nm_lb.h
    _fields_ = [("backend_id", ctypes.c_uint32), ("rev_nat_id", ctypes.c_uint16), ("pad", ctypes.c_uint16)]


class NodePortKey(_S):
    # Must be in sync with struct nm_lb_nodeport_key in bpf/include/nm_lb.h
    _fields_ = [("port", ctypes.c_uint16), ("proto", ctypes.c_uint8), ("pad", ctypes.c_uint8)]


#: C struct name → Python mirror, for the layout test.
LAYOUT_STRUCTS: dict[str, type[ctypes.Structure]] = {
    "nm_lb_svc_key": SvcKey,
    "nm_lb_svc_value": SvcValue,
    "nm_lb_backend": BackendValue,
    "nm_lb_revnat": RevNatValue,
    "nm_lb_rev_sk_key": RevSkKey,
    "nm_lb_rev_sk_value": RevSkValue,
    "nm_lb_affinity_key": AffinityKey,
    "nm_lb_affinity_value": AffinityValue,
    "nm_lb_aff_match_key": AffMatchKey,
    "nm_lb_nodeport_key": NodePortKey,
}

#: pinned map → (key size, value size): a pin with other sizes is from another build (recreated)
LB_PINNED: dict[str, tuple[int, int]] = {
    MAP_SVC: (ctypes.sizeof(SvcKey), ctypes.sizeof(SvcValue)),
    MAP_BE: (4, ctypes.sizeof(BackendValue)),
    MAP_REVNAT: (2, ctypes.sizeof(RevNatValue)),
    MAP_REV_SK: (ctypes.sizeof(RevSkKey), ctypes.sizeof(RevSkValue)),
    MAP_AFFINITY: (ctypes.sizeof(AffinityKey), ctypes.sizeof(AffinityValue)),
    MAP_AFF_MATCH: (ctypes.sizeof(AffMatchKey), 4),
    MAP_NETNS: (8, 4),
    MAP_NODEPORTS: (ctypes.sizeof(NodePortKey), 4),
}


def svc_key(fe: Frontend, slot: int) -> bytes:
    return SvcKey(addr=ip_to_be32(fe.addr), dport=_htons(fe.port), slot=slot, proto=fe.proto).to_bytes()


def _zero_value(z: SlotZero) -> bytes:
    return SvcValue(
        count=z.count,
        rev_nat_id=z.rev_nat_id,
        affinity_timeout=z.affinity_timeout,
        flags=z.flags,
        l7_proxy_port=_htons(z.l7_proxy_port),
    ).to_bytes()


def _u32(v: int) -> bytes:
    return struct.pack("<I", v)


class LbMaps:
    """The pinned LB maps of one node."""

    def __init__(self, directory: str) -> None:
        self.dir = directory
        self.svc = MapFd.pinned(os.path.join(directory, MAP_SVC))
        self.be = MapFd.pinned(os.path.join(directory, MAP_BE))
        self.revnat = MapFd.pinned(os.path.join(directory, MAP_REVNAT))
        self.rev_sk = MapFd.pinned(os.path.join(directory, MAP_REV_SK))
        self.affinity = MapFd.pinned(os.path.join(directory, MAP_AFFINITY))
        self.aff_match = MapFd.pinned(os.path.join(directory, MAP_AFF_MATCH))
        self.netns = MapFd.pinned(os.path.join(directory, MAP_NETNS))
        self.nodeports = MapFd.pinned(os.path.join(directory, MAP_NODEPORTS))

    def close(self) -> None:
        for m in (self.svc, self.be, self.revnat, self.rev_sk, self.affinity, self.aff_match, self.netns,
                  self.nodeports):  # fmt: skip
            m.close()

    # --- writes -------------------------------------------------------------------------------
    def write(self, op: Op) -> None:
        """Perform one op (a delete of something already gone is fine)."""
        try:
            self._write(op)
        except KeyNotFound:
            pass

    def _write(self, op: Op) -> None:
        if isinstance(op, PutSlot):
            if op.slot == 0:
                assert op.zero is not None
                self.svc.update(svc_key(op.frontend, 0), _zero_value(op.zero))
            else:
                self.svc.update(svc_key(op.frontend, op.slot), SvcValue(backend_id=op.backend_id).to_bytes())
        elif isinstance(op, DelSlot):
            self.svc.delete(svc_key(op.frontend, op.slot))
        elif isinstance(op, PutBackend):
            b = op.backend
            v = BackendValue(addr=ip_to_be32(b.addr), port=_htons(b.port), proto=b.proto, state=op.state)
            self.be.update(_u32(op.id), v.to_bytes())
        elif isinstance(op, DelBackend):
            self.be.delete(_u32(op.id))
        elif isinstance(op, PutRevNat):
            rv = RevNatValue(addr=ip_to_be32(op.frontend.addr), port=_htons(op.frontend.port))
            self.revnat.update(struct.pack("<H", op.id), rv.to_bytes())
        elif isinstance(op, DelRevNat):
            self.revnat.delete(struct.pack("<H", op.id))
        elif isinstance(op, PutAffMatch):
            self.aff_match.update(
                AffMatchKey(backend_id=op.backend_id, rev_nat_id=op.rev_nat_id).to_bytes(), _u32(1)
            )
        elif isinstance(op, DelAffMatch):
            self.aff_match.delete(AffMatchKey(backend_id=op.backend_id, rev_nat_id=op.rev_nat_id).to_bytes())
        elif isinstance(op, PutNodePort):
            self.nodeports.update(NodePortKey(port=_htons(op.port), proto=op.proto).to_bytes(), _u32(1))
        elif isinstance(op, DelNodePort):
            self.nodeports.delete(NodePortKey(port=_htons(op.port), proto=op.proto).to_bytes())

    # --- netns: which sockets this node translates --------------------------------------------
    def set_netns(self, cookie: int, kind: int) -> None:
        self.netns.update(struct.pack("<Q", cookie), _u32(kind))

    def del_netns(self, cookie: int) -> None:
        try:
            self.netns.delete(struct.pack("<Q", cookie))
        except KeyNotFound:
            pass

    def netns_items(self) -> Iterator[tuple[int, int]]:
        for k, v in self.netns.items():
            yield struct.unpack("<Q", k)[0], struct.unpack("<I", v)[0]

    # --- reads --------------------------------------------------------------------------------
    def read_state(self) -> LbState:
        """What the maps hold, as the diff's mirror (a restarted agent diffs against this)."""
        st = LbState()
        for k, v in self.svc.items():
            key = SvcKey.from_buffer_copy(k)
            val = SvcValue.from_buffer_copy(v)
            fe = Frontend(be32_to_ip(key.addr), _htons(key.dport), key.proto)
            e = st.svc.setdefault(fe, SvcEntry())
            if key.slot == 0:
                e.zero = SlotZero(
                    val.count, val.rev_nat_id, val.flags, val.affinity_timeout, _htons(val.l7_proxy_port)
                )
            else:
                e.slots[key.slot] = val.backend_id
        for k, v in self.be.items():
            b = BackendValue.from_buffer_copy(v)
            st.backends[struct.unpack("<I", k)[0]] = (
                Backend(be32_to_ip(b.addr), _htons(b.port), b.proto),
                b.state,
            )
        for k, v in self.revnat.items():
            r = RevNatValue.from_buffer_copy(v)
            st.revnat[struct.unpack("<H", k)[0]] = Frontend(be32_to_ip(r.addr), _htons(r.port), 0)
        # the reverse-NAT value has no protocol: take it from the frontend that names the id
        for fe, e in st.svc.items():
            if e.zero is not None:
                rfe = st.revnat.get(e.zero.rev_nat_id)
                if rfe is not None and (rfe.addr, rfe.port) == (fe.addr, fe.port):
                    st.revnat[e.zero.rev_nat_id] = fe
        for k in self.aff_match.keys():
            m = AffMatchKey.from_buffer_copy(k)
            st.aff_match.setdefault(m.rev_nat_id, set()).add(m.backend_id)
        for k in self.nodeports.keys():
            n = NodePortKey.from_buffer_copy(k)
            st.nodeports.add((_htons(n.port), n.proto))
        st.rebuild_index()
        return st
