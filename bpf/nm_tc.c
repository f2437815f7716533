/* nodemesh tc programs: nm_from_pod (clsact ingress of the pod's host-side veth = the pod's egress)
 * and nm_to_pod (clsact egress of that veth = the pod's ingress).
 *
 * Per packet: endpoint by ifindex → parse → conntrack. An established forward packet passes
 * (policy is re-checked only when the agent bumped the policy revision since the flow was allowed,
 * and the auth entry is re-checked for flows that needed auth); a reply passes; a new flow is judged
 * by the endpoint's policy (two LPM lookups, Cilium's precedence, deny wins), then the auth map.
 * Events go to one ring buffer: a trace per new flow and per new TCP flag in each direction
 * (aggregated per CT entry, not per packet), a drop per dropped packet, and auth-required signals
 * de-duplicated to one per auth key per 100 ms.
 *
 * Compiled by BCC once per node with -DNM_PIN_DIR="/sys/fs/bpf/nodemesh/<node>": every map that
 * decides a verdict is pinned there, so a restarted agent reuses it and enforcement never stops.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

#include "include/nm_maps.h"
#include "lib/parse.h"
#include "lib/policy.h"
#include "lib/conntrack.h"

#ifndef NM_PIN_DIR
#error "compile with -DNM_PIN_DIR=\"/sys/fs/bpf/nodemesh/<node>\""
#endif
#ifndef NM_POLICY_MAX
#define NM_POLICY_MAX 131072
#endif
#ifndef NM_IPCACHE_MAX
#define NM_IPCACHE_MAX 131072
#endif
#ifndef NM_CT_MAX
#define NM_CT_MAX 65536
#endif
#ifndef NM_AUTH_MAX
#define NM_AUTH_MAX 65536
#endif
#ifndef NM_RINGBUF_PAGES
#define NM_RINGBUF_PAGES 1024
#endif
#define NM_AUTH_SIGNAL_INTERVAL_NS 100000000ULL /* one auth-required signal per key per 100 ms */

#define NM_PIN(name) NM_PIN_DIR "/" name
#ifndef NM_SHARED_PIN_DIR
#define NM_SHARED_PIN_DIR NM_PIN_DIR
#endif

BPF_TABLE_PINNED("hash", struct nm_endpoint_key, struct nm_endpoint_info, nm_endpoints, 4096,
		 NM_PIN("nm_endpoints"));
BPF_TABLE_PINNED("lpm_trie", struct nm_ipcache_key, struct nm_ipcache_value, nm_ipcache, NM_IPCACHE_MAX,
		 NM_PIN("nm_ipcache"), BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lpm_trie", struct nm_policy_key, struct nm_policy_value, nm_policy, NM_POLICY_MAX,
		 NM_PIN("nm_policy"), BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lru_hash", struct nm_ct_key, struct nm_ct_entry, nm_ct, NM_CT_MAX, NM_PIN("nm_ct"));
BPF_TABLE_PINNED("hash", struct nm_auth_key, struct nm_auth_value, nm_auth, NM_AUTH_MAX, NM_PIN("nm_auth"),
		 BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("array", u32, u32, nm_config, NM_CFG_MAX, NM_PIN("nm_config"));
/* Connections an ingress policy redirected to a proxy on this host, shared by every node of the
 * cluster (pinned next to the node directories): later packets enter the host stack through the
 * sender's from-pod program, which must hand them to the proxy's socket there (see nm_handle). */
BPF_TABLE_PINNED("lru_hash", struct nm_ct_key, u32, nm_proxy_flows, 65536, NM_SHARED_PIN_DIR "/nm_proxy_flows");
/* [0] != 0 once any node recorded a connection there: until then no packet pays the hash lookup */
BPF_TABLE_PINNED("array", u32, u32, nm_proxy_active, 1, NM_SHARED_PIN_DIR "/nm_proxy_active");
/* last auth-required signal per key (dedup); losing it on restart only costs one extra signal */
BPF_TABLE("lru_hash", struct nm_auth_key, u64, nm_auth_signal, 16384);
BPF_PERCPU_ARRAY(nm_drops, u64, 256);
BPF_PERCPU_ARRAY(nm_stats, u64, NM_STAT_MAX);
BPF_RINGBUF_OUTPUT(nm_events, NM_RINGBUF_PAGES);
/* never used at run time: keeps struct nm_event in the BTF the layout test reads */
BPF_ARRAY(nm_layout_event, struct nm_event, 1);

struct nm_verdict {
	__u32 remote_identity;
	__u16 remote_node_id;
	__u8 match_type;
	__u8 auth_type;
	__u8 drop_reason; /* 0 = allowed */
	__u8 proxy;       /* the allowing entry redirects to the L7 proxy */
	__be16 proxy_port; /* for the event: the proxy port the flow goes to */
};

static __always_inline void nm_emit(struct __sk_buff *skb, const struct nm_tuple *t,
				    const struct nm_endpoint_info *ep, __u8 dir, __u8 type,
				    const struct nm_verdict *v, __u8 flags, __u8 is_reply, __u64 now)
{
	struct nm_event *e = nm_events.ringbuf_reserve(sizeof(struct nm_event));
	if (!e) {
		nm_stats.increment(NM_STAT_LOST_EVENTS);
		return;
	}
	e->ts_ns = now;
	e->saddr = t->saddr;
	e->daddr = t->daddr;
	/* src/dst identities follow the packet: from-pod = endpoint → remote, to-pod = remote → endpoint */
	if (dir == NM_DIR_EGRESS) {
		e->src_identity = ep->identity;
		e->dst_identity = v->remote_identity;
	} else {
		e->src_identity = v->remote_identity;
		e->dst_identity = ep->identity;
	}
	e->ifindex = skb->ifindex;
	e->sport = t->sport;
	e->dport = t->dport;
	e->ep_id = ep->ep_id;
	e->remote_node_id = v->remote_node_id;
	e->type = type;
	e->dir = dir;
	e->proto = t->proto;
	e->tcp_flags = flags;
	e->drop_reason = v->drop_reason;
	e->auth_type = v->auth_type;
	e->match_type = v->match_type;
	e->is_reply = is_reply;
	e->icmp_type = t->icmp_type;
	e->icmp_code = t->icmp_code;
	e->proxy_port = v->proxy_port;
	e->pad2 = 0;
	nm_events.ringbuf_submit(e, 0);
	nm_stats.increment(NM_STAT_EVENTS);
}

static __always_inline void nm_remote(__u32 addr, struct nm_verdict *v)
{
	struct nm_ipcache_key k = {.prefixlen = 32, .addr = addr};
	struct nm_ipcache_value *rv = nm_ipcache.lookup(&k);
	if (rv) {
		v->remote_identity = rv->identity;
		v->remote_node_id = rv->node_id;
	} else {
		v->remote_identity = NM_ID_WORLD;
		v->remote_node_id = 0;
	}
}

/* Valid auth entry for (endpoint, remote, remote node, type)? If not, signal (deduplicated). */
static __always_inline int nm_auth_ok(struct __sk_buff *skb, const struct nm_tuple *t,
				      const struct nm_endpoint_info *ep, __u8 dir,
				      const struct nm_verdict *v, __u64 now)
{
	struct nm_auth_key ak = {};
	ak.local_identity = ep->identity;
	ak.remote_identity = v->remote_identity;
	ak.remote_node_id = v->remote_node_id;
	ak.auth_type = v->auth_type;
	struct nm_auth_value *av = nm_auth.lookup(&ak);
	if (av && av->expiry_ns > now)
		return 1;
	__u64 *last = nm_auth_signal.lookup(&ak);
	if (last && now - *last < NM_AUTH_SIGNAL_INTERVAL_NS) {
		nm_stats.increment(NM_STAT_AUTH_SUPPRESSED);
		return 0;
	}
	nm_auth_signal.update(&ak, &now);
	nm_emit(skb, t, ep, dir, NM_EVT_AUTH_REQUIRED, v, 0, 0, now);
	return 0;
}

/* The endpoint's policy for a new flow (or an established one after a policy change). */
static __always_inline void nm_policy_check(struct __sk_buff *skb, const struct nm_tuple *t,
					    const struct nm_endpoint_info *ep, __u8 dir,
					    struct nm_verdict *v, __u64 now)
{
	__u8 enforce = dir == NM_DIR_EGRESS ? NM_EP_ENFORCE_EGRESS : NM_EP_ENFORCE_INGRESS;
	v->match_type = NM_MATCH_NONE;
	v->auth_type = 0;
	v->drop_reason = 0;
	v->proxy = 0;
	if (ep->flags & NM_EP_FAIL_CLOSED) {
		v->drop_reason = NM_DROP_POLICY;
		return;
	}
	if (!(ep->flags & enforce))
		return;
	struct nm_policy_key k = {};
	k.prefixlen = NM_POLICY_FULL_PREFIX;
	k.ep_id = ep->ep_id;
	k.identity = v->remote_identity;
	k.egress = dir;
	k.protocol = t->proto;
	k.dport = t->policy_port;
	struct nm_policy_value *l3 = nm_policy.lookup(&k);
	k.identity = NM_ID_ANY;
	struct nm_policy_value *any = nm_policy.lookup(&k);
	__u8 match = 0;
	const struct nm_policy_value *pv = nm_policy_select(l3, any, &match);
	v->match_type = match;
	if (!pv) {
		v->drop_reason = NM_DROP_POLICY;
		return;
	}
	if (pv->flags & NM_POLICY_DENY) {
		v->drop_reason = NM_DROP_POLICY_DENY;
		return;
	}
	v->auth_type = pv->auth_type;
	/* only TCP is redirected: the proxy speaks HTTP (no Kafka/DNS proxies) */
	v->proxy = pv->proxy_port && t->proto == IPPROTO_TCP;
	if (v->auth_type && !nm_auth_ok(skb, t, ep, dir, v, now))
		v->drop_reason = NM_DROP_AUTH_REQUIRED;
}

static __always_inline __u32 nm_cfg(__u32 idx)
{
	__u32 *p = nm_config.lookup(&idx);
	return p ? *p : 0;
}

/* The proxy port (host order) of this direction's L7 policy listener; 0 = none configured. */
static __always_inline __u16 nm_proxy_port(__u8 dir)
{
	return (__u16)nm_cfg(dir == NM_DIR_EGRESS ? NM_CFG_PROXY_PORT_EGRESS : NM_CFG_PROXY_PORT_INGRESS);
}

/* Deliver this packet to the local proxy (only legal at tc ingress): the connection's own socket if
 * the proxy already accepted it, else the transparent listener on <proxy addr>:<port>. The mark makes
 * the stack route it locally (ip rule fwmark 0x200/0xf00 → a table with a local default route), so
 * the assigned socket receives it although the destination address is not the host's.
 * Returns 0 or a drop reason. */
static __always_inline int nm_to_proxy(struct __sk_buff *skb, const struct nm_tuple *t, __u16 port)
{
	struct bpf_sock_tuple tup = {};
	tup.ipv4.saddr = t->saddr;
	tup.ipv4.daddr = t->daddr;
	tup.ipv4.sport = t->sport;
	tup.ipv4.dport = t->dport;
	struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, &tup, sizeof(tup.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (sk) {
		/* a host listener on the original port is not the proxy: look for the proxy's */
		if (sk->state != BPF_TCP_LISTEN)
			goto assign;
		bpf_sk_release(sk);
	}
	if (!port)
		return NM_DROP_SOCKET_LOOKUP;
	__u32 addr = nm_cfg(NM_CFG_PROXY_ADDR);
	tup.ipv4.daddr = addr ? addr : bpf_htonl(0x7f000001);
	tup.ipv4.dport = bpf_htons(port);
	sk = bpf_skc_lookup_tcp(skb, &tup, sizeof(tup.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return NM_DROP_SOCKET_LOOKUP;
assign:;
	long err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (err)
		return NM_DROP_SOCKET_ASSIGN;
	skb->mark = NM_MARK_TO_PROXY;
	return 0;
}

static __always_inline void nm_proxy_record(const struct nm_ct_key *k, u32 val)
{
	nm_proxy_flows.update(k, &val);
	u32 zero = 0;
	u32 *active = nm_proxy_active.lookup(&zero);
	if (active && !*active)
		*active = 1;
}

/* Prepare a packet on its way out of the veth (tc egress, where sk_assign is refused) to be
 * redirected into the same veth's ingress, where nm_from_pod hands it to a host socket: arriving at
 * the host it must be addressed to the host (the destination MAC is the pod's; the source MAC is
 * this veth's own: the host sent it out of it), and the mark tells nm_from_pod (port 0 = the
 * connection's own socket only). Returns non-zero if the packet could not be rewritten. */
static __always_inline int nm_turn_around(struct __sk_buff *skb, __u16 port)
{
	__u8 mac[6];
	if (bpf_skb_load_bytes(skb, 6, mac, 6) < 0 || bpf_skb_store_bytes(skb, 0, mac, 6, 0) < 0)
		return -1;
	skb->mark = NM_MARK_TO_PROXY | ((__u32)port << 16);
	return 0;
}

/* An egress proxy's upstream leg redirected to this host's ingress proxy (both rule sets apply):
 * the ingress proxy answers the egress proxy's socket, which carries the client's address, so its
 * packets are routed toward the client's veth. Record the reply tuple: nm_to_pod there turns them
 * around to the host socket that owns the tuple (see nm_handle). */
static __always_inline void nm_proxy_chain(const struct nm_tuple *t)
{
	struct nm_ct_key rk = {};
	rk.saddr = t->daddr;
	rk.daddr = t->saddr;
	rk.sport = t->dport;
	rk.dport = t->sport;
	rk.proto = t->proto;
	nm_proxy_record(&rk, NM_PROXY_FLOW_REPLY);
}

/* Redirect a packet of a proxied flow. From the pod (tc ingress) it goes to the proxy directly; to the
 * pod (tc egress, where bpf_sk_assign is not allowed) it is turned around into the same veth's
 * ingress with the port in the mark, and nm_from_pod hands it to the proxy there. */
static __always_inline int nm_redirect(struct __sk_buff *skb, const struct nm_tuple *t,
				       const struct nm_endpoint_info *ep, __u8 dir, struct nm_verdict *v,
				       __u64 now)
{
	__u16 port = nm_proxy_port(dir);
	if (dir == NM_DIR_EGRESS) {
		int reason = nm_to_proxy(skb, t, port);
		if (reason) {
			v->drop_reason = reason;
			nm_drops.increment(v->drop_reason);
			nm_emit(skb, t, ep, dir, NM_EVT_DROP, v, t->tcp_flags, 0, now);
			return TC_ACT_SHOT;
		}
		return TC_ACT_OK;
	}
	if (!port) {
		v->drop_reason = NM_DROP_SOCKET_LOOKUP;
		nm_drops.increment(v->drop_reason);
		nm_emit(skb, t, ep, dir, NM_EVT_DROP, v, t->tcp_flags, 0, now);
		return TC_ACT_SHOT;
	}
	struct nm_ct_key pk = {};
	pk.saddr = t->saddr;
	pk.daddr = t->daddr;
	pk.sport = t->sport;
	pk.dport = t->dport;
	pk.proto = t->proto;
	nm_proxy_record(&pk, port);
	if (nm_turn_around(skb, port)) {
		v->drop_reason = NM_DROP_INVALID;
		nm_drops.increment(v->drop_reason);
		return TC_ACT_SHOT;
	}
	return bpf_redirect(skb->ifindex, BPF_F_INGRESS);
}

static __always_inline int nm_drop(struct __sk_buff *skb, const struct nm_tuple *t,
				   const struct nm_endpoint_info *ep, __u8 dir, const struct nm_verdict *v,
				   __u64 now)
{
	nm_drops.increment(v->drop_reason);
	nm_emit(skb, t, ep, dir, NM_EVT_DROP, v, t->tcp_flags, 0, now);
	return TC_ACT_SHOT;
}

/* An ICMP error passes only as related to a connection this endpoint tracks (the one the quoted
 * packet belongs to); otherwise it is dropped: it cannot start a flow. */
static __always_inline int nm_icmp_error(struct __sk_buff *skb, const struct nm_tuple *t,
					 const struct nm_endpoint_info *ep, __u8 dir, struct nm_verdict *v,
					 __u64 now)
{
	struct nm_ct_key fk = {}, rk = {};
	nm_icmp_related_keys(t, dir, &fk, &rk);
	struct nm_ct_entry *ct = t->inner_proto ? nm_ct.lookup(&fk) : 0;
	if (!ct && t->inner_proto)
		ct = nm_ct.lookup(&rk);
	if (ct && !nm_ct_expired(ct, t->inner_proto, now))
		return TC_ACT_OK;
	nm_remote(dir == NM_DIR_EGRESS ? t->daddr : t->saddr, v);
	v->drop_reason = NM_DROP_CT_NO_ENTRY;
	return nm_drop(skb, t, ep, dir, v, now);
}

/* A reply after a policy change: judge again the flow it answers, as the other direction's program
 * judged it when it was new (same endpoint, same remote). Returns a drop reason or 0. */
static __always_inline int nm_reply_recheck(struct __sk_buff *skb, const struct nm_tuple *t,
					    const struct nm_endpoint_info *ep, __u8 dir, struct nm_ct_entry *ct,
					    __u32 rev, __u64 now)
{
	struct nm_tuple o = {};
	struct nm_verdict ov = {};
	nm_reply_origin(t, &o);
	__u8 odir = dir ^ 1;
	nm_remote(odir == NM_DIR_EGRESS ? o.daddr : o.saddr, &ov);
	nm_policy_check(skb, &o, ep, odir, &ov, now);
	if (ov.drop_reason)
		return ov.drop_reason;
	ct->policy_rev = rev;
	ct->auth_type = ov.auth_type;
	ct->flags = (ov.auth_type ? NM_CT_F_AUTH : 0) | (ct->flags & (NM_CT_F_PROXY | NM_CT_F_UPSTREAM));
	ct->remote_identity = ov.remote_identity;
	ct->remote_node_id = ov.remote_node_id;
	return 0;
}

static __always_inline int nm_handle(struct __sk_buff *skb, __u8 dir)
{
	struct nm_endpoint_key ek = {.ifindex = skb->ifindex};
	struct nm_endpoint_info *ep = nm_endpoints.lookup(&ek);
	if (!ep)
		return TC_ACT_OK; /* not an endpoint of this node */
	struct nm_tuple t = {};
	int rc = nm_parse(skb, &t);
	if (rc == NM_PARSE_PASS)
		return TC_ACT_OK;
	nm_stats.increment(NM_STAT_PACKETS);
	__u64 now = bpf_ktime_get_ns();
	struct nm_verdict v = {};
	if (dir == NM_DIR_EGRESS && (skb->mark & NM_MARK_MAGIC_MASK) == NM_MARK_TO_PROXY && rc == NM_PARSE_OK &&
	    t.proto == IPPROTO_TCP) {
		/* turned around by nm_to_pod (ingress policy redirect): already judged there. A pod
		 * cannot forge this mark: crossing the veth from the pod's netns scrubs it. */
		int reason = nm_to_proxy(skb, &t, (__u16)(skb->mark >> 16));
		if (reason) {
			v.drop_reason = reason;
			return nm_drop(skb, &t, ep, NM_DIR_INGRESS, &v, now);
		}
		return TC_ACT_OK;
	}
	if (dir == NM_DIR_EGRESS && rc == NM_PARSE_OK && !nm_source_valid(ep, &t)) {
		/* spoofed source: judged as nobody; the flow names the real sender (the endpoint) */
		nm_remote(t.daddr, &v);
		v.drop_reason = NM_DROP_INVALID_SIP;
		return nm_drop(skb, &t, ep, dir, &v, now);
	}
	u32 zero = 0;
	u32 *proxy_active = nm_proxy_active.lookup(&zero);
	if (dir == NM_DIR_EGRESS && rc == NM_PARSE_OK && t.proto == IPPROTO_TCP && proxy_active &&
	    *proxy_active && !(skb->mark & NM_MARK_MAGIC_MASK)) {
		/* A packet of a connection some node's ingress policy gave to its proxy on this host: its
		 * socket is the proxy's now, and the stack would find it (early demux) and then drop the
		 * packet on the forward path. Hand it over here, where sk_assign is legal. A new SYN on a
		 * recycled tuple is not that connection: forget it and judge it normally. */
		struct nm_ct_key pk = {};
		pk.saddr = t.saddr;
		pk.daddr = t.daddr;
		pk.sport = t.sport;
		pk.dport = t.dport;
		pk.proto = t.proto;
		u32 *pport = nm_proxy_flows.lookup(&pk);
		if ((t.tcp_flags & (NM_TCP_SYN | NM_TCP_ACK)) == NM_TCP_SYN) {
			/* a new connection: neither it nor its replies belong to a proxy's socket */
			if (pport)
				nm_proxy_flows.delete(&pk);
			struct nm_ct_key rk = {};
			rk.saddr = t.daddr;
			rk.daddr = t.saddr;
			rk.sport = t.dport;
			rk.dport = t.sport;
			rk.proto = t.proto;
			nm_proxy_flows.delete(&rk);
		} else if (pport && !(*pport & NM_PROXY_FLOW_REPLY)) {
			__u16 pp = (__u16)*pport;
			int reason = nm_to_proxy(skb, &t, pp);
			if (!reason)
				return TC_ACT_OK;
		}
	}
	if (dir == NM_DIR_INGRESS && rc == NM_PARSE_OK && t.proto == IPPROTO_TCP && proxy_active &&
	    *proxy_active) {
		/* The ingress proxy answering a chained egress proxy (nm_proxy_chain): the host socket
		 * that owns the tuple takes the packet, not the pod whose address it carries. */
		struct nm_ct_key pk = {};
		pk.saddr = t.saddr;
		pk.daddr = t.daddr;
		pk.sport = t.sport;
		pk.dport = t.dport;
		pk.proto = t.proto;
		u32 *pv = nm_proxy_flows.lookup(&pk);
		if (pv && (*pv & NM_PROXY_FLOW_REPLY) && !nm_turn_around(skb, 0))
			return bpf_redirect(skb->ifindex, BPF_F_INGRESS);
	}
	if (rc == NM_PARSE_INVALID) {
		v.drop_reason = NM_DROP_INVALID;
		return nm_drop(skb, &t, ep, dir, &v, now);
	}
	__u32 cfg_key = NM_CFG_POLICY_REV;
	__u32 *revp = nm_config.lookup(&cfg_key);
	__u32 rev = revp ? *revp : 0;

	if (t.icmp_related)
		return nm_icmp_error(skb, &t, ep, dir, &v, now);

	struct nm_ct_key fk = {};
	fk.saddr = t.saddr;
	fk.daddr = t.daddr;
	fk.sport = t.sport;
	fk.dport = t.dport;
	fk.proto = t.proto;
	fk.dir = dir;
	struct nm_ct_entry *ct = nm_ct.lookup(&fk);
	if (ct && nm_ct_expired(ct, t.proto, now)) {
		nm_ct.delete(&fk);
		ct = 0;
	}
	if (ct) {
		/* established, forward direction */
		v.remote_identity = ct->remote_identity;
		v.remote_node_id = ct->remote_node_id;
		v.match_type = ct->match_type;
		v.auth_type = ct->auth_type;
		if (ct->policy_rev != rev) {
			nm_remote(dir == NM_DIR_EGRESS ? t.daddr : t.saddr, &v);
			nm_policy_check(skb, &t, ep, dir, &v, now);
			if (v.drop_reason) {
				nm_ct.delete(&fk);
				return nm_drop(skb, &t, ep, dir, &v, now);
			}
			ct->policy_rev = rev;
			ct->auth_type = v.auth_type;
			/* a proxied connection stays with the proxy (its socket owns it); an upstream leg
			 * is never redirected again */
			ct->flags = (v.auth_type ? NM_CT_F_AUTH : 0) |
				    (ct->flags & (NM_CT_F_PROXY | NM_CT_F_UPSTREAM));
			ct->remote_identity = v.remote_identity;
			ct->remote_node_id = v.remote_node_id;
		} else if (ct->flags & NM_CT_F_AUTH) {
			if (!nm_auth_ok(skb, &t, ep, dir, &v, now)) {
				v.drop_reason = NM_DROP_AUTH_REQUIRED;
				return nm_drop(skb, &t, ep, dir, &v, now);
			}
		}
		ct->last_seen_ns = now;
		__sync_fetch_and_add(&ct->packets, 1);
		__sync_fetch_and_add(&ct->bytes, t.len);
		if (ct->flags & NM_CT_F_PROXY)
			v.proxy_port = bpf_htons(nm_proxy_port(dir));
		if (t.tcp_flags & ~ct->tx_flags_seen) {
			ct->tx_flags_seen |= t.tcp_flags;
			nm_emit(skb, &t, ep, dir, NM_EVT_TRACE, &v, t.tcp_flags, 0, now);
		}
		if (ct->flags & NM_CT_F_PROXY)
			return nm_redirect(skb, &t, ep, dir, &v, now);
		return TC_ACT_OK;
	}
	struct nm_ct_key rk = {};
	rk.saddr = t.daddr;
	rk.daddr = t.saddr;
	rk.sport = t.dport;
	rk.dport = t.sport;
	rk.proto = t.proto;
	rk.dir = dir ^ 1;
	ct = nm_ct.lookup(&rk);
	if (ct && nm_ct_expired(ct, t.proto, now)) {
		nm_ct.delete(&rk);
		ct = 0;
	}
	if (ct) {
		/* a reply of a flow this endpoint's peer direction allowed */
		if (ct->policy_rev != rev) {
			v.drop_reason = nm_reply_recheck(skb, &t, ep, dir, ct, rev, now);
			if (v.drop_reason) {
				nm_ct.delete(&rk);
				nm_remote(dir == NM_DIR_EGRESS ? t.daddr : t.saddr, &v);
				return nm_drop(skb, &t, ep, dir, &v, now);
			}
		}
		ct->last_seen_ns = now;
		__sync_fetch_and_add(&ct->packets, 1);
		__sync_fetch_and_add(&ct->bytes, t.len);
		if (t.tcp_flags & ~ct->rx_flags_seen) {
			ct->rx_flags_seen |= t.tcp_flags;
			v.remote_identity = ct->remote_identity;
			v.remote_node_id = ct->remote_node_id;
			v.match_type = ct->match_type;
			v.auth_type = ct->auth_type;
			nm_emit(skb, &t, ep, dir, NM_EVT_TRACE, &v, t.tcp_flags, 1, now);
		}
		/* a reply to the proxy's upstream leg (its source is the original client's address):
		 * route it to the host, where the proxy's socket owns that tuple */
		if ((ct->flags & NM_CT_F_UPSTREAM) && dir == NM_DIR_EGRESS)
			skb->mark = NM_MARK_TO_PROXY;
		return TC_ACT_OK;
	}
	/* a new flow */
	nm_remote(dir == NM_DIR_EGRESS ? t.daddr : t.saddr, &v);
	nm_policy_check(skb, &t, ep, dir, &v, now);
	if (v.drop_reason)
		return nm_drop(skb, &t, ep, dir, &v, now);
	/* Envoy's upstream leg (marked by its socket): judged as the original client (the proxy keeps
	 * the client's address) and its replies go back to the proxy. The ingress proxy's leg is never
	 * redirected again; the egress proxy's leg goes on to the ingress proxy when this endpoint's
	 * ingress rules ask for one, so both rule sets apply (Cilium chains the proxies too). */
	__u32 magic = skb->mark & NM_MARK_MAGIC_MASK;
	if (dir == NM_DIR_INGRESS && magic == NM_MARK_PROXY_INGRESS)
		v.proxy = 0;
	__u8 upstream = dir == NM_DIR_INGRESS && !v.proxy &&
			(magic == NM_MARK_PROXY_INGRESS || magic == NM_MARK_PROXY_EGRESS);
	if (dir == NM_DIR_INGRESS && v.proxy && magic == NM_MARK_PROXY_EGRESS)
		nm_proxy_chain(&t);
	if (v.proxy)
		v.proxy_port = bpf_htons(nm_proxy_port(dir));
	struct nm_ct_entry e = {};
	e.created_ns = now;
	e.last_seen_ns = now;
	e.packets = 1;
	e.bytes = t.len;
	e.policy_rev = rev;
	e.remote_identity = v.remote_identity;
	e.remote_node_id = v.remote_node_id;
	e.tx_flags_seen = t.tcp_flags;
	e.auth_type = v.auth_type;
	e.flags = (v.auth_type ? NM_CT_F_AUTH : 0) | (v.proxy ? NM_CT_F_PROXY : 0) |
		  (upstream ? NM_CT_F_UPSTREAM : 0);
	e.match_type = v.match_type;
	nm_ct.update(&fk, &e);
	nm_emit(skb, &t, ep, dir, NM_EVT_TRACE, &v, t.tcp_flags, 0, now);
	if (v.proxy)
		return nm_redirect(skb, &t, ep, dir, &v, now);
	return TC_ACT_OK;
}

int nm_from_pod(struct __sk_buff *skb)
{
	return nm_handle(skb, NM_DIR_EGRESS);
}

int nm_to_pod(struct __sk_buff *skb)
{
	return nm_handle(skb, NM_DIR_INGRESS);
}
