"""Declarations of kstate.sandesh (tf-controller src/vnsw/agent/kstate/kstate.sandesh) for the kstate.xml page: kernel flows.

Data: KFlowReq / NextKFlowReq, their KFlowResp (flow_handle links to the next batch) and kstate's own ErrResp.
"""

from vrouter.introspect.declaration import Field

PAGE: tuple[str, ...] = ("NextKFlowReq", "KFlowReq")
"""The kstate.xml page's requests, in declaration order."""

REQUESTS: dict[str, tuple[Field, ...]] = {
    "NextKFlowReq": (Field("flow_handle", 1, "string"),),
    "KFlowReq": (
        Field("flow_idx", 1, "i32", default=-1),
        Field("show_evicted", 2, "bool", default=False),
    ),
}

STRUCTS: dict[str, tuple[Field, ...]] = {
    "KFlowInfo": (
        Field("index", 1, "i32"),
        Field("rflow", 2, "i32"),
        Field("sip", 3, "string"),
        Field("sport", 4, "i32"),
        Field("dip", 5, "string"),
        Field("dport", 6, "i32"),
        Field("proto", 7, "byte"),
        Field("vrf_id", 8, "i16"),
        Field("action", 9, "string"),
        Field("flags", 10, "string"),
        Field("d_vrf_id", 11, "i16"),
        Field("bytes", 12, "i32"),
        Field("pkts", 13, "i32"),
        Field("insight", 14, "i32"),
        Field("nhid", 18, "i32"),
        Field("underlay_udp_sport", 19, "u16"),
        Field("mirror_id", 15, "byte", link="KMirrorReq", optional=True),
        Field("sec_mirror_id", 16, "byte", link="KMirrorReq", optional=True),
        Field("ecmp_index", 17, "i16", optional=True),
        Field("tcp_flags", 20, "string", optional=True),
        Field("drop_reason", 21, "string", optional=True),
        Field("ttl", 22, "u16"),
        Field("qos_id", 23, "i16"),
        Field("gen_id", 24, "i16"),
        Field("tcp_seq", 25, "u16"),
        Field("oflow_bytes", 26, "u16"),
        Field("oflow_packets", 27, "u16"),
        Field("underlay_gw_index", 28, "i16"),
    ),
    "KFlowResp": (  # response
        Field("flow_list", 1, "list", of="KFlowInfo"),
        Field("flow_handle", 2, "string", link="NextKFlowReq"),
    ),
    "ErrResp": (  # response
        Field("resp", 1, "string", default="   Invalid Input !!!   "),
    ),
}

RESPONSES: frozenset[str] = frozenset({"KFlowResp", "ErrResp"})
