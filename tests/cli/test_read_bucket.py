"""``read_bucket`` (``identity list``, ``ipcache list``) reads every live key of a real KV bucket,
whatever the bucket's last message is, and an empty bucket without waiting for a timeout."""

from __future__ import annotations

from meshctl.cmd_identity import read_bucket
from nodemesh.bus import Bus
from nodemesh.codec import encode
from nodemesh.messages.identity import Identity
from nodemesh.streams import BUCKET_IDENTITIES, IDENTITY_KEY_PREFIX, identity_key


def _ident(n: int) -> Identity:
    return Identity(id=n, labels=[f"k8s:app=a{n}"])


async def test_every_live_key_whatever_the_last_message(bus: Bus) -> None:
    kv = await bus.kv(BUCKET_IDENTITIES.name)
    assert await read_bucket(bus, BUCKET_IDENTITIES.name, Identity, IDENTITY_KEY_PREFIX) == {}
    for n in range(300, 340):
        await kv.put(identity_key(n), encode(_ident(n)))
    await kv.put("other.x", b"not an identity")  # outside the prefix: never read
    await kv.delete(identity_key(339))  # the newest message under the prefix is a delete
    for _ in range(20):  # each read is a fresh watch: none may end before the values
        got = await read_bucket(bus, BUCKET_IDENTITIES.name, Identity, IDENTITY_KEY_PREFIX)
        assert sorted(got) == sorted(identity_key(n) for n in range(300, 339))
        assert got[identity_key(300)].labels == ["k8s:app=a300"]
    for n in range(300, 339):
        await kv.delete(identity_key(n))
    assert await read_bucket(bus, BUCKET_IDENTITIES.name, Identity, IDENTITY_KEY_PREFIX) == {}
