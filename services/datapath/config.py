"""Datapath service configuration."""

from __future__ import annotations

from nodemesh.config import ServiceConfig
from services.datapath.metricscontext import DEFAULT_CONTEXT

__all__ = ["DatapathConfig"]


class DatapathConfig(ServiceConfig, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pod_cidr: str = ""
    """This node's pod CIDR; empty = from the Node object's spec.podCIDR or the nodes KV bucket."""
    node_ip: str = ""
    """This node's address; empty = from the nodes KV bucket. Added on ``lo`` in local mode."""
    local_mode: bool = True
    """Run each pod's first container in its netns (no container runtime) and add the node address."""
    cni_socket: str = ""
    """Kubernetes mode (``local_mode`` false): the endpoint socket the ``nodemesh-cni`` plugin talks to
    (services/datapath/cni); "" = ``<data_dir>/cni/cni.sock``, "off" = none."""
    cni_pod_wait: float = 30.0
    """How long a CNI ADD waits for the agent to sync and for the Pod to reach it (then: try again)."""
    pin_root: str = "/sys/fs/bpf/nodemesh"
    """bpffs directory; maps are pinned in ``<pin_root>/<node>/``."""
    scope: str = ""
    """Token in netns, link and pin names; empty = derived from data_dir (see pods.netns.scope_for)."""
    accesslog: str = ""
    """Envoy access-log receiver (L7 flows, docs/l7-visibility.md): "" = unix socket
    ``<data_dir>/als.sock``; ``PORT`` / ``127.0.0.1:PORT``; ``unix:PATH``; ``off``."""
    lb: bool = True
    """Socket load-balancing of Services (bpf/nm_sock.c on the cgroup v2 root, docs/services.md)."""
    lb_host_sockets: bool = True
    """Translate host processes' sockets too (the host netns). With several simulated nodes on one
    machine only one should (local mode: node-1); pods are always translated by their own node."""
    cgroup_root: str = ""
    """The cgroup v2 mount the socket programs attach to; empty = found in /proc/self/mounts."""
    cluster_name: str = "default"
    cluster_dns: str = "10.96.0.10"
    """kubelet's ``--cluster-dns``: the nameserver of local pods' resolv.conf (kube-dns' ClusterIP);
    "" = pods see the host's resolv.conf."""
    cluster_domain: str = "cluster.local"
    """kubelet's ``--cluster-domain``: the search path of local pods' resolv.conf."""
    node_heartbeat: float = 0.0
    """Seconds between this node's heartbeats (its Node's Ready condition, as the kubelet posts it,
    services/datapath/heartbeat.py); 0 = none, as in Kubernetes, where the kubelet posts them.
    Local mode: a quarter of the API server's node grace period."""
    hubble_metrics_context: str = DEFAULT_CONTEXT
    """Hubble's metric context options for hubble_* metrics (sourceContext, destinationContext,
    labelsContext; services/datapath/metricscontext.py). Invalid = the service fails to start."""
    event_queue_batches: int = 4096
    """Batches of ring-buffer events held for publishing before further ones are counted as lost."""
    ct_lifetime_tcp: int = 8000
    """Seconds an established TCP conntrack entry lives after its last packet (Cilium's 2h13m20s)."""
    ct_lifetime_tcp_syn: int = 60
    """... a TCP entry before the reply's SYN-ACK."""
    ct_lifetime_tcp_fin: int = 10
    """... a TCP entry after a FIN or RST."""
    ct_lifetime_any: int = 60
    """... UDP, SCTP, ICMP entries."""
    ct_gc_interval: float = 30.0
    """Seconds between conntrack garbage collections (expired entries removed from the map)."""
    auth_gate_timeout: float = 10.0
    """Seconds a new local pod's workload waits for its identity and for the auth verdicts its
    policies need (services/datapath/authgate.py) before it starts anyway; 0 = no wait."""
    policy_map_max: int = 0
    """Entries of the node's policy map (``nm_policy``); 0 = the programs' default (131072)."""
