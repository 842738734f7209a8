// SPDX-License-Identifier: GPL-2.0
/*
 * netpath drops, who a dropped skb was for: the receiving socket's inode and
 * its cgroup v2 id (--by socket, --by cgroup, --cgroup, and every sample).
 * netpath places this unit ahead of drops.c only when one of those is asked
 * for (the OFF_SK_* and friends offsets come with it).
 */
#include "netpath.h"

#define NP_TCP_TIME_WAIT	6
#define NP_TCP_NEW_SYN_RECV	12
/*
 * The receiving socket: the tracepoint's rx_sk where the kernel passes it
 * (Linux 6.11+), else skb->sk. Time-wait and request socks are not full
 * sockets (no sk_socket, no cgroup): those stay unknown, never guessed.
 */
static __always_inline void drop_owner_of(void *skb, void *rx_sk, struct drop_owner *o)
{
	void *sk = rx_sk, *sock = NULL, *cg = NULL, *kn = NULL;
	u8 state = 0;

	if (!sk)
		NP_READ(sk, skb, OFF_SKB_SK);
	if (!sk)
		return;
	NP_READ(state, sk, OFF_SK_STATE);
	if (state == NP_TCP_TIME_WAIT || state == NP_TCP_NEW_SYN_RECV)
		return;
	NP_READ(sock, sk, OFF_SK_SOCKET);
	if (sock)
		NP_READ(o->sk_ino, sock, OFF_SOCKET_INODE + OFF_INODE_INO);
	NP_READ(cg, sk, OFF_SK_CGROUP);
	if (cg)
		NP_READ(kn, cg, OFF_CGROUP_KN);
	if (kn)
		NP_READ(o->cgroup, kn, OFF_KN_ID);
}
