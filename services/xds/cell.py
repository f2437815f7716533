"""What xds touches: it reads cluster state and writes only status and Envoy configuration."""

from nodemesh import subjects
from nodemesh.cell import Cell
from nodemesh.streams import BUCKET_IDENTITIES, BUCKET_IPCACHE, BUCKET_NODES, STREAM_K8S

CELL = Cell(
    name="xds",
    #: Every kind translation reads (CiliumNetworkPolicy for L7 rules), referenced kinds first.
    kinds=(
        "Namespace",
        "Node",
        "GatewayClass",
        "IngressClass",
        "Secret",
        "ConfigMap",
        "Service",
        "EndpointSlice",
        "ReferenceGrant",
        "CiliumNetworkPolicy",
        "CiliumClusterwideNetworkPolicy",
        "Pod",
        "Gateway",
        "HTTPRoute",
        "GRPCRoute",
        "TLSRoute",
        "TCPRoute",
        "BackendTLSPolicy",
        "Ingress",
        "CiliumEnvoyConfig",
        "CiliumClusterwideEnvoyConfig",
    ),
    reads_streams=(STREAM_K8S.name,),
    reads_buckets=(BUCKET_NODES.name, BUCKET_IDENTITIES.name, BUCKET_IPCACHE.name),
    # Replicas tell each other about Envoy ACKs/NACKs (any node's), and publish status patches.
    publishes=(subjects.K8S_STATUS_ALL, subjects.xds_ack("*")),
    subscribes=(subjects.xds_ack("*"), subjects.XDS_STATUS),
)
