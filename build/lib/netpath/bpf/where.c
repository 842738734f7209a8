// SPDX-License-Identifier: GPL-2.0
/*
 * The device filter every program shares. It is a .c file netpath places
 * ahead of the program's own, not a header: BCC rewrites map calls such as
 * iface_filter.lookup() only in the main source text.
 */
#include "netpath.h"

#ifdef FILTER_IFACE
/* key: netns inode << 32 | ifindex, filled by netpath from --iface */
BPF_HASH(iface_filter, u64, u8, IFACE_FILTER_SLOTS);
#endif

/* FILTER_NETNS (inode) and FILTER_IFACE (iface_filter); returns 1 when the device passes. */
static __always_inline int np_passes_where(u32 netns, u32 ifindex)
{
#ifdef FILTER_NETNS
	if (netns != FILTER_NETNS)
		return 0;
#endif
#ifdef FILTER_IFACE
	u64 ifkey = ((u64)netns << 32) | ifindex;

	if (!iface_filter.lookup(&ifkey))
		return 0;
#endif
	return 1;
}
