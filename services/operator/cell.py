"""What the operator touches: it replays K8S and asks the active watcher for writes (k8s.write.*)."""

from nodemesh import subjects
from nodemesh.cell import Cell, KvWrite
from nodemesh.streams import BUCKET_LEASES, LEASE_OPERATOR, STREAM_K8S
from services.operator.reconcile import KINDS

CELL = Cell(
    name="operator",
    kinds=KINDS,
    reads_streams=(STREAM_K8S.name,),
    reads_buckets=(BUCKET_LEASES.name,),
    writes=(KvWrite(BUCKET_LEASES.name, LEASE_OPERATOR),),
    publishes=(subjects.K8S_WRITE_ALL,),
)
