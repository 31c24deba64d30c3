// SPDX-License-Identifier: GPL-2.0
/* xdp_port_drop: drops UDP datagrams to one destination port, passes
 * everything else. The port is a load-time setting, not a map entry:
 *
 *   const volatile __u16 drop_port  (.rodata), in host byte order, compared
 *   with the UDP destination port; 0 (the default) drops nothing. Set it
 *   before load (ebpf_program's `globals: {drop_port: 53}`); the verifier
 *   sees the frozen value. Needs global data: kernel 5.2+.
 *
 * UDP over IPv4 (any header length) and over IPv6 (UDP as the first next
 * header, no extension headers) is matched; fragments after the first carry
 * no UDP header and pass.
 *
 * Map port_verdicts: PERCPU_ARRAY, 2 entries, key 0 = passed, 1 = dropped,
 *   value __u64 frames.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define VERDICT_PASSED 0
#define VERDICT_DROPPED 1
#define IP_OFFSET_MASK 0x1fff

const volatile __u16 drop_port = 0;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} port_verdicts SEC(".maps");

static __always_inline int verdict(__u32 which, int action)
{
	__u64 *frames = bpf_map_lookup_elem(&port_verdicts, &which);

	if (frames)
		*frames += 1;
	return action;
}

SEC("xdp")
int xdp_port_drop(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct udphdr *udp;

	if ((void *)(eth + 1) > data_end)
		return verdict(VERDICT_PASSED, XDP_PASS);

	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > data_end || ip->protocol != IPPROTO_UDP || ip->ihl < 5)
			return verdict(VERDICT_PASSED, XDP_PASS);
		if (ip->frag_off & bpf_htons(IP_OFFSET_MASK))
			return verdict(VERDICT_PASSED, XDP_PASS);
		udp = (void *)ip + ip->ihl * 4;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end || ip6->nexthdr != IPPROTO_UDP)
			return verdict(VERDICT_PASSED, XDP_PASS);
		udp = (void *)(ip6 + 1);
	} else {
		return verdict(VERDICT_PASSED, XDP_PASS);
	}

	if ((void *)(udp + 1) > data_end)
		return verdict(VERDICT_PASSED, XDP_PASS);
	if (drop_port && bpf_ntohs(udp->dest) == drop_port)
		return verdict(VERDICT_DROPPED, XDP_DROP);
	return verdict(VERDICT_PASSED, XDP_PASS);
}

char LICENSE[] SEC("license") = "GPL";
