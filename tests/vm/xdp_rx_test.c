// SPDX-License-Identifier: GPL-2.0
/*
 * Test programs for the real-NIC VM suite (tests/vm/test_realnic_vm.py), loaded with BCC in
 * the guest. xdp_drop_port drops UDP to DROP_PORT and aborts UDP to ABORT_PORT (which fires
 * xdp:xdp_exception), so the driver's XDP counters have a known count to match; tc_rx_pass is
 * a tc ingress program that passes everything, there only to be listed by `netpath probes`.
 */
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/in.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/pkt_cls.h>

int xdp_drop_port(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	struct udphdr *udp;

	if ((void *)(eth + 1) > end || eth->h_proto != htons(ETH_P_IP))
		return XDP_PASS;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->protocol != IPPROTO_UDP || ip->ihl != 5)
		return XDP_PASS;
	udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > end)
		return XDP_PASS;
	if (udp->dest == htons(DROP_PORT))
		return XDP_DROP;
	if (udp->dest == htons(ABORT_PORT))
		return XDP_ABORTED;
	return XDP_PASS;
}

int tc_rx_pass(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}
