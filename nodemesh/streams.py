"""Every JetStream stream and KV bucket nodemesh uses, and their idempotent provisioning.

:func:`provision` is the *admin step*: the local supervisor runs it as the NATS ``admin`` user once
nats-server is up, ``nodemesh nats provision`` in the deployments (a Job on Kubernetes, a one-shot
service in compose). Creating what exists is a no-op and a changed config is updated in place.
Services never create, update or delete a stream (their NATS users have no such right,
nodemesh/natsauth.py): at start they wait in :func:`wait_provisioned` until everything exists.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import msgspec
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from nodemesh import subjects

__all__ = [
    "BUCKETS",
    "IDENTITY_KEY_PREFIX",
    "LABELS_KEY_PREFIX",
    "LEASE_IDENTITY",
    "LEASE_OPERATOR",
    "LEASE_WATCHER",
    "STREAMS",
    "TRUST_BUNDLE_KEY",
    "Bucket",
    "Stream",
    "auth_key",
    "auth_node_prefix",
    "identity_key",
    "ipcache_key",
    "labels_key",
    "missing",
    "node_key",
    "provision",
    "wait_provisioned",
]

log = logging.getLogger("nodemesh.streams")


class Stream(msgspec.Struct, frozen=True):
    name: str
    subjects: tuple[str, ...]
    max_msgs_per_subject: int = -1
    max_msgs: int = -1
    max_age_s: float = 0.0
    duplicate_window_s: float = 120.0
    work_queue: bool = False  # each message is removed once a consumer acks it
    doc: str = ""


class Bucket(msgspec.Struct, frozen=True):
    name: str
    history: int = 1
    ttl_s: float = 0.0
    doc: str = ""
    atomic: bool = False  # atomic batch publish on (nats-server >= 2.12), set by the admin step


STREAM_K8S = Stream(
    name="K8S",
    subjects=(subjects.K8S_OBJ_ALL, subjects.K8S_SYNCED),
    max_msgs_per_subject=1,
    doc="Last-value cache of every Kubernetes object; replay = full state. Tombstones for deletes.",
)
STREAM_EVENTS = Stream(
    name="EVENTS",
    subjects=(subjects.IDENTITY_EVENTS, subjects.IPCACHE_EVENTS, subjects.TRUST_BUNDLE),
    max_msgs=1_000_000,
    max_age_s=3600.0,
    doc="Ordered identity, ipcache and trust-bundle changes (state itself lives in KV).",
)
STREAM_FLOWS = Stream(
    name="FLOWS",
    subjects=(subjects.FLOWS_ALL,),
    max_msgs=200_000,
    max_age_s=3600.0,
    duplicate_window_s=1.0,
    doc="Recent flows for `nodemesh observe --last N`; live consumers use core NATS.",
)
STREAM_STATUS = Stream(
    name="STATUS",
    subjects=(subjects.K8S_STATUS_ALL,),
    max_age_s=600.0,
    work_queue=True,
    doc="Status patches waiting for the active watcher; kept across a watcher failover, removed on ack.",
)
STREAMS: tuple[Stream, ...] = (STREAM_K8S, STREAM_EVENTS, STREAM_FLOWS, STREAM_STATUS)

BUCKET_IDENTITIES = Bucket(
    "identities", atomic=True, doc="id → Identity (labels, refs); labels-hash keys → id"
)
BUCKET_IPCACHE = Bucket("ipcache", doc="IP (dots as '-') → IPCacheEntry")
BUCKET_NODES = Bucket("nodes", doc="node name → NodeInfo (address, pod CIDR, authd address)")
BUCKET_TRUST = Bucket("trust", doc="trust bundle (CA roots, PEM)")
BUCKET_LEASES = Bucket("leases", ttl_s=5.0, doc="leader leases; an entry expires unless renewed")
BUCKET_AUTH = Bucket("auth", doc="per-node mutual-auth state for `nodemesh auth list`")
BUCKETS: tuple[Bucket, ...] = (
    BUCKET_IDENTITIES,
    BUCKET_IPCACHE,
    BUCKET_NODES,
    BUCKET_TRUST,
    BUCKET_LEASES,
    BUCKET_AUTH,
)


# --- keys: every KV key is built here, next to its bucket -------------------------------------
#: ``identities``: ``id.<n>`` → Identity; ``labels.<hash>`` → IdentityRef (the allocation index).
IDENTITY_KEY_PREFIX = "id."
LABELS_KEY_PREFIX = "labels."
#: ``trust``: the one trust bundle.
TRUST_BUNDLE_KEY = "bundle"
#: ``leases``: one key per leader role.
LEASE_WATCHER = "watcher"
LEASE_IDENTITY = "identity"
LEASE_OPERATOR = "operator"


def identity_key(n: int) -> str:
    return f"{IDENTITY_KEY_PREFIX}{n}"


def labels_key(label_hash: str) -> str:
    return f"{LABELS_KEY_PREFIX}{label_hash}"


def ipcache_key(ip: str) -> str:
    """``ipcache`` key of an IP or prefix (KV keys cannot contain ':', and '.' splits tokens)."""
    return ip.replace(".", "-").replace(":", "_").replace("/", "__")


def node_key(node: str) -> str:
    """``nodes`` key of a node (its name as one subject token)."""
    return subjects.token(node)


def auth_key(node: str, local: int, remote: int, remote_node: str, auth_type: int) -> str:
    """``auth`` key of an entry: ``<node>.<local>.<remote>.<remote node>.<type>``; NATS permissions
    let only ``node``'s authd write under ``<node>.``."""
    return f"{subjects.token(node)}.{local}.{remote}.{subjects.token(remote_node)}.{auth_type}"


def auth_node_prefix(node: str) -> str:
    """The keys of one node's ``auth`` entries (a KV watch filter / permission subject suffix)."""
    return f"{subjects.token(node)}.>"


def _stream_config(s: Stream, replicas: int) -> StreamConfig:
    return StreamConfig(
        name=s.name,
        subjects=list(s.subjects),
        retention=RetentionPolicy.WORK_QUEUE if s.work_queue else RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_msgs_per_subject=s.max_msgs_per_subject,
        max_msgs=s.max_msgs,
        max_age=s.max_age_s or None,
        duplicate_window=s.duplicate_window_s,
        num_replicas=replicas,
        description=s.doc or None,
    )


async def provision(js: JetStreamContext, *, replicas: int = 1) -> None:
    """Create or update every stream and bucket. Safe to call concurrently from many services."""
    for s in STREAMS:
        cfg = _stream_config(s, replicas)
        try:
            await js.stream_info(s.name)
            await js.update_stream(cfg)
        except NotFoundError:
            try:
                await js.add_stream(cfg)
            except BadRequestError:
                # Lost a creation race with another service: it exists now.
                await js.update_stream(cfg)
    for b in BUCKETS:
        try:
            await js.key_value(b.name)
        except (NotFoundError, BadRequestError):
            try:
                await js.create_key_value(
                    KeyValueConfig(
                        bucket=b.name,
                        history=b.history,
                        ttl=b.ttl_s or None,
                        replicas=replicas,
                        description=b.doc or None,
                    )
                )
            except BadRequestError:
                await js.key_value(b.name)
        if b.atomic:
            await _allow_atomic(js, f"KV_{b.name}")


async def _allow_atomic(js: JetStreamContext, stream: str) -> None:
    try:
        info = await js.stream_info(stream)
        if not info.config.allow_atomic:
            info.config.allow_atomic = True
            await js.update_stream(info.config)
    except Exception as e:  # an older nats-server: identity then allocates one at a time
        log.info("atomic batches unavailable on %s: %s", stream, e)


def _names() -> list[str]:
    return [s.name for s in STREAMS] + [f"KV_{b.name}" for b in BUCKETS]


async def missing(js: JetStreamContext) -> list[str]:
    """The streams (KV buckets as ``KV_<bucket>``) that do not exist yet."""
    out = []
    for name in _names():
        try:
            await js.stream_info(name)
        except NotFoundError:
            out.append(name)
    return out


async def wait_provisioned(
    js: JetStreamContext, on_wait: Callable[[list[str]], None] | None = None, interval: float = 0.5
) -> None:
    """Return once every stream and bucket exists (the admin step made them); ``on_wait`` is told
    once what is still missing."""
    told = False
    while gone := await missing(js):
        if not told and on_wait is not None:
            on_wait(gone)
            told = True
        await asyncio.sleep(interval)
