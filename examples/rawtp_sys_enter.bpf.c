// SPDX-License-Identifier: GPL-2.0
/* rawtp_sys_enter: counts every system call entry (raw tracepoint
 * sys_enter), system wide.
 *
 * Map sys_enter_count: PERCPU_ARRAY, one entry (key 0), value __u64.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sys_enter_count SEC(".maps");

SEC("raw_tracepoint/sys_enter")
int count_sys_enter(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 key = 0;
	__u64 *count = bpf_map_lookup_elem(&sys_enter_count, &key);

	if (count)
		*count += 1;
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
