"""Socket-level Service load-balancing (issue #10): Services + EndpointSlices → BPF maps.

``model`` (frontends, backends, plans) and ``plan`` (Services → plans) and ``diff`` (plans →
ordered map writes) are pure; ``maps`` mirrors ``bpf/include/nm_lb.h``; ``cgroup`` and ``loader``
attach ``bpf/nm_sock.c`` to the cgroup v2 root. docs/services.md describes the whole.
"""
