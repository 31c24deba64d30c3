// SPDX-License-Identifier: GPL-2.0
/* kprobe_unlinkat: counts calls of the kernel function do_unlinkat (unlink(2),
 * unlinkat(2), rmdir(2)) through a kprobe. Needs CONFIG_KPROBES to attach.
 *
 * The registers are not read, so the program needs no pt_regs layout and no
 * CO-RE: ctx is left opaque.
 *
 * Map unlink_count: ARRAY, one entry (key 0), value __u64 (atomic add).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} unlink_count SEC(".maps");

SEC("kprobe/do_unlinkat")
int kprobe_unlinkat(void *ctx)
{
	__u32 key = 0;
	__u64 *count = bpf_map_lookup_elem(&unlink_count, &key);

	if (count)
		__sync_fetch_and_add(count, 1);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
