// SPDX-License-Identifier: GPL-2.0
/* xdp_pinned_shared: passes every packet and counts it into a map pinned BY
 * NAME. libbpf pins shared_counter at <pin root>/shared_counter (default
 * /sys/fs/bpf/shared_counter, or the pin_root_path the loader gives) and
 * reuses an existing compatible pin there instead of creating a new map: two
 * loads of this object (say on two interfaces) share one counter.
 *
 * Map shared_counter: ARRAY, one entry (key 0), value __u64 (atomic add),
 * pinning LIBBPF_PIN_BY_NAME.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} shared_counter SEC(".maps");

SEC("xdp")
int xdp_shared(struct xdp_md *ctx)
{
	__u32 key = 0;
	__u64 *count = bpf_map_lookup_elem(&shared_counter, &key);

	if (count)
		__sync_fetch_and_add(count, 1);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
