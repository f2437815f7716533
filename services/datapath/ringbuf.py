"""A consumer for a BPF ring buffer map (``BPF_MAP_TYPE_RINGBUF``) through mmap and epoll.

The same protocol as libbpf's ``ring_buffer__poll``: the consumer position lives in a read-write
page at offset 0, the producer position and the data (mapped twice back to back, so a record never
wraps) read-only after it. Each record has an 8-byte header whose length word carries a BUSY bit
(still being written: stop here) and a DISCARD bit (skip it). This lets the agent read events from
the fd the compile step handed over, without BCC in the process.
"""

from __future__ import annotations

import mmap
import select
import struct
from collections.abc import Callable

from services.datapath.bpfsys import MapFd

__all__ = ["RingBuf"]

_BUSY = 1 << 31
_DISCARD = 1 << 30
_HDR = 8
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


class RingBuf:
    def __init__(self, m: MapFd) -> None:
        size = m.max_entries  # the data area, a power of two
        page = mmap.PAGESIZE
        self._mask = size - 1
        self._page = page
        self._cons = mmap.mmap(m.fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._prod = mmap.mmap(m.fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        self._ep = select.epoll()
        self._ep.register(m.fd, select.EPOLLIN)

    def consume(self, cb: Callable[[bytes], None]) -> int:
        """Call ``cb`` with every committed record; returns how many."""
        cons = _U64.unpack_from(self._cons, 0)[0]
        n = 0
        while True:
            prod = _U64.unpack_from(self._prod, 0)[0]
            if cons >= prod:
                return n
            while cons < prod:
                off = self._page + (cons & self._mask)
                hdr = _U32.unpack_from(self._prod, off)[0]
                if hdr & _BUSY:
                    return n
                length = hdr & ~(_BUSY | _DISCARD)
                cons += (length + _HDR + 7) & ~7
                if not hdr & _DISCARD:
                    cb(self._prod[off + _HDR : off + _HDR + length])
                    n += 1
                _U64.pack_into(self._cons, 0, cons)  # x86: a plain store is a release store

    def poll(self, cb: Callable[[bytes], None], timeout_ms: int) -> int:
        """Wait up to ``timeout_ms`` for data, then consume it."""
        self._ep.poll(timeout_ms / 1000)
        return self.consume(cb)

    def close(self) -> None:
        self._ep.close()
        self._cons.close()
        self._prod.close()
