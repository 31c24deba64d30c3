// SPDX-License-Identifier: GPL-2.0
/* xdp_counter: counts every packet and byte an interface receives, then
 * passes the packet on unchanged.
 *
 * Map xdp_stats: PERCPU_ARRAY, one entry (key 0), value struct counters.
 * Readers sum the per-CPU values.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct counters {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct counters);
} xdp_stats SEC(".maps");

SEC("xdp")
int xdp_count(struct xdp_md *ctx)
{
	__u32 key = 0;
	struct counters *c = bpf_map_lookup_elem(&xdp_stats, &key);

	if (c) {
		c->packets += 1;
		c->bytes += ctx->data_end - ctx->data;
	}
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
