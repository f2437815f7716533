"""What the identity service touches: the only writer of identities, ipcache, nodes and trust, and
the remover of a deleted node's entries in auth."""

from nodemesh import subjects
from nodemesh.cell import Cell, KvWrite
from nodemesh.streams import (
    BUCKET_AUTH,
    BUCKET_IDENTITIES,
    BUCKET_IPCACHE,
    BUCKET_LEASES,
    BUCKET_NODES,
    BUCKET_TRUST,
    LEASE_IDENTITY,
    STREAM_EVENTS,
    STREAM_K8S,
)

CELL = Cell(
    name="identity",
    kinds=("Pod", "Namespace", "Node"),
    reads_streams=(STREAM_K8S.name, STREAM_EVENTS.name),
    reads_buckets=(
        BUCKET_IDENTITIES.name,
        BUCKET_IPCACHE.name,
        BUCKET_NODES.name,
        BUCKET_TRUST.name,
        BUCKET_LEASES.name,
        BUCKET_AUTH.name,
    ),
    writes=(
        KvWrite(BUCKET_IDENTITIES.name),
        KvWrite(BUCKET_IPCACHE.name),
        KvWrite(BUCKET_NODES.name),
        KvWrite(BUCKET_TRUST.name),
        KvWrite(BUCKET_LEASES.name, LEASE_IDENTITY),  # the replicas' leader lease
        KvWrite(BUCKET_AUTH.name),  # a deleted node's entries (its authd went with it)
    ),
    publishes=(subjects.IDENTITY_EVENTS, subjects.IPCACHE_EVENTS, subjects.TRUST_BUNDLE),
    subscribes=(
        subjects.SVID_SIGN_ALL,
        subjects.IDENTITY_ALLOCATE,
        subjects.IDENTITY_RELEASE,
        subjects.IDENTITY_CA_ROTATE,
    ),
)
