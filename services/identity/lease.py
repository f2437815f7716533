"""Leader lease in the ``leases`` KV bucket (entries expire with the bucket's TTL unless renewed).

The holder creates ``<name>`` (create-if-absent) and renews it with CAS every ``renew`` seconds; a
replica that dies stops renewing and its entry expires, after which a standby's create succeeds.
A holder that fails to renew (conflict, NATS down) steps down at once; it would rather have no
leader for a moment than two.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import msgspec
from nats.js.errors import KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

__all__ = ["Lease", "LeaseRecord"]

log = logging.getLogger("nodemesh.identity.lease")


class LeaseRecord(msgspec.Struct, kw_only=True):
    holder: str
    renewed: float


class Lease:
    def __init__(
        self,
        kv: KeyValue,
        name: str,
        holder: str,
        *,
        renew: float = 1.0,
        on_change: Callable[[bool], Awaitable[None]] | None = None,
    ) -> None:
        self.kv = kv
        self.name = name
        self.holder = holder
        self.renew = renew
        self.on_change = on_change
        self.leader = asyncio.Event()
        self.holder_seen: str = ""  # the current holder, as last read (us or another replica)
        self._rev = 0

    @property
    def is_leader(self) -> bool:
        return self.leader.is_set()

    async def run(self) -> None:
        try:
            while True:
                await self._step()
                await asyncio.sleep(self.renew)
        finally:
            if self.is_leader:
                await self._set(False)

    async def release(self) -> None:
        if self.is_leader:
            try:
                await self.kv.delete(self.name, last=self._rev)
            except Exception as e:  # best effort: the TTL releases it anyway
                log.debug("lease release: %s", e)
            await self._set(False)

    async def _step(self) -> None:
        record = msgspec.json.encode(LeaseRecord(holder=self.holder, renewed=time.time()))
        try:
            if self.is_leader:
                self._rev = int(await self.kv.update(self.name, record, last=self._rev))
            else:
                self._rev = int(await self.kv.create(self.name, record))
                self.holder_seen = self.holder
                await self._set(True)
        except KeyWrongLastSequenceError:
            await self._read_holder()
            if self.is_leader:
                log.warning("lost the %s lease to %s", self.name, self.holder_seen)
                await self._set(False)
        except Exception as e:
            if self.is_leader:
                log.warning("cannot renew the %s lease (%s); stepping down", self.name, e)
                await self._set(False)

    async def _read_holder(self) -> None:
        try:
            entry = await self.kv.get(self.name)
            self.holder_seen = msgspec.json.decode(entry.value or b"{}", type=LeaseRecord).holder
        except (KeyNotFoundError, KeyDeletedError):
            self.holder_seen = ""
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.holder_seen = "?"

    async def _set(self, leader: bool) -> None:
        if leader == self.is_leader:
            return
        if leader:
            self.leader.set()
            log.info("became %s leader", self.name)
        else:
            self.leader.clear()
        if self.on_change is not None:
            await self.on_change(leader)
