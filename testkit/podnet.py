"""Test helpers: TCP/UDP echo servers and clients and ICMP echo, each from inside a pod's netns."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator

from services.datapath.pods.netns import netns_socket


class Servers:
    """TCP and UDP echo servers in one netns, on the given ports (threads, closed on exit)."""

    def __init__(self, ns: str, tcp: tuple[int, ...] = (), udp: tuple[int, ...] = ()) -> None:
        self.socks: list[socket.socket] = []
        self.stop = False
        for port in tcp:
            s = netns_socket(ns)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", port))
            s.listen(64)
            s.settimeout(0.2)
            self.socks.append(s)
            threading.Thread(target=self._tcp, args=(s,), daemon=True).start()
        for port in udp:
            s = netns_socket(ns, type=socket.SOCK_DGRAM)
            s.bind(("0.0.0.0", port))
            s.settimeout(0.2)
            self.socks.append(s)
            threading.Thread(target=self._udp, args=(s,), daemon=True).start()

    def _tcp(self, s: socket.socket) -> None:
        while not self.stop:
            try:
                c, _ = s.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._echo, args=(c,), daemon=True).start()

    def _echo(self, c: socket.socket) -> None:
        c.settimeout(30)
        with contextlib.suppress(OSError), c:
            while not self.stop:
                data = c.recv(4096)
                if not data:
                    return
                c.sendall(data)

    def _udp(self, s: socket.socket) -> None:
        while not self.stop:
            try:
                data, addr = s.recvfrom(4096)
            except (TimeoutError, OSError):
                continue
            with contextlib.suppress(OSError):
                s.sendto(data, addr)

    def close(self) -> None:
        self.stop = True
        for s in self.socks:
            s.close()


@contextlib.contextmanager
def servers(ns: str, tcp: tuple[int, ...] = (), udp: tuple[int, ...] = ()) -> Iterator[Servers]:
    s = Servers(ns, tcp, udp)
    try:
        yield s
    finally:
        s.close()


def tcp_ok(ns: str, ip: str, port: int, timeout: float = 1.0) -> bool:
    """Connect from ``ns`` and get an echo back."""
    s = netns_socket(ns)
    s.settimeout(timeout)
    try:
        s.connect((ip, port))
        s.sendall(b"ping")
        return s.recv(16) == b"ping"
    except OSError:
        return False
    finally:
        s.close()


def tcp_open(ns: str, ip: str, port: int, timeout: float = 2.0) -> socket.socket:
    s = netns_socket(ns)
    s.settimeout(timeout)
    s.connect((ip, port))
    return s


def echo(s: socket.socket, payload: bytes = b"again") -> bool:
    try:
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = s.recv(4096)
            if not chunk:
                return False
            got += chunk
        return got == payload
    except OSError:
        return False


def udp_ok(ns: str, ip: str, port: int, timeout: float = 1.0) -> bool:
    s = netns_socket(ns, type=socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.sendto(b"hello", (ip, port))
        data, _ = s.recvfrom(64)
        return data == b"hello"
    except OSError:
        return False
    finally:
        s.close()


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return int(~total & 0xFFFF)


def ping_ok(ns: str, ip: str, timeout: float = 1.0) -> bool:
    """One ICMP echo request from ``ns`` (raw socket); True if the matching reply arrives."""
    s = netns_socket(ns, type=socket.SOCK_RAW, proto=socket.IPPROTO_ICMP)
    ident = (os.getpid() ^ threading.get_ident()) & 0xFFFF
    hdr = struct.pack("!BBHHH", 8, 0, 0, ident, 1)
    payload = b"nodemesh"
    pkt = struct.pack("!BBHHH", 8, 0, _csum(hdr + payload), ident, 1) + payload
    deadline = time.monotonic() + timeout
    try:
        s.sendto(pkt, (ip, 0))
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            s.settimeout(left)
            data, addr = s.recvfrom(1024)
            ihl = (data[0] & 0x0F) * 4
            typ, _code, _c, rid, _seq = struct.unpack("!BBHHH", data[ihl : ihl + 8])
            if typ == 0 and rid == ident and addr[0] == ip:
                return True
    except OSError:
        return False
    finally:
        s.close()


def wait_for(cond: object, timeout: float = 15.0, interval: float = 0.05) -> bool:
    """Poll ``cond()`` until true (generous timeout; no timing assertions)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(interval)
    return bool(cond())  # type: ignore[operator]


def eventually(check: object, *args: object, timeout: float = 20.0) -> bool:
    """An allow check that tolerates a loaded machine: retry ``check(*args)`` until it succeeds.

    Deny checks stay single-shot and are backed by the drop counter for the expected reason."""
    return wait_for(lambda: check(*args), timeout=timeout, interval=0.2)  # type: ignore[operator]


def _ip_header(src: str, dst: str, proto: int, payload_len: int) -> bytes:
    """IPv4 header, checksum and id left 0 (the kernel fills both for IP_HDRINCL sockets)."""
    return struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + payload_len, 0, 0x4000, 64, proto, 0,
        socket.inet_aton(src), socket.inet_aton(dst),
    )  # fmt: skip


def send_raw_ip(ns: str, src: str, dst: str, proto: int, payload: bytes) -> None:
    """Send one IPv4 packet from ``ns`` (``""``: the host) with any source address (IP_HDRINCL)."""
    raw = socket.SOCK_RAW
    s = netns_socket(ns, type=raw, proto=socket.IPPROTO_RAW) if ns else socket.socket(type=raw, proto=255)
    try:
        s.sendto(_ip_header(src, dst, proto, len(payload)) + payload, (dst, 0))
    finally:
        s.close()


def udp_spoofed(ns: str, src: str, dst: str, sport: int, dport: int, data: bytes = b"spoofed") -> None:
    """One UDP datagram from ``ns`` claiming source ``src`` (UDP checksum 0: none, legal in IPv4)."""
    send_raw_ip(ns, src, dst, socket.IPPROTO_UDP, struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data)


def icmp_error(ns: str, src: str, dst: str, quoted: tuple[str, str, int, int, int]) -> None:
    """A crafted ICMP destination-unreachable (port) from ``ns`` (``src`` → ``dst``) quoting a packet
    ``quoted`` = (saddr, daddr, proto, sport, dport) — the way a host reports a closed port."""
    qs, qd, qproto, qsport, qdport = quoted
    inner = _ip_header(qs, qd, qproto, 8) + struct.pack("!HHHH", qsport, qdport, 8, 0)
    body = struct.pack("!BBHI", 3, 3, 0, 0) + inner
    body = struct.pack("!BBHI", 3, 3, _csum(body), 0) + inner
    send_raw_ip(ns, src, dst, socket.IPPROTO_ICMP, body)


class Listener:
    """A UDP socket in ``ns`` that records what arrives (datagrams and ICMP errors on a connected
    socket, as ``ConnectionRefusedError``)."""

    def __init__(self, ns: str, port: int = 0) -> None:
        self.sock = netns_socket(ns, type=socket.SOCK_DGRAM)
        self.sock.bind(("0.0.0.0", port))
        self.port = int(self.sock.getsockname()[1])

    def recv(self, timeout: float = 1.0) -> bytes | None:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(4096)
        except (TimeoutError, BlockingIOError):
            return None

    def close(self) -> None:
        self.sock.close()


def icmp_listener(ns: str) -> socket.socket:
    """A raw ICMP socket in ``ns``: sees every ICMP packet that reaches the pod."""
    s = netns_socket(ns, type=socket.SOCK_RAW, proto=socket.IPPROTO_ICMP)
    s.settimeout(0.2)
    return s


def icmp_seen(s: socket.socket, typ: int, timeout: float = 1.0, quoted_dport: int = 0) -> bool:
    """Whether an ICMP packet of ``typ`` arrives on ``s`` within ``timeout`` (an error quoting a
    packet to ``quoted_dport``, if given)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = s.recv(2048)
        except (TimeoutError, BlockingIOError):
            continue
        ihl = (data[0] & 0x0F) * 4
        if data[ihl] != typ:
            continue
        inner = data[ihl + 8 :]
        if not quoted_dport:
            return True
        qihl = (inner[0] & 0x0F) * 4 if inner else 0
        if len(inner) >= qihl + 4 and struct.unpack("!H", inner[qihl + 2 : qihl + 4])[0] == quoted_dport:
            return True
    return False


def udp_refused(ns: str, ip: str, port: int, timeout: float = 0.5) -> bool:
    """Send to a closed UDP port from a connected socket in ``ns``: True once the peer's ICMP
    port-unreachable comes back (the kernel reports it as ECONNREFUSED)."""
    s = netns_socket(ns, type=socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.connect((ip, port))
        s.send(b"anyone?")
        s.recv(64)
        return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    finally:
        s.close()
