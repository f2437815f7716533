"""What the watcher touches: the only publisher of cluster state (stream K8S)."""

from nodemesh import subjects
from nodemesh.cell import Cell, KvWrite
from nodemesh.streams import BUCKET_LEASES, LEASE_WATCHER, STREAM_K8S, STREAM_STATUS

CELL = Cell(
    name="watcher",
    # It lists/watches every kind of nodemesh.kinds from the API server and replays K8S itself
    # (a new leader starts from what the stream holds), so it declares no K8sCache kinds.
    reads_streams=(STREAM_K8S.name, STREAM_STATUS.name),  # STATUS: the durable status work queue
    reads_buckets=(BUCKET_LEASES.name,),
    writes=(KvWrite(BUCKET_LEASES.name, LEASE_WATCHER),),
    publishes=(subjects.K8S_OBJ_ALL, subjects.K8S_SYNCED),
    # k8s.write.*: the operator's object writes, answered (allow_responses) while active.
    subscribes=(subjects.K8S_STATUS_ALL, subjects.K8S_WRITE_ALL),
)
