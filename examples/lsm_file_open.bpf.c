// SPDX-License-Identifier: GPL-2.0
/* lsm_file_open: counts calls of the LSM hook file_open (every open of a
 * file, system wide) and ALWAYS returns 0: it never denies anything.
 * Attaching needs CONFIG_BPF_LSM and "bpf" in the active LSM list.
 *
 * The hook's arguments (struct file *file) are not read: no kernel type is
 * needed (no vmlinux.h, no CO-RE).
 *
 * Map file_open_count: PERCPU_ARRAY, one entry (key 0), value __u64.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} file_open_count SEC(".maps");

SEC("lsm/file_open")
int BPF_PROG(lsm_file_open, void *file)
{
	__u32 key = 0;
	__u64 *count = bpf_map_lookup_elem(&file_open_count, &key);

	if (count)
		*count += 1;
	return 0;	/* never deny */
}

char LICENSE[] SEC("license") = "GPL";
