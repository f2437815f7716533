"""What a node's datapath touches: its own node's subjects only."""

from nodemesh import subjects
from nodemesh.cell import Cell
from nodemesh.policy.parse import POLICY_KINDS
from nodemesh.streams import (
    BUCKET_AUTH,
    BUCKET_IDENTITIES,
    BUCKET_IPCACHE,
    BUCKET_NODES,
    STREAM_EVENTS,
    STREAM_K8S,
)

CELL = Cell(
    name="datapath",
    per_node=True,
    # Service and EndpointSlice: socket load-balancing (services/datapath/services.py)
    kinds=("Pod", "Namespace", "Node", *POLICY_KINDS, "Service", "EndpointSlice"),
    reads_streams=(STREAM_K8S.name, STREAM_EVENTS.name),
    reads_buckets=(BUCKET_IPCACHE.name, BUCKET_IDENTITIES.name, BUCKET_NODES.name, BUCKET_AUTH.name),
    publishes=(
        subjects.flows("{node}"),
        subjects.auth_required("{node}"),
        # Pod status patches, bound to this node: the watcher applies them only to its pods.
        subjects.k8s_node_status("{node}", "pod", "*", "*"),
        # Its own Node's Ready condition (local mode's kubelet heartbeat, heartbeat.py).
        subjects.k8s_status("node", "", "{node}"),
        # Policy status (an invalid policy's error condition).
        *(subjects.k8s_status(kind, "*", "*") for kind in POLICY_KINDS),
    ),
    subscribes=(subjects.auth_granted("{node}"), subjects.auth_revoked("{node}")),
)
