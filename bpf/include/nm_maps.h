/* Structs shared between the tc programs (bpf/nm_tc.c) and the agent (services/datapath/maps.py).
 *
 * One source per side: every struct here has a ctypes mirror in services/datapath/maps.py, and
 * tests/datapath/test_privileged_layout.py compares sizes and offsets from the loaded program's BTF.
 * Addresses are stored in network byte order as they appear in the packet; ports too (__be16).
 */
#ifndef NM_MAPS_H
#define NM_MAPS_H

/* --- identities (Cilium's reserved numbers) --- */
#define NM_ID_ANY 0
#define NM_ID_HOST 1
#define NM_ID_WORLD 2
#define NM_ID_REMOTE_NODE 6

/* --- directions (policy key, CT key, events) --- */
#define NM_DIR_INGRESS 0 /* to-pod: traffic entering the endpoint */
#define NM_DIR_EGRESS 1  /* from-pod: traffic leaving the endpoint */

/* --- drop reasons: Cilium's positive DropReason codes (flow.proto) --- */
#define NM_DROP_INVALID_SIP 132     /* INVALID_SOURCE_IP: a pod sent from an address not its own */
#define NM_DROP_POLICY 133        /* POLICY_DENIED: no allow entry */
#define NM_DROP_INVALID 134       /* invalid packet (truncated headers) */
#define NM_DROP_CT_NO_ENTRY 138   /* CT_CANNOT_CREATE_ENTRY_FROM_PACKET: an ICMP error of no tracked flow */
#define NM_DROP_SOCKET_LOOKUP 178 /* SOCKET_LOOKUP_FAILED: no L7 proxy listener to redirect to */
#define NM_DROP_SOCKET_ASSIGN 179 /* SOCKET_ASSIGN_FAILED: bpf_sk_assign refused the proxy socket */
#define NM_DROP_POLICY_DENY 181   /* POLICY_DENY: a deny entry matched */
#define NM_DROP_AUTH_REQUIRED 189 /* AUTH_REQUIRED: allow entry needs auth, no valid auth entry */

/* --- event types (Cilium's monitor message types; 200 is ours) --- */
#define NM_EVT_DROP 1
#define NM_EVT_TRACE 4
#define NM_EVT_POLICY_VERDICT 5
#define NM_EVT_AUTH_REQUIRED 200

/* --- policy match types (Cilium's POLICY_MATCH_*) --- */
#define NM_MATCH_NONE 0
#define NM_MATCH_L3_ONLY 1
#define NM_MATCH_L3_L4 2
#define NM_MATCH_L4_ONLY 3
#define NM_MATCH_ALL 4
#define NM_MATCH_L3_PROTO 5
#define NM_MATCH_PROTO_ONLY 6

/* --- stats indices (per-CPU array nm_stats) --- */
#define NM_STAT_LOST_EVENTS 0   /* ring buffer reserve failed: the event is lost, counted here */
#define NM_STAT_EVENTS 1        /* events written to the ring buffer */
#define NM_STAT_PACKETS 2       /* packets seen by the programs on endpoints */
#define NM_STAT_AUTH_SUPPRESSED 3 /* auth-required signals suppressed by the 100 ms dedup */
#define NM_STAT_MAX 8

/* --- config array indices (nm_config) --- */
#define NM_CFG_POLICY_REV 0 /* bumped by the agent on every policy map change */
#define NM_CFG_PROXY_ADDR 1 /* the node's L7 proxy address (network order; 0 = 127.0.0.1) */
#define NM_CFG_PROXY_PORT_INGRESS 2 /* Envoy's transparent ingress policy listener (host order) */
#define NM_CFG_PROXY_PORT_EGRESS 3  /* ... and the egress one; 0 = no proxy: redirects drop */
#define NM_CFG_MAX 4

/* --- skb marks (Cilium's MARK_MAGIC_* layout: magic in bits 8..11) --- */
#define NM_MARK_MAGIC_MASK 0x0F00
#define NM_MARK_TO_PROXY 0x0200      /* route locally (ip rule → local table) to the proxy; port << 16 */
#define NM_MARK_PROXY_INGRESS 0x0A00 /* Envoy's upstream leg of the ingress policy listener */
#define NM_MARK_PROXY_EGRESS 0x0B00  /* ... and of the egress one */

/* nm_proxy_flows value: the proxy port (host order), or this flag for a reply tuple (see nm_tc.c
 * nm_proxy_chain): packets on it are for a host socket (an egress proxy's upstream leg that this
 * host's ingress proxy terminated), not for the pod whose address the socket carries */
#define NM_PROXY_FLOW_REPLY 0x10000

/* endpoints: host-side ifindex → endpoint */
struct nm_endpoint_key {
	__u32 ifindex;
};

#define NM_EP_ENFORCE_INGRESS 1
#define NM_EP_ENFORCE_EGRESS 2
#define NM_EP_FAIL_CLOSED 4 /* the agent could not write this endpoint's policy (map full): deny all */

struct nm_endpoint_info {
	__u32 identity;
	__u32 ipv4; /* network order */
	__u16 ep_id;
	__u8 flags; /* NM_EP_* */
	__u8 pad;
};

/* ipcache: LPM trie over the IPv4 address */
struct nm_ipcache_key {
	__u32 prefixlen; /* bits of addr that matter (0..32) */
	__u32 addr;      /* network order */
};

struct nm_ipcache_value {
	__u32 identity;
	__u32 node_ip;   /* network order; 0 for world/CIDR entries */
	__u16 node_id;   /* agent-local node id; 0 = this node */
	__u8 flags;
	__u8 pad;
};

/* policy: one LPM trie for all endpoints. The static part (ep_id, identity, egress) is always
 * fully matched; then 8 bits of protocol, then 16 bits of port (a range is prefix-aligned chunks). */
#define NM_POLICY_STATIC_PREFIX 72
#define NM_POLICY_FULL_PREFIX 96

struct nm_policy_key {
	__u32 prefixlen;
	__u32 ep_id;
	__u32 identity; /* 0 = any identity (the second lookup) */
	__u8 egress;
	__u8 protocol;  /* 0 = any (only with a wildcard port) */
	__be16 dport;   /* ICMP: the type */
};

#define NM_POLICY_DENY 1

struct nm_policy_value {
	__be16 proxy_port;
	__u8 flags;       /* NM_POLICY_DENY */
	__u8 auth_type;
	__u8 proto_prefix; /* 0 or 8: how much of the key's protocol was matched */
	__u8 port_prefix;  /* 0..16: how much of the key's port was matched */
	__u16 pad;
};

/* conntrack: LRU hash; dir says which program created the entry (one entry per enforcement point) */
struct nm_ct_key {
	__u32 saddr;
	__u32 daddr;
	__be16 sport; /* ICMP echo: the id in both ports */
	__be16 dport;
	__u8 proto;
	__u8 dir;
	__u16 pad;
};

#define NM_CT_F_AUTH 1     /* the allowing entry needs auth: re-check the auth map on every packet */
#define NM_CT_F_PROXY 2    /* redirected to the L7 proxy: every forward packet goes to it */
#define NM_CT_F_UPSTREAM 4 /* the proxy's upstream leg: replies go back to the proxy's socket */

struct nm_ct_entry {
	__u64 created_ns;
	__u64 last_seen_ns;
	__u64 packets;
	__u64 bytes;
	__u32 policy_rev;      /* NM_CFG_POLICY_REV when policy last allowed this flow */
	__u32 remote_identity;
	__u16 remote_node_id;
	__u8 tx_flags_seen;    /* TCP flags seen in the forward direction (events on change only) */
	__u8 rx_flags_seen;    /* ... and in the reply direction */
	__u8 auth_type;
	__u8 flags;            /* NM_CT_F_* */
	__u8 match_type;
	__u8 pad;
};

/* auth map: as Cilium's struct auth_key; value is an expiry in CLOCK_MONOTONIC ns */
struct nm_auth_key {
	__u32 local_identity;
	__u32 remote_identity;
	__u16 remote_node_id; /* 0 = this node */
	__u8 auth_type;
	__u8 pad;
};

struct nm_auth_value {
	__u64 expiry_ns;
};

/* one ring buffer event: flows (trace, drop, policy verdict) and auth-required signals */
struct nm_event {
	__u64 ts_ns;          /* CLOCK_MONOTONIC */
	__u32 saddr;
	__u32 daddr;
	__u32 src_identity;
	__u32 dst_identity;
	__u32 ifindex;
	__be16 sport;
	__be16 dport;
	__u16 ep_id;
	__u16 remote_node_id;
	__u8 type;            /* NM_EVT_* */
	__u8 dir;             /* NM_DIR_* */
	__u8 proto;
	__u8 tcp_flags;
	__u8 drop_reason;     /* NM_DROP_* or 0 */
	__u8 auth_type;
	__u8 match_type;      /* NM_MATCH_* */
	__u8 is_reply;
	__u8 icmp_type;
	__u8 icmp_code;
	__be16 proxy_port;    /* != 0: the flow was redirected to this L7 proxy port (REDIRECTED) */
	__u32 pad2;
};

#endif /* NM_MAPS_H */
