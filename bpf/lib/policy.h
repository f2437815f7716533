/* Policy verdict from the two LPM hits (identity-specific and any-identity), with Cilium's precedence:
 * L3+L4 > L4-only > L3+proto > proto-only > L3-only > all; a deny in either hit wins.
 * Pure helper: the lookups themselves are in nm_tc.c (BCC rewrites map accesses only there). */
#ifndef NM_LIB_POLICY_H
#define NM_LIB_POLICY_H

static __always_inline __u8 nm_match_type(const struct nm_policy_value *v, int l3)
{
	if (v->port_prefix)
		return l3 ? NM_MATCH_L3_L4 : NM_MATCH_L4_ONLY;
	if (v->proto_prefix)
		return l3 ? NM_MATCH_L3_PROTO : NM_MATCH_PROTO_ONLY;
	return l3 ? NM_MATCH_L3_ONLY : NM_MATCH_ALL;
}

/* Returns the winning entry (NULL if neither hit) and sets *match; *deny_hit if the winner denies. */
static __always_inline const struct nm_policy_value *
nm_policy_select(const struct nm_policy_value *l3, const struct nm_policy_value *any, __u8 *match)
{
	if (l3 && (l3->flags & NM_POLICY_DENY)) {
		*match = nm_match_type(l3, 1);
		return l3;
	}
	if (any && (any->flags & NM_POLICY_DENY)) {
		*match = nm_match_type(any, 0);
		return any;
	}
	if (l3 && any) {
		/* more specific port first, then protocol, then the identity-specific entry */
		if (any->port_prefix > l3->port_prefix ||
		    (any->port_prefix == l3->port_prefix && any->proto_prefix > l3->proto_prefix)) {
			*match = nm_match_type(any, 0);
			return any;
		}
		*match = nm_match_type(l3, 1);
		return l3;
	}
	if (l3) {
		*match = nm_match_type(l3, 1);
		return l3;
	}
	if (any) {
		*match = nm_match_type(any, 0);
		return any;
	}
	*match = NM_MATCH_NONE;
	return 0;
}

#endif
