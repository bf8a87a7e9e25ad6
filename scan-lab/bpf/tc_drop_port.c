// SPDX-License-Identifier: MIT OR Apache-2.0
// A tc (sched_cls) program for the TCX ordering test: drops IPv4 TCP segments to
// DROP_PORT (set at load time), lets everything else go on (TCX_NEXT). Untagged
// Ethernet only. Built by scan-lab with `clang-22 -O2 -g -target bpf -c`.

struct __sk_buff {
	unsigned int len, pkt_type, mark, queue_mapping, protocol, vlan_present,
		vlan_tci, vlan_proto, priority, ingress_ifindex, ifindex, tc_index,
		cb[5], hash, tc_classid, data, data_end;
};

#define SEC(name) __attribute__((section(name), used))
#define TC_ACT_SHOT 2
#define TCX_NEXT -1

volatile const unsigned short DROP_PORT = 0;

SEC("classifier")
int tc_drop_port(struct __sk_buff *skb)
{
	unsigned char *data = (unsigned char *)(unsigned long)skb->data;
	unsigned char *end = (unsigned char *)(unsigned long)skb->data_end;
	if (data + 14 + 20 + 20 > end)
		return TCX_NEXT;
	if (data[12] != 0x08 || data[13] != 0x00 || data[14] != 0x45 || data[23] != 6)
		return TCX_NEXT;
	unsigned short dport = (unsigned short)(data[36] << 8 | data[37]);
	return dport == DROP_PORT ? TC_ACT_SHOT : TCX_NEXT;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
