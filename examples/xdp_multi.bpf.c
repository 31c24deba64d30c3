// SPDX-License-Identifier: GPL-2.0
/* xdp_multi: TWO programs in one object, both in section "xdp", so a loader
 * must be told which one to use (by program name). Both pass every packet.
 *
 * xdp_pass_a counts into map count_a, xdp_pass_b into count_b:
 * ARRAY, one entry (key 0), value __u64 packets (atomic add).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} count_a SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} count_b SEC(".maps");

SEC("xdp")
int xdp_pass_a(struct xdp_md *ctx)
{
	__u32 key = 0;
	__u64 *count = bpf_map_lookup_elem(&count_a, &key);

	if (count)
		__sync_fetch_and_add(count, 1);
	return XDP_PASS;
}

SEC("xdp")
int xdp_pass_b(struct xdp_md *ctx)
{
	__u32 key = 0;
	__u64 *count = bpf_map_lookup_elem(&count_b, &key);

	if (count)
		__sync_fetch_and_add(count, 1);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
