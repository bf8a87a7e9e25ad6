// SPDX-License-Identifier: MIT OR Apache-2.0
// The floor for per-packet cost: an XDP program that does nothing but pass.
// Built by scan-bench with `clang-22 -O2 -g -target bpf -c`; self-contained
// (no libbpf or kernel headers needed).

struct xdp_md;

#define SEC(name) __attribute__((section(name), used))
#define XDP_PASS 2

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	(void)ctx;
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
