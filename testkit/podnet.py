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
