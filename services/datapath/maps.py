"""Python mirrors of the BPF map structs, and typed access to one node's pinned maps.

Every ``ctypes.Structure`` here mirrors a struct in ``bpf/include/nm_maps.h`` field for field;
``tests/datapath/test_privileged_layout.py`` compares sizes and offsets against the BTF of the loaded
program, so a change on one side without the other fails the build. Maps are pinned under
``/sys/fs/bpf/nodemesh/<node>/`` (:func:`pin_dir`) by name (the ``MAP_*`` constants).
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import socket
from collections.abc import Iterator

from services.datapath.bpfsys import KeyNotFound, MapFd

__all__ = [
    "BPFFS_ROOT",
    "CFG_POLICY_REV",
    "DIR_EGRESS",
    "DIR_INGRESS",
    "EP_ENFORCE_EGRESS",
    "EP_ENFORCE_INGRESS",
    "EP_FAIL_CLOSED",
    "EVT_AUTH_REQUIRED",
    "EVT_DROP",
    "EVT_POLICY_VERDICT",
    "EVT_TRACE",
    "LAYOUT_STRUCTS",
    "MAP_AUTH",
    "MAP_CONFIG",
    "MAP_CT",
    "MAP_ENDPOINTS",
    "MAP_IPCACHE",
    "MAP_POLICY",
    "PINNED_MAPS",
    "POLICY_DENY",
    "POLICY_STATIC_PREFIX",
    "STAT_AUTH_SUPPRESSED",
    "STAT_EVENTS",
    "STAT_LOST_EVENTS",
    "STAT_PACKETS",
    "AuthKey",
    "AuthValue",
    "CtEntry",
    "CtKey",
    "EndpointInfo",
    "EndpointKey",
    "Event",
    "IPCacheKey",
    "IPCacheValue",
    "NodeMaps",
    "PolicyKeyC",
    "PolicyValueC",
    "be32_to_ip",
    "ip_to_be32",
    "ipcache_key",
    "pin_dir",
]

BPFFS_ROOT = "/sys/fs/bpf/nodemesh"
MAP_ENDPOINTS = "nm_endpoints"
MAP_IPCACHE = "nm_ipcache"
MAP_POLICY = "nm_policy"
MAP_CT = "nm_ct"
MAP_AUTH = "nm_auth"
MAP_CONFIG = "nm_config"
PINNED_MAPS = (MAP_ENDPOINTS, MAP_IPCACHE, MAP_POLICY, MAP_CT, MAP_AUTH, MAP_CONFIG)

# Constants mirrored from nm_maps.h.
EP_ENFORCE_INGRESS = 1
EP_ENFORCE_EGRESS = 2
EP_FAIL_CLOSED = 4
POLICY_STATIC_PREFIX = 72
POLICY_DENY = 1
CFG_POLICY_REV = 0
STAT_LOST_EVENTS = 0
STAT_EVENTS = 1
STAT_PACKETS = 2
STAT_AUTH_SUPPRESSED = 3
EVT_DROP = 1
EVT_TRACE = 4
EVT_POLICY_VERDICT = 5
EVT_AUTH_REQUIRED = 200
DIR_INGRESS = 0
DIR_EGRESS = 1


def pin_dir(node: str, root: str = BPFFS_ROOT) -> str:
    return os.path.join(root, node)


def ip_to_be32(ip: str) -> int:
    """An IPv4 address as the u32 the kernel sees in network byte order (read natively)."""
    return int.from_bytes(socket.inet_aton(ip), "little")


def be32_to_ip(v: int) -> str:
    return socket.inet_ntoa(v.to_bytes(4, "little"))


def htons(v: int) -> int:
    return socket.htons(v)


class _S(ctypes.Structure):
    def to_bytes(self) -> bytes:
        return bytes(self)

    @classmethod
    def from_raw(cls, raw: bytes) -> _S:
        return cls.from_buffer_copy(raw)


class EndpointKey(_S):
    # Must be in sync with struct nm_endpoint_key in bpf/include/nm_maps.h
    _fields_ = [("ifindex", ctypes.c_uint32)]


class EndpointInfo(_S):
    # Must be in sync with struct nm_endpoint_info in bpf/include/nm_maps.h
    _fields_ = [
        ("identity", ctypes.c_uint32),
        ("ipv4", ctypes.c_uint32),
        ("ep_id", ctypes.c_uint16),
        ("flags", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
    ]


class IPCacheKey(_S):
    # Must be in sync with struct nm_ipcache_key in bpf/include/nm_maps.h
    _fields_ = [("prefixlen", ctypes.c_uint32), ("addr", ctypes.c_uint32)]


class IPCacheValue(_S):
    # Must be in sync with struct nm_ipcache_value in bpf/include/nm_maps.h
    _fields_ = [
        ("identity", ctypes.c_uint32),
        ("node_ip", ctypes.c_uint32),
        ("node_id", ctypes.c_uint16),
        ("flags", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
    ]


class PolicyKeyC(_S):
    # Must be in sync with struct nm_policy_key in bpf/include/nm_maps.h
    _fields_ = [
        ("prefixlen", ctypes.c_uint32),
        ("ep_id", ctypes.c_uint32),
        ("identity", ctypes.c_uint32),
        ("egress", ctypes.c_uint8),
        ("protocol", ctypes.c_uint8),
        ("dport", ctypes.c_uint16),  # network order
    ]


class PolicyValueC(_S):
    # Must be in sync with struct nm_policy_value in bpf/include/nm_maps.h
    _fields_ = [
        ("proxy_port", ctypes.c_uint16),  # network order
        ("flags", ctypes.c_uint8),
        ("auth_type", ctypes.c_uint8),
        ("proto_prefix", ctypes.c_uint8),
        ("port_prefix", ctypes.c_uint8),
        ("pad", ctypes.c_uint16),
    ]


class CtKey(_S):
    # Must be in sync with struct nm_ct_key in bpf/include/nm_maps.h
    _fields_ = [
        ("saddr", ctypes.c_uint32),
        ("daddr", ctypes.c_uint32),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("dir", ctypes.c_uint8),
        ("pad", ctypes.c_uint16),
    ]


class CtEntry(_S):
    # Must be in sync with struct nm_ct_entry in bpf/include/nm_maps.h
    _fields_ = [
        ("created_ns", ctypes.c_uint64),
        ("last_seen_ns", ctypes.c_uint64),
        ("packets", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
        ("policy_rev", ctypes.c_uint32),
        ("remote_identity", ctypes.c_uint32),
        ("remote_node_id", ctypes.c_uint16),
        ("tx_flags_seen", ctypes.c_uint8),
        ("rx_flags_seen", ctypes.c_uint8),
        ("auth_type", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("match_type", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
    ]


class AuthKey(_S):
    # Must be in sync with struct nm_auth_key in bpf/include/nm_maps.h
    _fields_ = [
        ("local_identity", ctypes.c_uint32),
        ("remote_identity", ctypes.c_uint32),
        ("remote_node_id", ctypes.c_uint16),
        ("auth_type", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
    ]


class AuthValue(_S):
    # Must be in sync with struct nm_auth_value in bpf/include/nm_maps.h
    _fields_ = [("expiry_ns", ctypes.c_uint64)]


class Event(_S):
    # Must be in sync with struct nm_event in bpf/include/nm_maps.h
    _fields_ = [
        ("ts_ns", ctypes.c_uint64),
        ("saddr", ctypes.c_uint32),
        ("daddr", ctypes.c_uint32),
        ("src_identity", ctypes.c_uint32),
        ("dst_identity", ctypes.c_uint32),
        ("ifindex", ctypes.c_uint32),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("ep_id", ctypes.c_uint16),
        ("remote_node_id", ctypes.c_uint16),
        ("type", ctypes.c_uint8),
        ("dir", ctypes.c_uint8),
        ("proto", ctypes.c_uint8),
        ("tcp_flags", ctypes.c_uint8),
        ("drop_reason", ctypes.c_uint8),
        ("auth_type", ctypes.c_uint8),
        ("match_type", ctypes.c_uint8),
        ("is_reply", ctypes.c_uint8),
        ("icmp_type", ctypes.c_uint8),
        ("icmp_code", ctypes.c_uint8),
        ("proxy_port", ctypes.c_uint16),
        ("pad2", ctypes.c_uint32),
    ]


#: C struct name → Python mirror, for the layout test.
LAYOUT_STRUCTS: dict[str, type[ctypes.Structure]] = {
    "nm_endpoint_key": EndpointKey,
    "nm_endpoint_info": EndpointInfo,
    "nm_ipcache_key": IPCacheKey,
    "nm_ipcache_value": IPCacheValue,
    "nm_policy_key": PolicyKeyC,
    "nm_policy_value": PolicyValueC,
    "nm_ct_key": CtKey,
    "nm_ct_entry": CtEntry,
    "nm_auth_key": AuthKey,
    "nm_auth_value": AuthValue,
    "nm_event": Event,
}


def ipcache_key(cidr: str) -> IPCacheKey:
    net = ipaddress.IPv4Network(cidr, strict=False)
    return IPCacheKey(prefixlen=net.prefixlen, addr=ip_to_be32(str(net.network_address)))


class NodeMaps:
    """The pinned maps of one node, opened by path (no BCC object needed)."""

    def __init__(self, directory: str) -> None:
        self.dir = directory
        self.endpoints = MapFd.pinned(os.path.join(directory, MAP_ENDPOINTS))
        self.ipcache = MapFd.pinned(os.path.join(directory, MAP_IPCACHE))
        self.policy = MapFd.pinned(os.path.join(directory, MAP_POLICY))
        self.ct = MapFd.pinned(os.path.join(directory, MAP_CT))
        self.auth = MapFd.pinned(os.path.join(directory, MAP_AUTH))
        self.config = MapFd.pinned(os.path.join(directory, MAP_CONFIG))

    def close(self) -> None:
        for m in (self.endpoints, self.ipcache, self.policy, self.ct, self.auth, self.config):
            m.close()

    # --- endpoints ----------------------------------------------------------------------------
    def set_endpoint(self, ifindex: int, info: EndpointInfo) -> None:
        self.endpoints.update(EndpointKey(ifindex=ifindex).to_bytes(), info.to_bytes())

    def del_endpoint(self, ifindex: int) -> None:
        try:
            self.endpoints.delete(EndpointKey(ifindex=ifindex).to_bytes())
        except KeyNotFound:
            pass

    def endpoint_items(self) -> Iterator[tuple[int, EndpointInfo]]:
        for k, v in self.endpoints.items():
            yield EndpointKey.from_buffer_copy(k).ifindex, EndpointInfo.from_buffer_copy(v)

    # --- ipcache ------------------------------------------------------------------------------
    def set_ipcache(self, cidr: str, value: IPCacheValue) -> None:
        self.ipcache.update(ipcache_key(cidr).to_bytes(), value.to_bytes())

    def del_ipcache(self, cidr: str) -> None:
        try:
            self.ipcache.delete(ipcache_key(cidr).to_bytes())
        except KeyNotFound:
            pass

    def ipcache_items(self) -> Iterator[tuple[str, IPCacheValue]]:
        for k, v in self.ipcache.items():
            key = IPCacheKey.from_buffer_copy(k)
            yield f"{be32_to_ip(key.addr)}/{key.prefixlen}", IPCacheValue.from_buffer_copy(v)

    # --- policy -------------------------------------------------------------------------------
    def policy_update(self, key: bytes, value: bytes) -> None:
        self.policy.update(key, value)

    def policy_delete(self, key: bytes) -> None:
        try:
            self.policy.delete(key)
        except KeyNotFound:
            pass

    def policy_items(self) -> dict[bytes, bytes]:
        return dict(self.policy.items())

    def policy_revision(self) -> int:
        raw = self.config.lookup(ctypes.c_uint32(CFG_POLICY_REV).value.to_bytes(4, "little"))
        return int.from_bytes(raw, "little")

    def bump_policy_revision(self) -> int:
        """Tell the programs that policy changed: established flows re-check on their next packet."""
        rev = (self.policy_revision() + 1) & 0xFFFFFFFF
        self.config.update(CFG_POLICY_REV.to_bytes(4, "little"), rev.to_bytes(4, "little"))
        return rev

    # --- auth ---------------------------------------------------------------------------------
    def set_auth(self, key: AuthKey, expiry_ns: int) -> None:
        self.auth.update(key.to_bytes(), AuthValue(expiry_ns=expiry_ns).to_bytes())

    def del_auth(self, key: AuthKey) -> None:
        try:
            self.auth.delete(key.to_bytes())
        except KeyNotFound:
            pass

    def auth_expiry(self, key: AuthKey) -> int:
        """The entry's expiry (CLOCK_MONOTONIC ns), 0 if the map has none."""
        try:
            return int(AuthValue.from_buffer_copy(self.auth.lookup(key.to_bytes())).expiry_ns)
        except KeyNotFound:
            return 0

    def auth_items(self) -> Iterator[tuple[AuthKey, int]]:
        for k, v in self.auth.items():
            yield AuthKey.from_buffer_copy(k), AuthValue.from_buffer_copy(v).expiry_ns

    # --- conntrack ----------------------------------------------------------------------------
    def ct_items(self) -> Iterator[tuple[CtKey, CtEntry]]:
        for k, v in self.ct.items():
            yield CtKey.from_buffer_copy(k), CtEntry.from_buffer_copy(v)

    def ct_delete_many(self, keys: list[CtKey]) -> int:
        """Delete entries (gone meanwhile: not counted); returns how many were deleted."""
        n = 0
        for key in keys:
            try:
                self.ct.delete(key.to_bytes())
                n += 1
            except KeyNotFound:
                pass
        return n

    def ct_delete(self, key: CtKey) -> None:
        try:
            self.ct.delete(key.to_bytes())
        except KeyNotFound:
            pass
