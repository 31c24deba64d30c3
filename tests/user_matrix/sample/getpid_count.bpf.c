// SPDX-License-Identifier: GPL-2.0
/* getpid_count: a program that is not one of the collection's examples, for the user matrix
 * (docs/harness.md, "Your own programs across kernels"). Counts getpid(2) calls, system wide, at the
 * syscalls:sys_enter_getpid tracepoint.
 *
 * Map getpid_calls: ARRAY, one entry (key 0), value __u64, added to atomically.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} getpid_calls SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getpid")
int count_getpid(void *ctx)
{
	__u32 key = 0;
	__u64 *count = bpf_map_lookup_elem(&getpid_calls, &key);

	if (count)
		__sync_fetch_and_add(count, 1);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
