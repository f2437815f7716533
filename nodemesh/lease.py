"""Leadership by a lease in the ``leases`` KV bucket (entries expire with the bucket's TTL, 5 s).

Acquire is create-if-absent; renewal is an update conditioned on the revision we last wrote, so
two holders are impossible. The bucket's TTL removes the key of a holder that died; a standby's
next create then succeeds. A holder that cannot renew keeps the lease only while its last renewal
is younger than ``grace`` (well below the TTL), so it stops acting as leader before anyone else
can acquire: never two leaders, and a one-off NATS hiccup does not cost a failover.

Used two ways: the watcher drives :meth:`try_acquire` / :meth:`renew` from its own loop; the
identity service runs :meth:`run` and reacts to ``on_change(leader)``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import msgspec
from nats.js.errors import APIError, KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

__all__ = ["Lease", "LeaseRecord"]

log = logging.getLogger("nodemesh.lease")


class LeaseRecord(msgspec.Struct, kw_only=True):
    """The value of a lease key (JSON, so `nats kv get leases watcher` is readable)."""

    holder: str
    renewed: float


class Lease:
    def __init__(
        self,
        kv: KeyValue,
        name: str,
        holder: str,
        *,
        renew_every: float = 1.0,
        grace: float = 2.5,
        timeout: float = 1.0,
        on_change: Callable[[bool], Awaitable[None]] | None = None,
    ) -> None:
        self.kv = kv
        self.name = name
        self.holder = holder
        self.renew_every = renew_every
        self.grace = grace
        self.timeout = timeout  # per KV call: a hung call must not outlast the grace period
        self.on_change = on_change
        self.revision = 0
        self.holder_seen = ""  # the current holder, as last read (us or another replica)
        self._renewed = 0.0
        self._leader = False  # as last announced through on_change

    @property
    def held(self) -> bool:
        """True while we hold the lease and renewed it within ``grace`` seconds."""
        return self.revision > 0 and time.monotonic() - self._renewed < self.grace

    def _record(self) -> bytes:
        return msgspec.json.encode(LeaseRecord(holder=self.holder, renewed=time.time()))

    async def try_acquire(self) -> bool:
        try:
            self.revision = int(
                await asyncio.wait_for(self.kv.create(self.name, self._record()), self.timeout)
            )
        except (KeyWrongLastSequenceError, APIError):
            await self._read_holder()
            return False
        except Exception as e:  # NATS unreachable: stay standby, try again
            log.debug("lease %s acquire failed: %r", self.name, e)
            return False
        self._renewed = time.monotonic()
        self.holder_seen = self.holder
        return True

    async def renew(self) -> bool:
        """Extend the lease; False once it is lost (taken by another holder, or past ``grace``)."""
        try:
            self.revision = int(
                await asyncio.wait_for(
                    self.kv.update(self.name, self._record(), last=self.revision), self.timeout
                )
            )
        except KeyWrongLastSequenceError:
            self.revision = 0
            await self._read_holder()
            log.warning("lost the %s lease to %s", self.name, self.holder_seen or "nobody")
            return False
        except Exception as e:  # transient: keep it while within grace
            log.warning("lease %s renewal failed: %r", self.name, e)
            return self.held
        self._renewed = time.monotonic()
        return True

    async def release(self) -> None:
        """Give the lease up at once (graceful stop), so a standby need not wait for the TTL."""
        if self.revision > 0:
            rev, self.revision = self.revision, 0
            try:
                await asyncio.wait_for(self.kv.delete(self.name, last=rev), self.timeout)
            except Exception as e:  # best effort: the TTL releases it anyway
                log.debug("lease %s release: %r", self.name, e)
        await self._announce(False)

    async def step(self) -> None:
        """One round of :meth:`run`: renew if we hold it, else try to take it; announce changes."""
        if self.revision > 0:
            if not await self.renew() and not self.held:
                self.revision = 0
        else:
            await self.try_acquire()
        await self._announce(self.held)

    async def run(self) -> None:
        try:
            while True:
                await self.step()
                await asyncio.sleep(self.renew_every)
        finally:
            await self._announce(False)

    @property
    def is_leader(self) -> bool:
        """What :meth:`run` last announced (for callers that react to ``on_change``)."""
        return self._leader and self.held

    async def _read_holder(self) -> None:
        try:
            entry = await asyncio.wait_for(self.kv.get(self.name), self.timeout)
            self.holder_seen = msgspec.json.decode(entry.value or b"{}", type=LeaseRecord).holder
        except (KeyNotFoundError, KeyDeletedError):
            self.holder_seen = ""
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.holder_seen = "?"
        except Exception as e:  # NATS trouble: keep the last holder we saw
            log.debug("lease %s read: %r", self.name, e)

    async def _announce(self, leader: bool) -> None:
        if leader == self._leader:
            return
        self._leader = leader
        log.info("%s the %s lease", "took" if leader else "gave up", self.name)
        if self.on_change is not None:
            await self.on_change(leader)
