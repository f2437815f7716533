/* Structs of the socket load-balancer (bpf/nm_sock.c), shared with the agent
 * (services/datapath/lb/maps.py mirrors each one; tests/datapath/test_privileged_lb_layout.py compares
 * sizes and offsets with the loaded program's BTF). The layout follows Cilium's lb4 maps:
 *
 *   nm_lb_svc      {frontend addr, port, proto, slot} → slot 0: count, rev-NAT id, flags, affinity
 *                  timeout; slots 1..count: a backend id
 *   nm_lb_be       backend id → {addr, port, proto, state}
 *   nm_lb_revnat   rev-NAT id → the frontend {addr, port} (reverse translation is checked against it)
 *   nm_lb_rev_sk   {socket cookie, backend addr, port} → frontend: recvmsg4 / getpeername4
 *   nm_lb_affinity {netns cookie, rev-NAT id} → {backend id, last used}: sessionAffinity ClientIP
 *   nm_lb_aff_match {backend id, rev-NAT id}: the backend still serves that frontend
 *   nm_lb_netns    netns cookie → NM_LB_NS_*: which sockets this node translates
 *
 * Addresses and ports in network byte order, as in struct bpf_sock_addr.
 */
#ifndef NM_LB_H
#define NM_LB_H

/* slot 0 flags: the frontend's type and behaviour */
#define NM_LB_F_CLUSTER_IP 0x01   /* spec.clusterIPs */
#define NM_LB_F_NODE_PORT 0x02    /* a node address : spec.ports[].nodePort */
#define NM_LB_F_LOAD_BALANCER 0x04 /* status.loadBalancer.ingress[].ip */
#define NM_LB_F_EXTERNAL_IP 0x08  /* spec.externalIPs */
#define NM_LB_F_AFFINITY 0x10     /* sessionAffinity: ClientIP (timeout in affinity_timeout) */
#define NM_LB_F_LOCAL 0x20        /* traffic policy Local: the slots hold node-local backends only */
#define NM_LB_F_L7 0x40           /* reserved for lb-l7: l7_proxy_port is the node's Envoy listener */

/* backend states (informational: the agent puts only the backends to use into the slots) */
#define NM_LB_BE_ACTIVE 0
#define NM_LB_BE_TERMINATING 1 /* serving + terminating, used because no endpoint is ready */

/* nm_lb_netns values */
#define NM_LB_NS_POD 1  /* a pod of this node */
#define NM_LB_NS_HOST 2 /* the host network namespace (this node translates host processes) */

/* per-CPU counters (nm_lb_stats, not pinned: they belong to the loaded program) */
#define NM_LB_STAT_XLATE 0       /* connect/sendmsg translated to a backend */
#define NM_LB_STAT_NO_BACKEND 1  /* refused: the frontend has no backend (ECONNREFUSED) */
#define NM_LB_STAT_REVERSE 2     /* recvmsg/getpeername rewritten back to the frontend */
#define NM_LB_STAT_AFFINITY 3    /* backend taken from the affinity map */
#define NM_LB_STAT_INCONSISTENT 4 /* a slot or backend the count promised was missing (never expected) */
#define NM_LB_STAT_BIND_DENIED 5 /* bind4 refused a NodePort's port (EADDRINUSE) */
#define NM_LB_STAT_MAX 8

struct nm_lb_svc_key {
	__u32 addr;   /* frontend address */
	__be16 dport; /* frontend port */
	__u16 slot;   /* 0 = the frontend; 1..count = backend slots */
	__u8 proto;   /* IPPROTO_TCP / IPPROTO_UDP */
	__u8 scope;   /* reserved for an external (per-packet) scope; socket LB uses 0 */
	__u16 pad;
};

struct nm_lb_svc_value {
	__u32 backend_id;       /* slots 1..count: the backend; slot 0: 0 */
	__u16 count;            /* slot 0: number of backend slots (0 = refuse) */
	__u16 rev_nat_id;       /* the frontend's reverse-NAT id (every slot carries it) */
	__u32 affinity_timeout; /* slot 0: seconds, with NM_LB_F_AFFINITY */
	__u16 flags;            /* slot 0: NM_LB_F_* */
	__be16 l7_proxy_port;   /* slot 0: reserved for lb-l7 (0 = none) */
};

struct nm_lb_backend {
	__u32 addr;
	__be16 port;
	__u8 proto;
	__u8 state; /* NM_LB_BE_* */
};

struct nm_lb_revnat {
	__u32 addr; /* the frontend */
	__be16 port;
	__u16 pad;
};

struct nm_lb_rev_sk_key {
	__u64 cookie; /* bpf_get_socket_cookie */
	__u32 addr;   /* the backend the socket talks to */
	__be16 port;
	__u16 pad;
};

struct nm_lb_rev_sk_value {
	__u32 addr; /* the frontend the application asked for */
	__be16 port;
	__u16 rev_nat_id;
};

struct nm_lb_affinity_key {
	__u64 netns_cookie; /* the client: a pod's netns (its IP), or the host */
	__u16 rev_nat_id;
	__u16 pad;
	__u32 pad2;
};

struct nm_lb_affinity_value {
	__u64 last_used_ns; /* CLOCK_MONOTONIC */
	__u32 backend_id;
	__u32 pad;
};

struct nm_lb_aff_match_key {
	__u32 backend_id;
	__u16 rev_nat_id;
	__u16 pad;
};

/* NodePorts of this node, for bind4: {port, proto} → number of frontends using it */
struct nm_lb_nodeport_key {
	__be16 port;
	__u8 proto;
	__u8 pad;
};

#endif /* NM_LB_H */
