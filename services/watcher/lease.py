"""Leadership: one active watcher, by a lease in KV bucket ``leases`` (key ``watcher``, TTL 5 s).

Acquire is create-if-absent; renewal is an update conditioned on the revision we last wrote, so
two holders are impossible. The bucket's TTL removes the key of a watcher that died; a standby's
next create then succeeds. A holder that cannot renew for ``grace`` seconds (well below the TTL)
must stop publishing before anyone else can acquire, so two watchers never publish at once.
"""

from __future__ import annotations

import asyncio
import logging
import time

from nats.js.errors import APIError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

__all__ = ["Lease"]

log = logging.getLogger("nodemesh.watcher.lease")


class Lease:
    def __init__(
        self, kv: KeyValue, key: str, holder: str, *, grace: float = 2.5, timeout: float = 1.0
    ) -> None:
        self.timeout = timeout  # per KV call: a hung call must not outlast the grace period
        self.kv = kv
        self.key = key
        self.holder = holder
        self.grace = grace
        self.revision = 0
        self._renewed = 0.0

    @property
    def held(self) -> bool:
        """True while we hold the lease and renewed it within ``grace`` seconds."""
        return self.revision > 0 and time.monotonic() - self._renewed < self.grace

    async def try_acquire(self) -> bool:
        try:
            self.revision = await asyncio.wait_for(
                self.kv.create(self.key, self.holder.encode()), self.timeout
            )
        except (KeyWrongLastSequenceError, APIError):
            return False
        except Exception as e:  # NATS unreachable: stay standby, try again
            log.debug("lease acquire failed: %r", e)
            return False
        self._renewed = time.monotonic()
        return True

    async def renew(self) -> bool:
        """Extend the lease; False when another holder has it (lost for good)."""
        try:
            self.revision = await asyncio.wait_for(
                self.kv.update(self.key, self.holder.encode(), last=self.revision), self.timeout
            )
        except KeyWrongLastSequenceError:
            self.revision = 0
            return False
        except Exception as e:  # transient: keep it while within grace
            log.warning("lease renewal failed: %r", e)
            return self.held
        self._renewed = time.monotonic()
        return True

    async def release(self) -> None:
        """Give the lease up at once (graceful stop), so a standby need not wait for the TTL."""
        if self.revision <= 0:
            return
        rev, self.revision = self.revision, 0
        try:
            await asyncio.wait_for(self.kv.delete(self.key, last=rev), self.timeout)
        except Exception as e:
            log.debug("lease release: %r", e)
