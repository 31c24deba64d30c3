// SPDX-License-Identifier: GPL-2.0
/* bad_verifier: compiles, but the kernel verifier REJECTS it on purpose: it
 * reads the Ethernet header without first checking it against data_end
 * ("invalid access to packet"). Used to test how a verifier rejection is
 * reported. Do not "fix" it.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

SEC("xdp")
int xdp_bad(struct xdp_md *ctx)
{
	struct ethhdr *eth = (void *)(long)ctx->data;

	/* No "if ((void *)(eth + 1) > data_end)" here: that is the bug. */
	if (eth->h_proto == bpf_htons(ETH_P_IP))
		return XDP_DROP;
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
