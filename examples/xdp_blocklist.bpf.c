// SPDX-License-Identifier: GPL-2.0
/* xdp_blocklist: drops IPv4 packets whose source address is in the map
 * "blocklist", passes everything else.
 *
 * Map blocklist: HASH, key __u32 IPv4 source address in network byte order
 *   (as it appears on the wire), value __u64 packets dropped from it.
 * Map verdicts:  PERCPU_ARRAY, 2 entries, key 0 = passed, 1 = dropped,
 *   value __u64 packets.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define VERDICT_PASSED 0
#define VERDICT_DROPPED 1

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u64);
} blocklist SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} verdicts SEC(".maps");

static __always_inline int count_verdict(__u32 verdict, int action)
{
	__u64 *packets = bpf_map_lookup_elem(&verdicts, &verdict);

	if (packets)
		*packets += 1;
	return action;
}

SEC("xdp")
int xdp_blocklist(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	__u32 saddr;
	__u64 *dropped;

	if ((void *)(eth + 1) > data_end)
		return count_verdict(VERDICT_PASSED, XDP_PASS);
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return count_verdict(VERDICT_PASSED, XDP_PASS);

	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return count_verdict(VERDICT_PASSED, XDP_PASS);

	saddr = ip->saddr;	/* network byte order, used as is */
	dropped = bpf_map_lookup_elem(&blocklist, &saddr);
	if (!dropped)
		return count_verdict(VERDICT_PASSED, XDP_PASS);

	__sync_fetch_and_add(dropped, 1);
	return count_verdict(VERDICT_DROPPED, XDP_DROP);
}

char LICENSE[] SEC("license") = "GPL";
