"""What a node's authd touches: its own node's auth subjects and keys, and SVIDs for its node."""

from nodemesh import subjects
from nodemesh.cell import Cell, KvWrite
from nodemesh.policy.parse import POLICY_KINDS
from nodemesh.streams import (
    BUCKET_AUTH,
    BUCKET_IDENTITIES,
    BUCKET_IPCACHE,
    BUCKET_NODES,
    BUCKET_TRUST,
    STREAM_EVENTS,
    STREAM_K8S,
    auth_node_prefix,
)

CELL = Cell(
    name="authd",
    per_node=True,
    kinds=POLICY_KINDS,
    reads_streams=(STREAM_K8S.name, STREAM_EVENTS.name),
    reads_buckets=(
        BUCKET_IDENTITIES.name,
        BUCKET_IPCACHE.name,
        BUCKET_NODES.name,
        BUCKET_TRUST.name,
        BUCKET_AUTH.name,
    ),
    writes=(KvWrite(BUCKET_AUTH.name, auth_node_prefix("{node}")),),
    publishes=(
        subjects.svid_sign("{node}"),  # the identity service trusts the node named here
        subjects.auth_granted("{node}"),
        subjects.auth_revoked("{node}"),
        subjects.auth_events("{node}"),
    ),
    subscribes=(subjects.auth_required("{node}"), subjects.auth_list("{node}")),
)
