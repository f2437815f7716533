"""What the DNS service touches: it only reads the K8S stream (Services, EndpointSlices, Namespaces)."""

from nodemesh.cell import Cell
from nodemesh.streams import STREAM_K8S

CELL = Cell(
    name="dns",
    kinds=("Namespace", "Service", "EndpointSlice"),
    reads_streams=(STREAM_K8S.name,),
    # Publishes nothing and subscribes to nothing: answers go out over UDP/TCP, not NATS.
)
