// SPDX-License-Identifier: GPL-2.0
/* tc_next: a tc classifier that counts packets and bytes (skb->len) and hands
 * every packet on: it returns TC_ACT_UNSPEC (-1), which on a tcx hook is
 * TCX_NEXT (the next program on the hook runs) and on a clsact hook in direct
 * action mode means "no verdict" (the next filter runs).
 *
 * Beside tc_counter (which returns TC_ACT_OK, a final verdict that ends the
 * hook's run) it shows the order programs run in on one tcx hook: a tc_next
 * placed after a tc_counter never sees a packet.
 *
 * Section "classifier": libbpf 0.3 (Debian 11) does not know "tc"/"tcx".
 *
 * Map next_stats: PERCPU_ARRAY, one entry (key 0), value struct counters.
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
} next_stats SEC(".maps");

SEC("classifier")
int tc_next(struct __sk_buff *skb)
{
	__u32 key = 0;
	struct counters *c = bpf_map_lookup_elem(&next_stats, &key);

	if (c) {
		c->packets += 1;
		c->bytes += skb->len;
	}
	return TC_ACT_UNSPEC;
}

char LICENSE[] SEC("license") = "GPL";
