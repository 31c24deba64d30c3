// SPDX-License-Identifier: GPL-2.0
/* fentry_unlinkat: counts calls of the kernel function do_unlinkat through
 * an fentry trampoline (BTF based, no kprobes needed; kernel 5.5+ on x86).
 *
 * Only the first argument (int dfd) is declared; it is not read, so no
 * kernel type is needed (no vmlinux.h, no CO-RE).
 *
 * Map fentry_count: ARRAY, one entry (key 0), value __u64 (atomic add).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} fentry_count SEC(".maps");

SEC("fentry/do_unlinkat")
int BPF_PROG(fentry_unlinkat, int dfd)
{
	__u32 key = 0;
	__u64 *count = bpf_map_lookup_elem(&fentry_count, &key);

	if (count)
		__sync_fetch_and_add(count, 1);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
