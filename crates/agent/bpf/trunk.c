// SPDX-License-Identifier: GPL-2.0
// Host side of Neutron trunks on a kernel without 802.1q devices: tc (cls_bpf, direct
// action) programs that move a subport's frames between the parent port's tap, where they
// carry the subport's VLAN tag, and the subport's veth, whose peer is an ordinary guarded
// port on the subport network's bridge. Which VLAN of which parent goes to which veth is in
// two maps the agent fills; nothing here is compiled per subport.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define VLAN_VID_MASK 0x0fff

// A parent tap and a VLAN id on it.
struct parent_vlan {
	__u32 ifindex;
	__u32 vlan;
};

// Parent tap + VLAN -> the subport veth's node end (frames leaving the guest).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct parent_vlan);
	__type(value, __u32);
} to_subport SEC(".maps");

// Subport veth's node end -> parent tap + VLAN (frames for the guest).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct parent_vlan);
} to_parent SEC(".maps");

// On the parent tap's ingress: a tagged frame of a known VLAN loses its tag and leaves
// through the subport's veth (arriving on the bridge from its peer); untagged frames are the
// parent's own and go on to the parent's bridge; a tag nobody claimed is dropped.
SEC("classifier")
int trunk_parent(struct __sk_buff *skb)
{
	__u32 vid;

	if (skb->vlan_present) {
		vid = skb->vlan_tci & VLAN_VID_MASK;
	} else {
		void *data = (void *)(long)skb->data;
		void *end = (void *)(long)skb->data_end;
		struct ethhdr *eth = data;
		__u16 *tci = (void *)(eth + 1);

		if ((void *)(tci + 1) > end)
			return TC_ACT_OK;
		if (eth->h_proto != bpf_htons(ETH_P_8021Q))
			return TC_ACT_OK;
		vid = bpf_ntohs(*tci) & VLAN_VID_MASK;
	}
	struct parent_vlan key = { .ifindex = skb->ifindex, .vlan = vid };
	__u32 *veth = bpf_map_lookup_elem(&to_subport, &key);

	if (!veth)
		return TC_ACT_SHOT;
	if (bpf_skb_vlan_pop(skb))
		return TC_ACT_SHOT;
	return bpf_redirect(*veth, 0);
}

// On the subport veth's node end's ingress (what the bridge sent the subport): the frame
// gets the subport's tag and leaves through the parent's tap to the guest.
SEC("classifier")
int trunk_subport(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;
	struct parent_vlan *parent = bpf_map_lookup_elem(&to_parent, &ifindex);

	if (!parent)
		return TC_ACT_SHOT;
	if (bpf_skb_vlan_push(skb, bpf_htons(ETH_P_8021Q), parent->vlan))
		return TC_ACT_SHOT;
	return bpf_redirect(parent->ifindex, 0);
}

char LICENSE[] SEC("license") = "GPL";
