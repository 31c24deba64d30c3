// SPDX-License-Identifier: GPL-2.0
/* tp_openat: counts openat(2) calls, system wide, at the
 * syscalls:sys_enter_openat tracepoint.
 *
 * Map openat_count: ARRAY, one entry (key 0), value __u64, added to
 * atomically (one shared counter for all CPUs).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} openat_count SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_openat")
int count_openat(void *ctx)
{
	__u32 key = 0;
	__u64 *count = bpf_map_lookup_elem(&openat_count, &key);

	if (count)
		__sync_fetch_and_add(count, 1);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
