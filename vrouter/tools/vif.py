"""``vrouter vif --list`` / ``vif --get N``: the vRouter's interfaces, printed like the vRouter's ``vif``."""

from __future__ import annotations

from vrouter.messages.control import VifRecord

VROUTER_MAC = "00:00:5e:00:01:00"


def format_vifs(vifs: list[VifRecord]) -> str:
    out = ["Vrouter Interface Table", ""]
    for v in vifs:
        md = "  Metadata IP:" + v.metadata_ip if v.metadata_ip else ""
        virtual = v.type == "Virtual"
        reasons = "  (%s)" % ", ".join("%s %d" % kv for kv in sorted(v.drop_reasons.items())) if v.drop_reasons else ""
        out += [
            "vif0/%-5d OS: %s (index %d)" % (v.vif, v.name, v.ifindex),
            "            Type:%s HWaddr:%s IPaddr:%s" % (v.type, VROUTER_MAC, v.ip or "0.0.0.0"),
            "            IP6addr:%s" % (v.ip6 or "::"),  # as the vRouter's vif prints it
            "            Vrf:%d Flags:%s MTU:1500%s  Queues:%s" % (v.vrf, "L3L2" if virtual else "L3", md, ",".join(map(str, v.queues))),
            "            VM MAC:%s Port:%s" % (v.mac or "-", v.port_uuid or "-") if virtual else "            Host interface",
            "            RX packets:%d  bytes:%d errors:0" % (v.rx_packets, v.rx_bytes),
            "            TX packets:%d  bytes:%d errors:0" % (v.tx_packets, v.tx_bytes),
            "            Drops:%d%s" % (v.drops, reasons),
            "",
        ]
    return "\n".join(out)
