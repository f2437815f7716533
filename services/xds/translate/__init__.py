"""Kubernetes objects → Envoy resources and status, through a neutral model (pure: no I/O, no clock).

Pipeline, as Cilium's operator does it (research §5.1): ingestion (``ingest_*``) turns Gateway API
objects, Ingresses and annotated Services into :mod:`.model` listeners and routes and computes status;
translation (``envoy_*``) turns the model into Listeners, RouteConfigurations, Clusters,
ClusterLoadAssignments and SDS Secrets; CiliumEnvoyConfigs are decoded and name-qualified (``cec``).

Public interface (stable): :func:`translate`, :class:`TranslateInput`, :class:`Translation`,
:class:`GatewayInfo`, :func:`with_programmed`, the type URLs.
"""

from __future__ import annotations

from .status import with_programmed
from .types import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    SECRET,
    TYPE_URLS,
    GatewayInfo,
    TranslateInput,
    Translation,
)

__all__ = [
    "CLUSTER",
    "ENDPOINT",
    "LISTENER",
    "ROUTE",
    "SECRET",
    "TYPE_URLS",
    "GatewayInfo",
    "TranslateInput",
    "Translation",
    "translate",
    "with_programmed",
]


def translate(inp: TranslateInput) -> Translation:
    """Translate every object in ``inp``; never raises on bad objects (they become status or errors)."""
    from .pipeline import run

    return run(inp)
