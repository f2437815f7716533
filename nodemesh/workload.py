"""The workload behind a pod, from its name: what flows carry as ``workloads`` and metrics label by.

Pods made by a Deployment are named ``<deployment>-<pod-template-hash>-<5 chars>`` and StatefulSet
pods ``<set>-<ordinal>``; any other pod has no workload (as in Hubble, where a pod without an owner
has none). Flows are made from the ipcache, which holds pod names but not owner references, so the
name is what there is to go on.
"""

from __future__ import annotations

import re

from nodemesh.messages.flow import Workload

__all__ = ["pod_workload"]

_DEPLOYMENT_POD = re.compile(r"^(.+)-[a-z0-9]{6,10}-[a-z0-9]{5}$")
_STATEFUL_POD = re.compile(r"^(.+)-\d+$")


def pod_workload(pod: str) -> Workload | None:
    """The workload of pod ``pod`` (None for no pod or a pod of no recognisable controller)."""
    if not pod:
        return None
    m = _DEPLOYMENT_POD.match(pod)
    if m:
        return Workload(name=m.group(1), kind="Deployment")
    m = _STATEFUL_POD.match(pod)
    if m:
        return Workload(name=m.group(1), kind="StatefulSet")
    return None
