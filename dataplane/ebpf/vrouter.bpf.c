// SPDX-License-Identifier: GPL-2.0
/*
 * The vRouter's kernel datapath: the per-packet path of live flows, in the kernel.
 *
 * Built by `make install` (clang -target bpf, Debian's libbpf headers) into vrouter.bpf.o beside
 * this file; loaded and attached by dataplane/linux/ebpf.py.  The spec is the Python engine
 * (dataplane/core/fastpath.py and flowsetup.py): this program does what that engine does for a
 * packet of a live flow, and hands every other packet up to it unchanged.
 *
 * The flow table is `vr_flows`, an mmappable BPF array of 128-byte records: its first 32 values
 * are the table's 4096-byte header, then entry i is value 32 + i, laid out as flows/layout.py says.
 * Who writes what (flows/table.py keeps the rule too): the agent's Python engine alone creates,
 * changes and removes entries, writing a record first and its flags last; this program only reads
 * them and adds to the packets and bytes (atomic adds), ORs the TCP flags it sees into the word at
 * offset 52 (an atomic OR that leaves the generation and VRF bytes as they are), stores the
 * last-used time (one aligned 8-byte store) and clears New flow on a pair's first answer (an
 * atomic AND of the word at offset 44).
 *
 * Programs:
 *   vr_ingress  clsact ingress of every VM tap and of vhost0.  The packet's vif is the device's
 *               (vr_ifvif).  A hit on a live entry: Forward to a local VM is a redirect to its tap
 *               (MACs rewritten, TTL decremented, as the kernel's routing would); NAT rewrites
 *               addresses and ports from the reverse entry's key (as the vRouter does) and passes
 *               the packet up marked `fast_mark` (nftables accepts it before any queue rule: to
 *               the local proxy, to the fabric, or from the fabric to the VM); Drop drops and
 *               counts the reason.  The pair's first answer clears New flow on both halves, as
 *               the engine does.  Anything else is passed up unmarked, and nftables queues it to
 *               the Python engine through the VM's own queues, as in nfqueue mode: a miss, TCP
 *               SYN and RST (the engine keeps the TCP lifecycle: set-up, restart, reset; a pair's
 *               second FIN is forwarded here and told to the engine on a ring, which closes the
 *               pair as if it had seen it; the first FIN is only recorded, as the engine does),
 *               trap entries (no reverse), Hold, fragments (IPv4 or IPv6), IPv4 options, IPv6
 *               extension headers that walk6 does not walk (the engine drops them), ICMP other
 *               than echo, a flow to a tunnel, a vif under capture, a TTL that would expire, an
 *               entry changing under us.
 *   vr_egress   clsact egress of every VM tap: the node's own packets to a metadata IP
 *               (169.254.0.0/16, fd00:a9fe:a9fe::/64: the proxy's replies) that nftables let by
 *               (TCP without SYN or RST, and SYN-ACKs: it queues the rest) get the reverse NAT
 *               here, and a second FIN is told to the engine as on ingress.  Egress cannot
 *               hand a packet to NFQUEUE, so a miss is dropped (Flow NAT no rflow, as the engine
 *               would); any other packet passes untouched.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define HEADER_RECORDS 32
#define BUCKET_SIZE 4
#define MAX_WRITERS 4
#define MAX_CHAIN 24
#define MAX_VIFS 65536
#define MAX_REASONS 32

#define F_ACTIVE 0x0001
#define F_NEW_FLOW 0x0200
#define F_RFLOW_VALID 0x1000
#define F1_REVERSE 0x0001
#define F1_HELD 0x0002 /* the engine may still hold packets of this flow: hand the rest up too */
#define F1_SLOW 0x0004 /* every packet of this pair is the engine's (an IPv6 link-local service flow) */
#define A_DROP 0
#define A_FORWARD 2
#define A_NAT 3
#define DR_FLOW_NAT_NO_RFLOW 5

#define VIF_TAP 1     /* a local VM's tap: a Forward flow may be redirected to it */
#define VIF_CAPTURE 2 /* under a vifdump capture: everything of it goes to the engine */

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define IPPROTO_ICMPV6_ 58

/* IPv6 extension headers, walked as dataplane/core/packet.py's parse6 walks them */
#define NH_HOP_BY_HOP 0
#define NH_ROUTING 43
#define NH_FRAGMENT 44
#define NH_DEST_OPTS 60
#define MAX_EXT 4

struct flow_key {
	__u32 nh;
	__u8 src[16];
	__u8 dst[16];
	__u16 sport; /* host order, as flows/layout.py packs them */
	__u16 dport;
	__u8 proto;
	__u8 family;
	__u16 pad;
};

struct flow_rec {
	struct flow_key key; /* 0 */
	__u16 flags;         /* 44 */
	__u8 action;
	__u8 drop;
	__u32 rindex;        /* 48 */
	__u8 gen;            /* 52 */
	__u8 tcpflags;
	__u16 vrf;
	__u16 dvrf;
	__u16 nat_sport;
	__u32 src_nh;        /* 60 */
	__u64 packets;       /* 64 */
	__u64 bytes;
	__u64 setup;
	__u64 last;          /* 88 */
	__u32 oflow_next;    /* 96 */
	__u16 vif;
	__u16 flags1;
	__u8 reserved[24];
};
_Static_assert(sizeof(struct flow_rec) == 128, "a flow record is 128 bytes");

struct header { /* the first value of vr_flows: the table's header */
	char magic[8];
	__u32 version, rec, bucket, entries, overflow, pid, writers, pad;
	__s64 clock; /* CLOCK_REALTIME - CLOCK_MONOTONIC, ns: last used is ns since the epoch */
};

struct vif {
	__u32 ifindex;
	__u16 flags;
	__u8 mac[6];
	__u32 pad;
};

struct vifstats {
	__u64 rx_packets, rx_bytes, tx_packets, tx_bytes, drops, pad[3];
};

struct config {
	__u32 host_vif;   /* the node's own vif (vhost0): K(nh) of the node's packets */
	__u32 fast_mark;  /* skb->mark of packets this program passed up (nftables accepts them) */
	__u8 vrouter_mac[6];
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct flow_rec);
	__uint(max_entries, HEADER_RECORDS + 4); /* the loader sets the table's size */
} vr_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);   /* ifindex */
	__type(value, __u32); /* vif index */
	__uint(max_entries, MAX_VIFS);
} vr_ifvif SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct vif);
	__uint(max_entries, MAX_VIFS);
} vr_vifs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct vifstats);
	__uint(max_entries, MAX_VIFS);
} vr_vifstats SEC(".maps");

struct { /* [vif * MAX_REASONS + reason]; the node's, with or without a vif, at [MAX_VIFS * MAX_REASONS + reason] */
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, (MAX_VIFS + 1) * MAX_REASONS);
} vr_drops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct config);
	__uint(max_entries, 1);
} vr_config SEC(".maps");

/* The engine's TCP lifecycle, told without handing it the packet: a pair's second FIN, which the
 * program forwards, is an event {index, generation} on the ring of the writer that owns the entry
 * (index % writers); the engine closes the pair as if it had seen the FIN.  A full ring: the FIN
 * goes up to the engine instead, as any exception does. */
struct close_event {
	__u32 index;
	__u8 gen;
	__u8 pad[3];
};

#define CLOSE_RING(n)                                   \
	struct {                                        \
		__uint(type, BPF_MAP_TYPE_RINGBUF);     \
		__uint(max_entries, 256 * 1024);        \
	} vr_close##n SEC(".maps")
CLOSE_RING(0);
CLOSE_RING(1);
CLOSE_RING(2);
CLOSE_RING(3);

static __always_inline int tell_closed(const struct header *h, __u32 idx, __u8 gen)
{
	struct close_event ev = {.index = idx, .gen = gen};
	__u32 writers = h->writers ? h->writers : 1;
	switch (idx % writers) {
	case 0:
		return bpf_ringbuf_output(&vr_close0, &ev, sizeof(ev), 0);
	case 1:
		return bpf_ringbuf_output(&vr_close1, &ev, sizeof(ev), 0);
	case 2:
		return bpf_ringbuf_output(&vr_close2, &ev, sizeof(ev), 0);
	default:
		return bpf_ringbuf_output(&vr_close3, &ev, sizeof(ev), 0);
	}
}

/* zlib's CRC-32 (reflected 0xEDB88320): the bucket must be the one Python's zlib.crc32 gives */
static const __u32 crc_table[256] = {
    0x00000000, 0x77073096, 0xee0e612c, 0x990951ba, 0x076dc419, 0x706af48f,
    0xe963a535, 0x9e6495a3, 0x0edb8832, 0x79dcb8a4, 0xe0d5e91e, 0x97d2d988,
    0x09b64c2b, 0x7eb17cbd, 0xe7b82d07, 0x90bf1d91, 0x1db71064, 0x6ab020f2,
    0xf3b97148, 0x84be41de, 0x1adad47d, 0x6ddde4eb, 0xf4d4b551, 0x83d385c7,
    0x136c9856, 0x646ba8c0, 0xfd62f97a, 0x8a65c9ec, 0x14015c4f, 0x63066cd9,
    0xfa0f3d63, 0x8d080df5, 0x3b6e20c8, 0x4c69105e, 0xd56041e4, 0xa2677172,
    0x3c03e4d1, 0x4b04d447, 0xd20d85fd, 0xa50ab56b, 0x35b5a8fa, 0x42b2986c,
    0xdbbbc9d6, 0xacbcf940, 0x32d86ce3, 0x45df5c75, 0xdcd60dcf, 0xabd13d59,
    0x26d930ac, 0x51de003a, 0xc8d75180, 0xbfd06116, 0x21b4f4b5, 0x56b3c423,
    0xcfba9599, 0xb8bda50f, 0x2802b89e, 0x5f058808, 0xc60cd9b2, 0xb10be924,
    0x2f6f7c87, 0x58684c11, 0xc1611dab, 0xb6662d3d, 0x76dc4190, 0x01db7106,
    0x98d220bc, 0xefd5102a, 0x71b18589, 0x06b6b51f, 0x9fbfe4a5, 0xe8b8d433,
    0x7807c9a2, 0x0f00f934, 0x9609a88e, 0xe10e9818, 0x7f6a0dbb, 0x086d3d2d,
    0x91646c97, 0xe6635c01, 0x6b6b51f4, 0x1c6c6162, 0x856530d8, 0xf262004e,
    0x6c0695ed, 0x1b01a57b, 0x8208f4c1, 0xf50fc457, 0x65b0d9c6, 0x12b7e950,
    0x8bbeb8ea, 0xfcb9887c, 0x62dd1ddf, 0x15da2d49, 0x8cd37cf3, 0xfbd44c65,
    0x4db26158, 0x3ab551ce, 0xa3bc0074, 0xd4bb30e2, 0x4adfa541, 0x3dd895d7,
    0xa4d1c46d, 0xd3d6f4fb, 0x4369e96a, 0x346ed9fc, 0xad678846, 0xda60b8d0,
    0x44042d73, 0x33031de5, 0xaa0a4c5f, 0xdd0d7cc9, 0x5005713c, 0x270241aa,
    0xbe0b1010, 0xc90c2086, 0x5768b525, 0x206f85b3, 0xb966d409, 0xce61e49f,
    0x5edef90e, 0x29d9c998, 0xb0d09822, 0xc7d7a8b4, 0x59b33d17, 0x2eb40d81,
    0xb7bd5c3b, 0xc0ba6cad, 0xedb88320, 0x9abfb3b6, 0x03b6e20c, 0x74b1d29a,
    0xead54739, 0x9dd277af, 0x04db2615, 0x73dc1683, 0xe3630b12, 0x94643b84,
    0x0d6d6a3e, 0x7a6a5aa8, 0xe40ecf0b, 0x9309ff9d, 0x0a00ae27, 0x7d079eb1,
    0xf00f9344, 0x8708a3d2, 0x1e01f268, 0x6906c2fe, 0xf762575d, 0x806567cb,
    0x196c3671, 0x6e6b06e7, 0xfed41b76, 0x89d32be0, 0x10da7a5a, 0x67dd4acc,
    0xf9b9df6f, 0x8ebeeff9, 0x17b7be43, 0x60b08ed5, 0xd6d6a3e8, 0xa1d1937e,
    0x38d8c2c4, 0x4fdff252, 0xd1bb67f1, 0xa6bc5767, 0x3fb506dd, 0x48b2364b,
    0xd80d2bda, 0xaf0a1b4c, 0x36034af6, 0x41047a60, 0xdf60efc3, 0xa867df55,
    0x316e8eef, 0x4669be79, 0xcb61b38c, 0xbc66831a, 0x256fd2a0, 0x5268e236,
    0xcc0c7795, 0xbb0b4703, 0x220216b9, 0x5505262f, 0xc5ba3bbe, 0xb2bd0b28,
    0x2bb45a92, 0x5cb36a04, 0xc2d7ffa7, 0xb5d0cf31, 0x2cd99e8b, 0x5bdeae1d,
    0x9b64c2b0, 0xec63f226, 0x756aa39c, 0x026d930a, 0x9c0906a9, 0xeb0e363f,
    0x72076785, 0x05005713, 0x95bf4a82, 0xe2b87a14, 0x7bb12bae, 0x0cb61b38,
    0x92d28e9b, 0xe5d5be0d, 0x7cdcefb7, 0x0bdbdf21, 0x86d3d2d4, 0xf1d4e242,
    0x68ddb3f8, 0x1fda836e, 0x81be16cd, 0xf6b9265b, 0x6fb077e1, 0x18b74777,
    0x88085ae6, 0xff0f6a70, 0x66063bca, 0x11010b5c, 0x8f659eff, 0xf862ae69,
    0x616bffd3, 0x166ccf45, 0xa00ae278, 0xd70dd2ee, 0x4e048354, 0x3903b3c2,
    0xa7672661, 0xd06016f7, 0x4969474d, 0x3e6e77db, 0xaed16a4a, 0xd9d65adc,
    0x40df0b66, 0x37d83bf0, 0xa9bcae53, 0xdebb9ec5, 0x47b2cf7f, 0x30b5ffe9,
    0xbdbdf21c, 0xcabac28a, 0x53b39330, 0x24b4a3a6, 0xbad03605, 0xcdd70693,
    0x54de5729, 0x23d967bf, 0xb3667a2e, 0xc4614ab8, 0x5d681b02, 0x2a6f2b94,
    0xb40bbe37, 0xc30c8ea1, 0x5a05df1b, 0x2d02ef8d,
};

union key_words {
	struct flow_key k;
	__u64 w[6];
};

struct pkt {
	__u32 l4;      /* offset of the L4 header */
	__u32 len;     /* the IP packet's length, as the engine counts it */
	__u8 tcpflags;
	__u8 ttl;
	__u16 pad;
};

static __always_inline struct flow_rec *record(__u32 i)
{
	__u32 k = i + HEADER_RECORDS;
	return bpf_map_lookup_elem(&vr_flows, &k);
}

static __always_inline __u32 crc32(const __u8 *d)
{
	__u32 c = 0xffffffff;
	for (int i = 0; i < 44; i++)
		c = crc_table[(c ^ d[i]) & 0xff] ^ (c >> 8);
	return ~c;
}

static __always_inline int key_eq(const struct flow_rec *r, const union key_words *k)
{
	const __u64 *a = (const __u64 *)r;
	return a[0] == k->w[0] && a[1] == k->w[1] && a[2] == k->w[2] && a[3] == k->w[3] && a[4] == k->w[4] &&
	       ((const __u32 *)r)[10] == ((const __u32 *)k->w)[10];
}

/* The index of the active entry with this key, or -1: the bucket's 4 ways, then each writer's
 * overflow chain (its head in the first entry of the bucket it owns), at most MAX_CHAIN links
 * each; a longer chain is a miss here and the engine finds the entry. */
static __always_inline long lookup(const struct header *h, const union key_words *k, struct flow_rec **out)
{
	__u32 nb = h->entries / BUCKET_SIZE;
	if (!nb)
		return -1;
	__u32 first = (crc32((const __u8 *)k->w) % nb) * BUCKET_SIZE;
	for (int w = 0; w < BUCKET_SIZE; w++) {
		struct flow_rec *r = record(first + w);
		if (r && (r->flags & F_ACTIVE) && key_eq(r, k)) {
			*out = r;
			return first + w;
		}
	}
	__u32 writers = h->writers;
	if (writers == 0)
		writers = 1;
	for (int w = 0; w < MAX_WRITERS; w++) {
		if (w >= writers)
			break;
		struct flow_rec *hr = record(first + w);
		if (!hr)
			break;
		__u32 nxt = hr->oflow_next;
		for (int n = 0; n < MAX_CHAIN; n++) {
			if (!nxt)
				break;
			struct flow_rec *r = record(nxt - 1);
			if (!r)
				break;
			if ((r->flags & F_ACTIVE) && key_eq(r, k)) {
				*out = r;
				return nxt - 1;
			}
			nxt = r->oflow_next;
		}
	}
	return -1;
}

static __always_inline __u16 fold(__s64 sum)
{
	__u32 c = (__u32)sum;
	c = (c & 0xffff) + (c >> 16);
	c = (c & 0xffff) + (c >> 16);
	return c;
}

/* The IPv6 extension headers before the transport header, walked as the engine walks them
 * (dataplane/core/packet.py, parse6): hop-by-hop options (only as the first), destination options
 * and a routing header with no segments left, each with its next header at byte 0 and its length
 * at byte 1 (8-byte units, not counting the first 8), at most MAX_EXT of them.  *proto is the IPv6
 * header's next header on entry and the transport protocol on return, *off (from the IPv6 header,
 * 40 on entry) where its header starts.  -1 for what the engine drops as Invalid Packet: a fragment
 * header, a routing header with segments left, a hop-by-hop not first, more than MAX_EXT, a header
 * past the payload (`total`, the IPv6 packet's length).  Unrolled: 4 reads of 4 bytes at most. */
static __always_inline int walk6(struct __sk_buff *skb, __u8 *proto, __u32 *off, __u32 total)
{
	__u8 nh = *proto;
	__u32 o = *off;
#pragma unroll
	for (int i = 0; i < MAX_EXT; i++) {
		if (nh != NH_HOP_BY_HOP && nh != NH_ROUTING && nh != NH_DEST_OPTS)
			break;
		if (nh == NH_HOP_BY_HOP && i)
			return -1;
		if (o + 8 > total)
			return -1;
		__u8 ext[4]; /* next header, length, (routing) type, segments left */
		if (bpf_skb_load_bytes(skb, ETH_HLEN + o, ext, 4))
			return -1;
		if (nh == NH_ROUTING && ext[3])
			return -1;
		nh = ext[0];
		o += (ext[1] + 1) * 8;
	}
	if (nh == NH_HOP_BY_HOP || nh == NH_ROUTING || nh == NH_DEST_OPTS || nh == NH_FRAGMENT || o > total)
		return -1; /* a fifth, a fragment, or the last one past the payload */
	*proto = nh;
	*off = o;
	return 0;
}

/* The flow key and what else the path needs, or -1: not a packet this program handles.  What the
 * kernel's own IP input would drop before nftables (a wrong header checksum, a length that is not
 * the frame's; on ingress, another host's frame) is not handled either: passed up, it meets the
 * same end as in nfqueue mode. */
static __always_inline int parse(struct __sk_buff *skb, union key_words *key, struct pkt *p)
{
	__u16 proto_be;
	__u8 proto;
	if (bpf_skb_load_bytes(skb, 12, &proto_be, 2))
		return -1;
	if (proto_be == bpf_htons(ETH_P_IP)) {
		__u8 ip[20];
		if (bpf_skb_load_bytes(skb, ETH_HLEN, ip, 20))
			return -1;
		if (ip[0] != 0x45) /* IPv4 options: the engine's */
			return -1;
		if (((ip[6] << 8) | ip[7]) & 0x3fff) /* a fragment */
			return -1;
		__u32 total = (ip[2] << 8) | ip[3];
		if (total < 20 || total != skb->len - ETH_HLEN)
			return -1; /* bytes past the IP length: the kernel trims them (the engine's path) */
		if (fold(bpf_csum_diff(0, 0, (__be32 *)ip, 20, 0)) != 0xffff)
			return -1; /* a wrong header checksum: the kernel's IP input drops it, as in nfqueue mode */
		proto = ip[9];
		p->ttl = ip[8];
		p->l4 = ETH_HLEN + 20;
		p->len = total;
		key->k.family = 4;
		__builtin_memcpy(key->k.src, ip + 12, 4);
		__builtin_memcpy(key->k.dst, ip + 16, 4);
	} else if (proto_be == bpf_htons(ETH_P_IPV6)) {
		__u8 ip[40];
		if (bpf_skb_load_bytes(skb, ETH_HLEN, ip, 40))
			return -1;
		if ((ip[0] >> 4) != 6)
			return -1;
		__u32 total = 40 + ((ip[4] << 8) | ip[5]);
		if (total != skb->len - ETH_HLEN)
			return -1;
		proto = ip[6];
		__u32 off = 40;
		if (walk6(skb, &proto, &off, total))
			return -1;
		p->ttl = ip[7];
		p->l4 = ETH_HLEN + off;
		p->len = total;
		key->k.family = 6;
		__builtin_memcpy(key->k.src, ip + 8, 16);
		__builtin_memcpy(key->k.dst, ip + 24, 16);
	} else {
		return -1;
	}
	key->k.proto = proto;
	p->tcpflags = 0;
	__u8 l4[14];
	if (proto == IPPROTO_TCP) {
		if (bpf_skb_load_bytes(skb, p->l4, l4, 14))
			return -1;
		if ((l4[12] >> 4) < 5 || (l4[12] >> 4) * 4 > p->len - (p->l4 - ETH_HLEN))
			return -1; /* a TCP header longer than the packet: Invalid Packet, the engine's */
		p->tcpflags = l4[13];
	} else if (proto == IPPROTO_UDP) {
		if (bpf_skb_load_bytes(skb, p->l4, l4, 8))
			return -1;
	} else if (proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6_) {
		if (bpf_skb_load_bytes(skb, p->l4, l4, 8))
			return -1;
		if (proto == IPPROTO_ICMP ? (l4[0] != 8 && l4[0] != 0) : (l4[0] != 128 && l4[0] != 129))
			return -1; /* only echo is keyed by its identifier; other ICMP is the engine's */
		key->k.sport = (l4[4] << 8) | l4[5];
		key->k.dport = 0;
		return 0;
	} else {
		return -1;
	}
	key->k.sport = (l4[0] << 8) | l4[1];
	key->k.dport = (l4[2] << 8) | l4[3];
	return 0;
}

static __always_inline void count_vif(__u32 vif, int tx, __u64 bytes)
{
	struct vifstats *s = bpf_map_lookup_elem(&vr_vifstats, &vif);
	if (!s)
		return;
	if (tx) {
		__sync_fetch_and_add(&s->tx_packets, 1);
		__sync_fetch_and_add(&s->tx_bytes, bytes);
	} else {
		__sync_fetch_and_add(&s->rx_packets, 1);
		__sync_fetch_and_add(&s->rx_bytes, bytes);
	}
}

static __always_inline void count_drop(__u32 vif, int on_vif, __u32 reason)
{
	__u32 i = MAX_VIFS * MAX_REASONS + (reason & (MAX_REASONS - 1));
	__u64 *n = bpf_map_lookup_elem(&vr_drops, &i);
	if (n)
		__sync_fetch_and_add(n, 1);
	if (!on_vif || vif >= MAX_VIFS)
		return;
	i = vif * MAX_REASONS + (reason & (MAX_REASONS - 1));
	n = bpf_map_lookup_elem(&vr_drops, &i);
	if (n)
		__sync_fetch_and_add(n, 1);
	struct vifstats *s = bpf_map_lookup_elem(&vr_vifstats, &vif);
	if (s)
		__sync_fetch_and_add(&s->drops, 1);
}

/* One packet of the entry: counters, last used, TCP flags seen. */
static __always_inline void count_entry(struct flow_rec *e, const struct header *h, const struct pkt *p)
{
	__sync_fetch_and_add(&e->packets, 1);
	__sync_fetch_and_add(&e->bytes, p->len);
	e->last = bpf_ktime_get_ns() + h->clock;
	if (p->tcpflags && (e->tcpflags & p->tcpflags) != p->tcpflags)
		__sync_fetch_and_or((__u32 *)&e->gen, (__u32)p->tcpflags << 8);
}

/* A FIN on entry e: recorded in e's TCP flags first (an atomic, so a full barrier), then the
 * reverse entry's read.  If the reverse has seen a FIN too, this is the pair's second and the
 * engine closes the pair (it is handed up); otherwise the program forwards it.  Two FINs crossing
 * on two CPUs cannot both miss the other's: each sets its own before it reads the other's. */
static __always_inline int second_fin(struct flow_rec *e)
{
	if (!(e->tcpflags & TCP_FIN))
		__sync_fetch_and_or((__u32 *)&e->gen, (__u32)TCP_FIN << 8);
	struct flow_rec *r = (e->flags & F_RFLOW_VALID) ? record(e->rindex) : 0;
	return !r || (r->tcpflags & TCP_FIN);
}

/* The pair's first answer (a packet on a reverse entry still marked New flow): New flow cleared
 * on both halves, as the engine does.  An atomic AND on the 32-bit word of flags, action and drop
 * reason: the engine's plain writes of the flags only ever set or clear other bits. */
static __always_inline void answered(struct flow_rec *e, struct flow_rec *r)
{
	if ((e->flags & F_NEW_FLOW) && (e->flags1 & F1_REVERSE)) {
		__sync_fetch_and_and((__u32 *)&e->flags, ~(__u32)F_NEW_FLOW);
		__sync_fetch_and_and((__u32 *)&r->flags, ~(__u32)F_NEW_FLOW);
	}
}

/* Rewrite the packet's addresses and ports to the reverse entry's key turned round: source = its
 * destination, destination = its source, ports likewise (the vRouter's NAT). */
static __always_inline int nat(struct __sk_buff *skb, const struct pkt *p, const union key_words *k, const struct flow_rec *r)
{
	__u8 proto = k->k.proto;
	__u32 csum_off = p->l4 + (proto == IPPROTO_TCP ? 16 : 6);
	__u64 mangled = proto == IPPROTO_UDP && k->k.family == 4 ? BPF_F_MARK_MANGLED_0 : 0;
	if (k->k.family == 4) {
		__be32 os, od, ns, nd;
		__builtin_memcpy(&os, k->k.src, 4);
		__builtin_memcpy(&od, k->k.dst, 4);
		__builtin_memcpy(&ns, r->key.dst, 4);
		__builtin_memcpy(&nd, r->key.src, 4);
		if (bpf_l4_csum_replace(skb, csum_off, os, ns, BPF_F_PSEUDO_HDR | mangled | 4) ||
		    bpf_l4_csum_replace(skb, csum_off, od, nd, BPF_F_PSEUDO_HDR | mangled | 4) ||
		    bpf_l3_csum_replace(skb, ETH_HLEN + 10, os, ns, 4) || bpf_l3_csum_replace(skb, ETH_HLEN + 10, od, nd, 4) ||
		    bpf_skb_store_bytes(skb, ETH_HLEN + 12, &ns, 4, 0) || bpf_skb_store_bytes(skb, ETH_HLEN + 16, &nd, 4, 0))
			return -1;
	} else {
		__u8 old[32], new[32];
		__builtin_memcpy(old, k->k.src, 16);
		__builtin_memcpy(old + 16, k->k.dst, 16);
		__builtin_memcpy(new, r->key.dst, 16);
		__builtin_memcpy(new + 16, r->key.src, 16);
		__s64 diff = bpf_csum_diff((__be32 *)old, 32, (__be32 *)new, 32, 0);
		if (diff < 0 || bpf_l4_csum_replace(skb, csum_off, 0, (__u32)diff, BPF_F_PSEUDO_HDR) ||
		    bpf_skb_store_bytes(skb, ETH_HLEN + 8, new, 32, 0))
			return -1;
	}
	__be16 osp = bpf_htons(k->k.sport), odp = bpf_htons(k->k.dport);
	__be16 nsp = bpf_htons(r->key.dport), ndp = bpf_htons(r->key.sport);
	if (bpf_l4_csum_replace(skb, csum_off, osp, nsp, mangled | 2) || bpf_l4_csum_replace(skb, csum_off, odp, ndp, mangled | 2) ||
	    bpf_skb_store_bytes(skb, p->l4, &nsp, 2, 0) || bpf_skb_store_bytes(skb, p->l4 + 2, &ndp, 2, 0))
		return -1;
	return 0;
}

/* Forward to a local VM: MACs as the kernel's routing would write them, TTL down by one. */
static __always_inline int to_tap(struct __sk_buff *skb, const struct pkt *p, __u8 family, const struct vif *dv, const struct config *cfg)
{
	if (family == 4) {
		__u8 ttl = p->ttl - 1;
		__be16 old = bpf_htons((__u16)p->ttl << 8), new = bpf_htons((__u16)ttl << 8);
		if (bpf_l3_csum_replace(skb, ETH_HLEN + 10, old, new, 2) || bpf_skb_store_bytes(skb, ETH_HLEN + 8, &ttl, 1, 0))
			return -1;
	} else {
		__u8 hl = p->ttl - 1;
		if (bpf_skb_store_bytes(skb, ETH_HLEN + 7, &hl, 1, 0))
			return -1;
	}
	__u8 macs[12];
	__builtin_memcpy(macs, dv->mac, 6);
	__builtin_memcpy(macs + 6, cfg->vrouter_mac, 6);
	if (bpf_skb_store_bytes(skb, 0, macs, 12, 0))
		return -1;
	return 0;
}

SEC("tc")
int vr_ingress(struct __sk_buff *skb)
{
	__u32 zero = 0, ifindex = skb->ifindex;
	__u32 *vifp = bpf_map_lookup_elem(&vr_ifvif, &ifindex);
	struct config *cfg = bpf_map_lookup_elem(&vr_config, &zero);
	struct header *h = bpf_map_lookup_elem(&vr_flows, &zero);
	if (!vifp || !cfg || !h)
		return TC_ACT_OK; /* not a vif of ours (yet): nftables decides, as without this program */
	__u32 vif = *vifp;
	struct vif *sv = bpf_map_lookup_elem(&vr_vifs, &vif);
	if (!sv || (sv->flags & VIF_CAPTURE))
		return TC_ACT_OK;
	union key_words key = {};
	struct pkt p = {};
	if (skb->pkt_type == PACKET_OTHERHOST || parse(skb, &key, &p))
		return TC_ACT_OK;
	if (p.tcpflags & (TCP_SYN | TCP_RST) && key.k.proto == IPPROTO_TCP)
		return TC_ACT_OK; /* a flow's start, restart and reset are the engine's */
	key.k.nh = vif;
	struct flow_rec *e = 0;
	long idx = lookup(h, &key, &e);
	if (idx < 0 || !e)
		return TC_ACT_OK;
	__u8 gen = e->gen;
	__u16 flags = e->flags;
	if (e->flags1 & (F1_HELD | F1_SLOW))
		return TC_ACT_OK; /* not before the packets the engine still holds: order kept; or the engine's alone */
	int closing = p.tcpflags & TCP_FIN && key.k.proto == IPPROTO_TCP && second_fin(e);
	if (closing && !(flags & F_RFLOW_VALID))
		return TC_ACT_OK; /* a FIN of a flow with no reverse (Drop, a trap): the engine's */
	if (e->action == A_DROP) {
		__u8 reason = e->drop;
		if (e->gen != gen || !(e->flags & F_ACTIVE))
			return TC_ACT_OK;
		count_entry(e, h, &p);
		count_vif(vif, 0, p.len);
		count_drop(vif, 1, reason);
		return TC_ACT_SHOT;
	}
	if ((e->action != A_FORWARD && e->action != A_NAT) || !(flags & F_RFLOW_VALID))
		return TC_ACT_OK; /* Hold, or a trap entry (no reverse): the engine's */
	struct flow_rec *r = record(e->rindex);
	if (!r || !(r->flags & F_ACTIVE) || r->rindex != (__u32)idx)
		return TC_ACT_OK;
	__u32 out = r->key.nh;
	if (e->action == A_FORWARD) {
		struct vif *dv = bpf_map_lookup_elem(&vr_vifs, &out);
		if (!dv || !(dv->flags & VIF_TAP) || (dv->flags & VIF_CAPTURE) || p.ttl <= 1)
			return TC_ACT_OK; /* a tunnel, a capture, or an ICMP time exceeded to send */
		if (e->gen != gen || !(e->flags & F_ACTIVE) || (closing && tell_closed(h, idx, gen)))
			return TC_ACT_OK;
		if (to_tap(skb, &p, key.k.family, dv, cfg))
			return TC_ACT_SHOT;
		count_entry(e, h, &p);
		answered(e, r);
		count_vif(vif, 0, p.len);
		count_vif(out, 1, p.len);
		skb->mark = cfg->fast_mark;
		return bpf_redirect(dv->ifindex, 0);
	}
	if (key.k.proto != IPPROTO_TCP && key.k.proto != IPPROTO_UDP)
		return TC_ACT_OK;
	struct vif *ov = bpf_map_lookup_elem(&vr_vifs, &out);
	if (ov && (ov->flags & VIF_CAPTURE))
		return TC_ACT_OK;
	if (e->gen != gen || !(e->flags & F_ACTIVE) || (closing && tell_closed(h, idx, gen)))
		return TC_ACT_OK;
	if (nat(skb, &p, &key, r))
		return TC_ACT_SHOT;
	count_entry(e, h, &p);
	answered(e, r);
	count_vif(vif, 0, p.len);
	count_vif(out, 1, p.len);
	bpf_skb_change_type(skb, PACKET_HOST);
	skb->mark = cfg->fast_mark;
	return TC_ACT_OK;
}

SEC("tc")
int vr_egress(struct __sk_buff *skb)
{
	__u32 zero = 0;
	__u16 proto_be;
	if (bpf_skb_load_bytes(skb, 12, &proto_be, 2))
		return TC_ACT_OK;
	if (proto_be == bpf_htons(ETH_P_IP)) {
		__u8 d[2];
		if (bpf_skb_load_bytes(skb, ETH_HLEN + 16, d, 2) || d[0] != 169 || d[1] != 254)
			return TC_ACT_OK;
	} else if (proto_be == bpf_htons(ETH_P_IPV6)) {
		__u8 d[8];
		if (bpf_skb_load_bytes(skb, ETH_HLEN + 24, d, 8) || d[0] != 0xfd || d[1] != 0 || d[2] != 0xa9 || d[3] != 0xfe ||
		    d[4] != 0xa9 || d[5] != 0xfe || d[6] != 0 || d[7] != 0)
			return TC_ACT_OK;
	} else {
		return TC_ACT_OK;
	}
	/* the node's packet to a metadata IP: a reply of the proxy, reverse NAT to the VM */
	struct config *cfg = bpf_map_lookup_elem(&vr_config, &zero);
	struct header *h = bpf_map_lookup_elem(&vr_flows, &zero);
	if (!cfg || !h)
		return TC_ACT_OK;
	union key_words key = {};
	struct pkt p = {};
	if (parse(skb, &key, &p))
		return TC_ACT_OK; /* not TCP/UDP: nftables queued it if it was the engine's */
	__u32 host = cfg->host_vif;
	key.k.nh = host;
	struct flow_rec *e = 0;
	long idx = lookup(h, &key, &e);
	if (idx < 0 || !e) {
		count_vif(host, 0, p.len);
		count_drop(host, 0, DR_FLOW_NAT_NO_RFLOW);
		return TC_ACT_SHOT;
	}
	__u8 gen = e->gen;
	if (e->action != A_NAT || !(e->flags & F_RFLOW_VALID))
		return TC_ACT_OK;
	struct flow_rec *r = record(e->rindex);
	if (!r || !(r->flags & F_ACTIVE) || r->rindex != (__u32)idx || e->gen != gen)
		return TC_ACT_OK;
	if (p.tcpflags & TCP_FIN && second_fin(e))
		tell_closed(h, idx, gen); /* (a full ring: the pair ages out instead; egress cannot hand it up) */
	if (nat(skb, &p, &key, r))
		return TC_ACT_SHOT;
	count_entry(e, h, &p);
	answered(e, r);
	count_vif(host, 0, p.len);
	count_vif(r->key.nh, 1, p.len);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
