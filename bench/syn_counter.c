// SPDX-License-Identifier: MIT OR Apache-2.0
//
// C reference for scan-bench: the same parsing and counting as scan-ebpf, written
// the way an XDP program is usually written in C (xdp-tutorial style), so the Rust
// program's per-packet cost can be compared with what clang makes of the same job.
//
// Differences from scan-ebpf, on purpose:
// - Ports are counted in a PERCPU_ARRAY of 65,536 u64 indexed by port (the classic
//   layout); scan-ebpf uses one BPF_F_MMAPABLE array of CPU slices so userspace
//   can read it by mmap. scan-bench also reads this map by batch and per key.
// - The same runtime debug switch (an ARRAY of one u32 read on every packet), but
//   no aya-log behind it: with the switch off, as in every benchmark, the log
//   path never runs in either program.
// - Built with -DSKETCH (scan-bench's c_reference_sketch), it also keeps the distinct
//   sources and targets per port exactly as scan-ebpf's sketch module does: the same
//   slot layout (scan_common::SketchSlot), hashes, probing, exact list and register
//   update. The sampling branch is the same test of the slot's budget; its ring-buffer
//   write is left out (benchmarks run with every budget 0, so neither program takes it).
// Classes and their numbers are those of scan_common::PacketClass.
//
// Built by scan-bench with `clang-22 -O2 -g -target bpf -c`; self-contained
// (no libbpf or kernel headers needed). -g gives the BTF that BTF-defined maps need.

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;

struct xdp_md {
	__u32 data;
	__u32 data_end;
	__u32 data_meta;
	__u32 ingress_ifindex;
	__u32 rx_queue_index;
	__u32 egress_ifindex;
};

#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) __typeof__(val) *name
#define __always_inline inline __attribute__((always_inline))

#define XDP_PASS 2
#define BPF_MAP_TYPE_PERCPU_ARRAY 6

static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;

#define PORTS 65536
#define MAX_VLAN_TAGS 2
#define MAX_IPV6_EXT_HEADERS 6

enum packet_class {
	SEEN = 0,
	VLAN = 1,
	IPV4 = 2,
	IPV6 = 3,
	TCP = 4,
	SYN = 5,
	NON_TCP = 6,
	NON_IP = 7,
	TRUNCATED = 8,
	BAD_HEADER = 9,
	LATER_FRAGMENT = 10,
	HEADER_LIMIT = 11,
	CLASS_COUNT = 12,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PORTS);
	__type(key, __u32);
	__type(value, __u64);
} REF_PORT_SYNS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CLASS_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} REF_CLASSES SEC(".maps");

#define BPF_MAP_TYPE_ARRAY 2

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} REF_CONFIG SEC(".maps");

#define ETH_HLEN 14
#define VLAN_HLEN 4
#define IPV4_HLEN 20
#define IPV6_HLEN 40
#define TCP_HLEN 20

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88A8

#define IPPROTO_TCP 6
#define IPV6_HOPOPTS 0
#define IPV6_ROUTING 43
#define IPV6_FRAGMENT 44
#define IPV6_AH 51
#define IPV6_DSTOPTS 60

#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10

#ifdef SKETCH
#define SKETCH_SLOTS 512
#define SKETCH_PROBES 8
#define SKETCH_EXACT 16
#define SKETCH_REGISTERS 4096
#define BPF_F_MMAPABLE (1U << 10)

struct sketch {
	__u32 exact_len;
	__u32 exact[SKETCH_EXACT];
	__u8 registers[SKETCH_REGISTERS];
};

struct slot {
	__u32 port;
	__u32 misses;
	__u32 sample_budget;
	__u32 pad;
	struct sketch sources;
	struct sketch targets;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SKETCH_SLOTS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct slot);
} REF_SKETCHES SEC(".maps");

static __always_inline __u64 mix64(__u64 x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	x ^= x >> 33;
	return x;
}

static __always_inline __u32 be32(const __u8 *p)
{
	__u32 v;
	__builtin_memcpy(&v, p, 4);
	return __builtin_bswap32(v);
}

static __always_inline __u64 be64(const __u8 *p)
{
	__u64 v;
	__builtin_memcpy(&v, p, 8);
	return __builtin_bswap64(v);
}

static __always_inline __u64 hash_v4(__u32 a)
{
	return mix64((__u64)a | 0x4000000000000000ULL);
}

static __always_inline __u64 hash_v6(__u64 high, __u64 low)
{
	return mix64(high ^ mix64(low ^ 0x6000000000000006ULL));
}

static __always_inline void insert(struct sketch *s, __u64 h)
{
	__u32 fingerprint = h >> 32;
	__u32 len = s->exact_len;
	if (len <= SKETCH_EXACT) {
		for (__u32 i = 0; i < SKETCH_EXACT; i++) {
			if (i >= len)
				break;
			if (s->exact[i] == fingerprint)
				return;
		}
		if (len < SKETCH_EXACT) {
			s->exact[len & (SKETCH_EXACT - 1)] = fingerprint;
			s->exact_len = len + 1;
		} else {
			s->exact_len = SKETCH_EXACT + 1;
		}
	}
	__u32 index = h >> 52;
	__u8 rank = __builtin_clzll((h << 12) | (1ULL << 11)) + 1;
	if (s->registers[index] < rank)
		s->registers[index] = rank;
}

static __always_inline struct slot *slot_of(__u32 port)
{
	__u32 tag = port + 1;
	__u32 home = (__u32)mix64((__u64)port | 0x5000000000000000ULL) & (SKETCH_SLOTS - 1);
#pragma clang loop unroll(full)
	for (__u32 probe = 0; probe < SKETCH_PROBES; probe++) {
		__u32 key = (home + probe) & (SKETCH_SLOTS - 1);
		struct slot *s = bpf_map_lookup_elem(&REF_SKETCHES, &key);
		if (!s)
			return 0;
		if (s->port == tag)
			return s;
		if (s->port == 0) {
			s->port = tag;
			return s;
		}
	}
	struct slot *s = bpf_map_lookup_elem(&REF_SKETCHES, &home);
	if (s)
		s->misses++;
	return 0;
}

static __always_inline void sketch(__u32 port, __u64 source, __u64 target)
{
	struct slot *s = slot_of(port);
	if (!s)
		return;
	insert(&s->sources, source);
	insert(&s->targets, target);
	if (s->sample_budget)
		s->sample_budget--;
}
#endif

static __always_inline void bump(__u32 class)
{
	__u64 *counter = bpf_map_lookup_elem(&REF_CLASSES, &class);
	if (counter)
		*counter += 1;
}

static __always_inline __u16 be16(const __u8 *p)
{
	return (__u16)((p[0] << 8) | p[1]);
}

// Returns the outcome class; sets *port for a SYN (SYN set, ACK clear).
// With SKETCH, a SYN's address hashes go to hashes[0] (source) and hashes[1] (target).
static __always_inline __u32 tcp(__u8 *p, __u8 *end, __u32 *port, __u8 *ip, int v6,
				 __u64 *hashes)
{
	if (p + TCP_HLEN > end)
		return TRUNCATED;
	__u32 header_len = (p[12] >> 4) * 4;
	if (header_len < TCP_HLEN)
		return BAD_HEADER;
	if (p + header_len > end)
		return TRUNCATED;
	__u8 flags = p[13];
	if ((flags & TCP_FLAG_SYN) && !(flags & TCP_FLAG_ACK)) {
		*port = be16(p + 2);
#ifdef SKETCH
		if (v6) {
			hashes[0] = hash_v6(be64(ip + 8), be64(ip + 16));
			hashes[1] = hash_v6(be64(ip + 24), be64(ip + 32));
		} else {
			hashes[0] = hash_v4(be32(ip + 12));
			hashes[1] = hash_v4(be32(ip + 16));
		}
#endif
	}
	return TCP;
}

static __always_inline __u32 ipv4(__u8 *p, __u8 *end, __u32 *port, __u64 *hashes)
{
	if (p + IPV4_HLEN > end)
		return TRUNCATED;
	__u32 header_len = (p[0] & 0x0F) * 4;
	if ((p[0] >> 4) != 4 || header_len < IPV4_HLEN)
		return BAD_HEADER;
	if (p + header_len > end)
		return TRUNCATED;
	if (be16(p + 6) & 0x1FFF)
		return LATER_FRAGMENT;
	if (p[9] != IPPROTO_TCP)
		return NON_TCP;
	return tcp(p + header_len, end, port, p, 0, hashes);
}

static __always_inline __u32 ipv6(__u8 *p, __u8 *end, __u32 *port, __u64 *hashes)
{
	if (p + IPV6_HLEN > end)
		return TRUNCATED;
	__u8 *ip = p;
	if ((p[0] >> 4) != 6)
		return BAD_HEADER;
	__u8 next_header = p[6];
	p += IPV6_HLEN;
#pragma clang loop unroll(full)
	for (int walked = 0; walked <= MAX_IPV6_EXT_HEADERS; walked++) {
		__u8 current = next_header;
		switch (current) {
		case IPPROTO_TCP:
			return tcp(p, end, port, ip, 1, hashes);
		case IPV6_HOPOPTS:
		case IPV6_ROUTING:
		case IPV6_DSTOPTS:
		case IPV6_FRAGMENT:
		case IPV6_AH:
			break;
		default:
			return NON_TCP;
		}
		if (walked == MAX_IPV6_EXT_HEADERS)
			return HEADER_LIMIT;
		// Every extension header is at least 8 bytes: (next header, length, ...).
		if (p + 8 > end)
			return TRUNCATED;
		next_header = p[0];
		__u32 len;
		if (current == IPV6_FRAGMENT) {
			if (be16(p + 2) >> 3)
				return LATER_FRAGMENT;
			len = 8;
		} else if (current == IPV6_AH) {
			len = (p[1] + 2) * 4; // RFC 4302: 4-byte units, minus 2
		} else {
			len = (p[1] + 1) * 8;
		}
		if (p + len > end)
			return TRUNCATED;
		p += len;
	}
	return HEADER_LIMIT;
}

static __always_inline __u32 classify(struct xdp_md *ctx, __u32 *port, __u64 *hashes)
{
	__u8 *data = (__u8 *)(long)ctx->data;
	__u8 *end = (__u8 *)(long)ctx->data_end;
	if (data + ETH_HLEN > end)
		return TRUNCATED;
	__u16 ether_type = be16(data + 12);
	__u8 *p = data + ETH_HLEN;
#pragma clang loop unroll(full)
	for (int tag = 0; tag <= MAX_VLAN_TAGS; tag++) {
		if (ether_type != ETH_P_8021Q && ether_type != ETH_P_8021AD)
			break;
		if (tag == MAX_VLAN_TAGS)
			return HEADER_LIMIT;
		if (tag == 0)
			bump(VLAN);
		if (p + VLAN_HLEN > end)
			return TRUNCATED;
		ether_type = be16(p + 2);
		p += VLAN_HLEN;
	}
	if (ether_type == ETH_P_IP) {
		bump(IPV4);
		return ipv4(p, end, port, hashes);
	}
	if (ether_type == ETH_P_IPV6) {
		bump(IPV6);
		return ipv6(p, end, port, hashes);
	}
	return NON_IP;
}

SEC("xdp")
int ref_syn_counter(struct xdp_md *ctx)
{
	__u32 port = PORTS; // none
	__u64 hashes[2] = {0, 0};
	bump(SEEN);
	bump(classify(ctx, &port, hashes));
	if (port < PORTS) {
		bump(SYN);
		__u64 *counter = bpf_map_lookup_elem(&REF_PORT_SYNS, &port);
		if (counter)
			*counter += 1;
#ifdef SKETCH
		sketch(port, hashes[0], hashes[1]);
#endif
	}
	__u32 zero = 0;
	__u32 *debug = bpf_map_lookup_elem(&REF_CONFIG, &zero);
	if (debug && *debug)
		bump(port < PORTS ? SYN : SEEN); // stands in for the log record
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
