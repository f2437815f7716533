/* Packet parsing for the tc programs: IPv4 + TCP/UDP/SCTP/ICMP into a flow tuple.
 * Pure helpers (no maps): BCC rewrites map accesses only in the main file, so maps live in nm_tc.c. */
#ifndef NM_LIB_PARSE_H
#define NM_LIB_PARSE_H

#include <uapi/linux/in.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/icmp.h>

#define NM_TCP_FIN 0x01
#define NM_TCP_SYN 0x02
#define NM_TCP_RST 0x04
#define NM_TCP_PSH 0x08
#define NM_TCP_ACK 0x10
#define NM_TCP_URG 0x20

#define NM_PARSE_OK 0
#define NM_PARSE_PASS 1    /* not IPv4: not ours to judge (ARP must pass) */
#define NM_PARSE_INVALID 2 /* truncated headers */

struct nm_tuple {
	__u32 saddr;
	__u32 daddr;
	__be16 sport;
	__be16 dport;
	__be16 policy_port; /* dport for TCP/UDP/SCTP; the ICMP type for ICMP */
	__u8 proto;
	__u8 tcp_flags;
	__u8 icmp_type;
	__u8 icmp_code;
	__u8 icmp_related; /* an ICMP error: passes only as related to the connection it quotes */
	__u8 inner_proto;  /* ICMP error: the quoted packet's tuple (0 = not parsable) */
	__u32 len;
	__u32 inner_saddr;
	__u32 inner_daddr;
	__be16 inner_sport;
	__be16 inner_dport;
};

/* The tuple of the packet an ICMP error quotes (its IP header and first 8 bytes), in the same form
 * nm_parse gives a packet (ICMP echo: the id in both ports), so it can be looked up in conntrack. */
static __always_inline void nm_parse_icmp_inner(void *inner, void *data_end, struct nm_tuple *t)
{
	struct iphdr *ip = inner;
	if ((void *)(ip + 1) > data_end)
		return;
	__u32 ihl = ip->ihl * 4;
	if (ihl < sizeof(*ip))
		return;
	__u8 *l4 = (__u8 *)ip + ihl;
	if ((void *)(l4 + 8) > data_end)
		return;
	t->inner_saddr = ip->saddr;
	t->inner_daddr = ip->daddr;
	if (ip->protocol == IPPROTO_ICMP) {
		struct icmphdr *ih = (void *)l4;
		if (ih->type != ICMP_ECHO && ih->type != ICMP_ECHOREPLY)
			return; /* only echo has a connection to be related to */
		t->inner_sport = ih->un.echo.id;
		t->inner_dport = ih->un.echo.id;
	} else if (ip->protocol == IPPROTO_TCP || ip->protocol == IPPROTO_UDP || ip->protocol == 132) {
		struct udphdr *uh = (void *)l4;
		t->inner_sport = uh->source;
		t->inner_dport = uh->dest;
	} else {
		return;
	}
	t->inner_proto = ip->protocol;
}

static __always_inline int nm_parse(struct __sk_buff *skb, struct nm_tuple *t)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return NM_PARSE_PASS;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return NM_PARSE_PASS;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return NM_PARSE_INVALID;
	__u32 ihl = ip->ihl * 4;
	if (ihl < sizeof(*ip))
		return NM_PARSE_INVALID;
	t->saddr = ip->saddr;
	t->daddr = ip->daddr;
	t->proto = ip->protocol;
	t->len = skb->len;
	void *l4 = (void *)ip + ihl;
	if (ip->frag_off & bpf_htons(0x1fff)) {
		/* a non-first fragment carries no ports: only port-wildcard entries can match it */
		return NM_PARSE_OK;
	}
	if (ip->protocol == IPPROTO_TCP) {
		struct tcphdr *th = l4;
		if ((void *)(th + 1) > data_end)
			return NM_PARSE_INVALID;
		t->sport = th->source;
		t->dport = th->dest;
		t->policy_port = th->dest;
		t->tcp_flags = ((__u8 *)th)[13] & 0x3f;
	} else if (ip->protocol == IPPROTO_UDP || ip->protocol == 132 /* SCTP */) {
		struct udphdr *uh = l4; /* SCTP's first 4 bytes are the ports too */
		if ((void *)(uh + 1) > data_end)
			return NM_PARSE_INVALID;
		t->sport = uh->source;
		t->dport = uh->dest;
		t->policy_port = uh->dest;
	} else if (ip->protocol == IPPROTO_ICMP) {
		struct icmphdr *ih = l4;
		if ((void *)(ih + 1) > data_end)
			return NM_PARSE_INVALID;
		t->icmp_type = ih->type;
		t->icmp_code = ih->code;
		t->policy_port = bpf_htons(ih->type);
		if (ih->type == ICMP_ECHO || ih->type == ICMP_ECHOREPLY) {
			/* echo request and reply share the id: put it in both ports so the reply's tuple
			 * is the request's reversed */
			t->sport = ih->un.echo.id;
			t->dport = ih->un.echo.id;
		} else if (ih->type == ICMP_DEST_UNREACH || ih->type == ICMP_TIME_EXCEEDED) {
			t->icmp_related = 1;
			nm_parse_icmp_inner((void *)(ih + 1), data_end, t);
		}
	}
	return NM_PARSE_OK;
}

#endif
