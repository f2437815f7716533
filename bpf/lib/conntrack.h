/* Conntrack lifetimes and ICMP-error relation: pure helpers (no maps; BCC rewrites map accesses only
 * in the main file, so the lookups are in nm_tc.c).
 *
 * An entry lives for its state's lifetime after its last packet (Cilium's defaults): established TCP
 * 8000 s (--bpf-ct-timeout-regular-tcp 2h13m20s), TCP before the reply's SYN-ACK 60 s (…-tcp-syn),
 * TCP after a FIN or RST in either direction 10 s (…-tcp-fin), everything else 60 s (…-any). The
 * agent passes its configured values as -D defines and removes expired entries (GC); the programs
 * treat an expired entry as absent, so expiry holds even between two GC runs. */
#ifndef NM_LIB_CONNTRACK_H
#define NM_LIB_CONNTRACK_H

#ifndef NM_CT_LIFETIME_TCP
#define NM_CT_LIFETIME_TCP 8000
#endif
#ifndef NM_CT_LIFETIME_TCP_SYN
#define NM_CT_LIFETIME_TCP_SYN 60
#endif
#ifndef NM_CT_LIFETIME_TCP_FIN
#define NM_CT_LIFETIME_TCP_FIN 10
#endif
#ifndef NM_CT_LIFETIME_ANY
#define NM_CT_LIFETIME_ANY 60
#endif

static __always_inline __u64 nm_ct_lifetime_ns(const struct nm_ct_entry *e, __u8 proto)
{
	if (proto != IPPROTO_TCP)
		return NM_CT_LIFETIME_ANY * 1000000000ULL;
	__u8 seen = e->tx_flags_seen | e->rx_flags_seen;
	if (seen & (NM_TCP_FIN | NM_TCP_RST))
		return NM_CT_LIFETIME_TCP_FIN * 1000000000ULL;
	if (!(e->rx_flags_seen & NM_TCP_ACK))
		return NM_CT_LIFETIME_TCP_SYN * 1000000000ULL;
	return NM_CT_LIFETIME_TCP * 1000000000ULL;
}

static __always_inline int nm_ct_expired(const struct nm_ct_entry *e, __u8 proto, __u64 now)
{
	return now > e->last_seen_ns && now - e->last_seen_ns > nm_ct_lifetime_ns(e, proto);
}

/* The CT keys an ICMP error (seen by program `dir`) is related to: the packet it quotes went the
 * other way, so its connection is either the quoted tuple as created by the other direction's
 * program (*rel_reply), or that tuple reversed as created by this direction's (*rel_fwd). */
static __always_inline void nm_icmp_related_keys(const struct nm_tuple *t, __u8 dir, struct nm_ct_key *rel_fwd,
						 struct nm_ct_key *rel_reply)
{
	rel_reply->saddr = t->inner_saddr;
	rel_reply->daddr = t->inner_daddr;
	rel_reply->sport = t->inner_sport;
	rel_reply->dport = t->inner_dport;
	rel_reply->proto = t->inner_proto;
	rel_reply->dir = dir ^ 1;
	rel_fwd->saddr = t->inner_daddr;
	rel_fwd->daddr = t->inner_saddr;
	rel_fwd->sport = t->inner_dport;
	rel_fwd->dport = t->inner_sport;
	rel_fwd->proto = t->inner_proto;
	rel_fwd->dir = dir;
}

/* The tuple of the flow a reply belongs to, as the program of the other direction judged it:
 * addresses and ports swapped; the policy port is the original destination port (ICMP: echo). */
static __always_inline void nm_reply_origin(const struct nm_tuple *t, struct nm_tuple *o)
{
	o->saddr = t->daddr;
	o->daddr = t->saddr;
	o->sport = t->dport;
	o->dport = t->sport;
	o->proto = t->proto;
	o->policy_port = t->proto == IPPROTO_ICMP ? bpf_htons(ICMP_ECHO) : t->sport;
	o->icmp_type = t->proto == IPPROTO_ICMP ? ICMP_ECHO : 0;
	o->len = t->len;
}

/* Source address check on the pod's egress (Cilium's DROP_INVALID_SIP): a pod may only send from its
 * own address. The address is unknown (0) until the agent wrote it: nothing to compare then. */
static __always_inline int nm_source_valid(const struct nm_endpoint_info *ep, const struct nm_tuple *t)
{
	return !ep->ipv4 || t->saddr == ep->ipv4;
}

#endif
