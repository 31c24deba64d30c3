// SPDX-License-Identifier: GPL-2.0
/* cgroup_egress: counts the packets and bytes (skb->len) that processes in a
 * cgroup (v2) send, and allows all of them.
 *
 * Map egress_bytes: PERCPU_ARRAY, one entry (key 0), value struct counters.
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
} egress_bytes SEC(".maps");

SEC("cgroup_skb/egress")
int cgroup_egress_bytes(struct __sk_buff *skb)
{
	__u32 key = 0;
	struct counters *c = bpf_map_lookup_elem(&egress_bytes, &key);

	if (c) {
		c->packets += 1;
		c->bytes += skb->len;
	}
	return 1;	/* allow */
}

char LICENSE[] SEC("license") = "GPL";
