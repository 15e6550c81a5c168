"""Declarations of sandesh_trace.sandesh (tf-common sandesh/library/common/) for the sandesh_trace.xml page.

Data: the two read-only trace requests and their responses (the enable/disable requests are left out).
"""

from vrouter.introspect.declaration import Field

PAGE: tuple[str, ...] = ("SandeshTraceRequest", "SandeshTraceBufferListRequest")
"""The sandesh_trace.xml page's read-only requests, in declaration order."""

REQUESTS: dict[str, tuple[Field, ...]] = {
    "SandeshTraceRequest": (
        Field("buf_name", 1, "string"),
        Field("count", 2, "i32", optional=True),
    ),
    "SandeshTraceBufferListRequest": (),
}

STRUCTS: dict[str, tuple[Field, ...]] = {
    "SandeshTraceBufInfo": (Field("trace_buf_name", 1, "string", link="SandeshTraceRequest"),),
    "SandeshTraceBufferListResponse": (  # response
        Field("trace_buffer_list", 1, "list", of="SandeshTraceBufInfo"),
    ),
    "SandeshTraceTextResponse": (  # response
        Field("traces", 1, "list", of="string"),
    ),
}

RESPONSES: frozenset[str] = frozenset({"SandeshTraceBufferListResponse", "SandeshTraceTextResponse"})
