"""L7 visibility: Envoy's HTTP access logs (gRPC ALS) → Hubble L7 flows and HTTP metrics, per node.

``start_accesslog(svc, node, port, enrich)`` is what the datapath app calls; ``convert`` is the pure
core; see docs/l7-visibility.md.
"""

from services.datapath.accesslog.convert import Enrich, L7Record, convert, endpoint_label, workload_of
from services.datapath.accesslog.enrich import mirror_enricher
from services.datapath.accesslog.server import (
    AccessLogServer,
    listen_address,
    start_accesslog,
    start_configured,
)

__all__ = [
    "AccessLogServer",
    "Enrich",
    "L7Record",
    "convert",
    "endpoint_label",
    "listen_address",
    "mirror_enricher",
    "start_accesslog",
    "start_configured",
    "workload_of",
]
