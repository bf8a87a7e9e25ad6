// SPDX-License-Identifier: MIT OR Apache-2.0
// The floor for the TCX entry point's per-packet cost: a sched_cls program that does
// nothing but return TC_ACT_UNSPEC ("next"), as scan-ebpf's scan_tc does.
// Built by scan-bench with `clang-22 -O2 -g -target bpf -c`; self-contained.

struct __sk_buff;

#define SEC(name) __attribute__((section(name), used))
#define TC_ACT_UNSPEC (-1)

SEC("classifier")
int tc_pass(struct __sk_buff *skb)
{
	(void)skb;
	return TC_ACT_UNSPEC;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
