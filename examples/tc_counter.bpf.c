// SPDX-License-Identifier: GPL-2.0
/* tc_counter: a tc classifier (clsact ingress or egress, or tcx) that counts
 * packets and bytes (skb->len) and lets every packet through.
 *
 * Section "classifier" rather than "tc": libbpf 0.3 (Debian 11) does not know
 * "tc"; libbpf 1.x still accepts "classifier".
 *
 * Map tc_stats: PERCPU_ARRAY, one entry (key 0), value struct counters.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
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
} tc_stats SEC(".maps");

SEC("classifier")
int tc_count(struct __sk_buff *skb)
{
	__u32 key = 0;
	struct counters *c = bpf_map_lookup_elem(&tc_stats, &key);

	if (c) {
		c->packets += 1;
		c->bytes += skb->len;
	}
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
