/* nodemesh socket load-balancer: Kubernetes Services translated at the socket, as Cilium's
 * kube-proxy replacement does (bpf_sock.c). cgroup/sock_addr programs on the cgroup v2 root:
 *
 *   nm_lb_connect4  connect() of TCP and UDP sockets: frontend → a backend (random slot, or the
 *                   affinity entry), before the first packet exists; no backend → ECONNREFUSED
 *   nm_lb_sendmsg4  sendmsg()/sendto() of unconnected UDP sockets: the same, per datagram
 *   nm_lb_recvmsg4  recvmsg()/recvfrom() of UDP: the reply's source goes back to the frontend
 *   nm_lb_getpeer4  getpeername(): the application sees the frontend, not the backend
 *   nm_lb_bind4     bind() in the host netns to a port a NodePort uses → EADDRINUSE
 *
 * Attached at the root, the programs see every socket of the machine. Only sockets whose network
 * namespace is in nm_lb_netns (this node's pods; the host netns if this node translates host
 * processes) are considered, and of those only destinations that are frontends in nm_lb_svc:
 * everything else passes untouched. Several simulated nodes each attach their own programs (with
 * BPF_F_ALLOW_MULTI) over their own pinned maps; a socket belongs to at most one node's pods.
 *
 * Compiled by BCC per node with -DNM_PIN_DIR="<pin dir of the node>"; every map the agent writes is
 * pinned there, so a restarted agent reuses them and services keep working meanwhile.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/in.h>
#include <uapi/linux/errno.h>

#include "include/nm_lb.h"

#ifndef NM_PIN_DIR
#error "compile with -DNM_PIN_DIR=\"/sys/fs/bpf/nodemesh/<node>\""
#endif
#ifndef NM_LB_SVC_MAX
#define NM_LB_SVC_MAX 65536
#endif
#ifndef NM_LB_BE_MAX
#define NM_LB_BE_MAX 65536
#endif
#ifndef NM_LB_REV_SK_MAX
#define NM_LB_REV_SK_MAX 262144
#endif
#ifndef NM_LB_AFFINITY_MAX
#define NM_LB_AFFINITY_MAX 65536
#endif

#define NM_PIN(name) NM_PIN_DIR "/" name
#define NM_SYS_REJECT 0
#define NM_SYS_PROCEED 1

BPF_TABLE_PINNED("hash", struct nm_lb_svc_key, struct nm_lb_svc_value, nm_lb_svc, NM_LB_SVC_MAX,
		 NM_PIN("nm_lb_svc"), BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("hash", u32, struct nm_lb_backend, nm_lb_be, NM_LB_BE_MAX, NM_PIN("nm_lb_be"),
		 BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("hash", u16, struct nm_lb_revnat, nm_lb_revnat, 65536, NM_PIN("nm_lb_revnat"),
		 BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lru_hash", struct nm_lb_rev_sk_key, struct nm_lb_rev_sk_value, nm_lb_rev_sk,
		 NM_LB_REV_SK_MAX, NM_PIN("nm_lb_rev_sk"));
BPF_TABLE_PINNED("lru_hash", struct nm_lb_affinity_key, struct nm_lb_affinity_value, nm_lb_affinity,
		 NM_LB_AFFINITY_MAX, NM_PIN("nm_lb_affinity"));
BPF_TABLE_PINNED("hash", struct nm_lb_aff_match_key, u32, nm_lb_aff_match, NM_LB_BE_MAX,
		 NM_PIN("nm_lb_aff_match"), BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("hash", u64, u32, nm_lb_netns, 4096, NM_PIN("nm_lb_netns"), BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("hash", struct nm_lb_nodeport_key, u32, nm_lb_nodeports, 4096, NM_PIN("nm_lb_nodeports"),
		 BPF_F_NO_PREALLOC);
BPF_PERCPU_ARRAY(nm_lb_stats, u64, NM_LB_STAT_MAX);
/* never used at run time: keeps the value structs in the BTF the layout test reads */
BPF_ARRAY(nm_lb_layout, struct nm_lb_affinity_value, 1);

static __always_inline int nm_lb_refuse(int err, __u32 stat)
{
	nm_lb_stats.increment(stat);
	/* the caller sees err (not EPERM); programs that run after this one cannot undo it */
	bpf_set_retval(-err);
	return NM_SYS_REJECT;
}

/* Forward translation of ctx's destination (connect4 / sendmsg4). */
static __always_inline int nm_lb_xlate(struct bpf_sock_addr *ctx, __u8 proto)
{
	__u64 nscookie = bpf_get_netns_cookie(ctx);
	if (!nm_lb_netns.lookup(&nscookie))
		return NM_SYS_PROCEED; /* not a socket of this node */

	struct nm_lb_svc_key key = {};
	key.addr = ctx->user_ip4;
	key.dport = (__be16)ctx->user_port;
	key.proto = proto;
	struct nm_lb_svc_value *svc = nm_lb_svc.lookup(&key);
	if (!svc)
		return NM_SYS_PROCEED; /* not a frontend */
	__u16 count = svc->count;
	__u16 rev_nat_id = svc->rev_nat_id;
	__u16 flags = svc->flags;
	__u64 timeout_ns = (__u64)svc->affinity_timeout * 1000000000ULL;
	if (count == 0)
		return nm_lb_refuse(ECONNREFUSED, NM_LB_STAT_NO_BACKEND);

	__u64 now = bpf_ktime_get_ns();
	__u32 backend_id = 0;
	struct nm_lb_backend *be = NULL;
	struct nm_lb_affinity_key ak = {};
	if (flags & NM_LB_F_AFFINITY) {
		ak.netns_cookie = nscookie;
		ak.rev_nat_id = rev_nat_id;
		struct nm_lb_affinity_value *av = nm_lb_affinity.lookup(&ak);
		if (av && now - av->last_used_ns <= timeout_ns) {
			struct nm_lb_aff_match_key mk = {};
			mk.backend_id = av->backend_id;
			mk.rev_nat_id = rev_nat_id;
			/* the backend must still serve this frontend (a removed one never gets a new connection) */
			if (nm_lb_aff_match.lookup(&mk)) {
				backend_id = mk.backend_id;
				be = nm_lb_be.lookup(&backend_id);
				if (be)
					nm_lb_stats.increment(NM_LB_STAT_AFFINITY);
			}
		}
	}
	if (!be) {
		key.slot = (bpf_get_prandom_u32() % count) + 1;
		struct nm_lb_svc_value *slot = nm_lb_svc.lookup(&key);
		if (!slot)
			return nm_lb_refuse(ECONNREFUSED, NM_LB_STAT_INCONSISTENT);
		backend_id = slot->backend_id;
		be = nm_lb_be.lookup(&backend_id);
		if (!be)
			return nm_lb_refuse(ECONNREFUSED, NM_LB_STAT_INCONSISTENT);
	}
	if (flags & NM_LB_F_AFFINITY) {
		struct nm_lb_affinity_value nv = {};
		nv.last_used_ns = now;
		nv.backend_id = backend_id;
		nm_lb_affinity.update(&ak, &nv);
	}

	/* remember the frontend for replies (recvmsg4) and getpeername4 */
	struct nm_lb_rev_sk_key rk = {};
	rk.cookie = bpf_get_socket_cookie(ctx);
	rk.addr = be->addr;
	rk.port = be->port;
	struct nm_lb_rev_sk_value rv = {};
	rv.addr = ctx->user_ip4;
	rv.port = (__be16)ctx->user_port;
	rv.rev_nat_id = rev_nat_id;
	nm_lb_rev_sk.update(&rk, &rv);

	ctx->user_ip4 = be->addr;
	ctx->user_port = (__u32)be->port;
	nm_lb_stats.increment(NM_LB_STAT_XLATE);
	return NM_SYS_PROCEED;
}

/* Reverse translation: the peer a socket reports (recvmsg4 source, getpeername4) back to the
 * frontend, if this socket was translated by this node and the frontend still exists. */
static __always_inline int nm_lb_reverse(struct bpf_sock_addr *ctx)
{
	struct nm_lb_rev_sk_key rk = {};
	rk.cookie = bpf_get_socket_cookie(ctx);
	rk.addr = ctx->user_ip4;
	rk.port = (__be16)ctx->user_port;
	struct nm_lb_rev_sk_value *rv = nm_lb_rev_sk.lookup(&rk);
	if (!rv)
		return NM_SYS_PROCEED;
	__u16 id = rv->rev_nat_id;
	struct nm_lb_revnat *fe = nm_lb_revnat.lookup(&id);
	if (!fe || fe->addr != rv->addr || fe->port != rv->port) {
		/* the frontend went away (or its id was reused): report the real peer */
		nm_lb_rev_sk.delete(&rk);
		return NM_SYS_PROCEED;
	}
	ctx->user_ip4 = rv->addr;
	ctx->user_port = (__u32)rv->port;
	nm_lb_stats.increment(NM_LB_STAT_REVERSE);
	return NM_SYS_PROCEED;
}

int nm_lb_connect4(struct bpf_sock_addr *ctx)
{
	if (ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_UDP)
		return NM_SYS_PROCEED;
	return nm_lb_xlate(ctx, (__u8)ctx->protocol);
}

int nm_lb_sendmsg4(struct bpf_sock_addr *ctx)
{
	return nm_lb_xlate(ctx, IPPROTO_UDP);
}

int nm_lb_recvmsg4(struct bpf_sock_addr *ctx)
{
	return nm_lb_reverse(ctx);
}

int nm_lb_getpeer4(struct bpf_sock_addr *ctx)
{
	return nm_lb_reverse(ctx);
}

int nm_lb_bind4(struct bpf_sock_addr *ctx)
{
	if (ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_UDP)
		return NM_SYS_PROCEED;
	__u64 nscookie = bpf_get_netns_cookie(ctx);
	__u32 *ns = nm_lb_netns.lookup(&nscookie);
	/* NodePorts live on the node: only the host netns can collide with them (pods have their own) */
	if (!ns || !(*ns & NM_LB_NS_HOST))
		return NM_SYS_PROCEED;
	struct nm_lb_nodeport_key k = {};
	k.port = (__be16)ctx->user_port;
	k.proto = (__u8)ctx->protocol;
	if (k.port && nm_lb_nodeports.lookup(&k))
		return nm_lb_refuse(EADDRINUSE, NM_LB_STAT_BIND_DENIED);
	return NM_SYS_PROCEED;
}
