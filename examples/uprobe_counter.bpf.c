// SPDX-License-Identifier: GPL-2.0
/* uprobe_counter: counts calls of a function of a user-space binary through a
 * uprobe (or its returns, attached as a uretprobe). Which binary and function
 * is not in the object: ebpf_program's attach.uprobe (or attach.uretprobe)
 * names them ({path, symbol} or {path, offset}, optionally a pid). The
 * section only says "a uprobe program" (libbpf 0.3 knows the "uprobe/"
 * prefix; the rest of the name is not read).
 *
 * The registers are not read, so the program needs no pt_regs layout and no
 * CO-RE: ctx is left opaque.
 *
 * Map uprobe_count: ARRAY, one entry (key 0), value __u64 (atomic add).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} uprobe_count SEC(".maps");

SEC("uprobe/func")
int uprobe_counter(void *ctx)
{
	__u32 key = 0;
	__u64 *count = bpf_map_lookup_elem(&uprobe_count, &key);

	if (count)
		__sync_fetch_and_add(count, 1);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
