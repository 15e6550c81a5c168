"""The agent's DHCPv6 server as pure code: client messages built with scapy, replies parsed back with
scapy, for each Neutron address mode; and that nothing a VM sends makes it raise anything but
Malformed."""

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.dhcp6 import (
    DUID_LL,
    DUID_LLT,
    USER_CLASS_DATA,
    VENDOR_CLASS_DATA,
    DHCP6_Advertise,
    DHCP6_Confirm,
    DHCP6_Decline,
    DHCP6_InfoRequest,
    DHCP6_Rebind,
    DHCP6_Release,
    DHCP6_Renew,
    DHCP6_Reply,
    DHCP6_Request,
    DHCP6_Solicit,
    DHCP6OptClientFQDN,
    DHCP6OptClientId,
    DHCP6OptDNSDomains,
    DHCP6OptDNSServers,
    DHCP6OptElapsedTime,
    DHCP6OptIA_NA,
    DHCP6OptIA_PD,
    DHCP6OptIA_TA,
    DHCP6OptIAAddress,
    DHCP6OptIAPrefix,
    DHCP6OptOptReq,
    DHCP6OptRapidCommit,
    DHCP6OptReconfAccept,
    DHCP6OptServerId,
    DHCP6OptStatusCode,
    DHCP6OptUnknown,
    DHCP6OptUserClass,
    DHCP6OptVendorClass,
    _dhcp6_dispatcher,
)
from scapy.packet import Padding, Raw

from dataplane.core.packet import Malformed
from vrouter.services import dhcpv6
from vrouter.services.dhcpv6 import Client6, Dhcp6Server, Subnet6

SERVER_MAC = bytes.fromhex("00005e000101")
MAC = "02:00:0a:01:00:03"
ADDRESS = "fd00:10:1:1::3"
CLIENT = Client6("port-1", bytes.fromhex(MAC.replace(":", "")), ADDRESS, "vm1")
STATEFUL = Subnet6("dhcpv6-stateful", "fd00:10:1:1::/64", ("fd00:10:1:1::2",))
STATELESS = Subnet6("dhcpv6-stateless", "fd00:10:1:1::/64", ("fd00:10:1:1::2", "2001:db8::53"), domain="demo.example")
CLIENT_DUID = DUID_LLT(lladdr=MAC, timeval=946684800 + 725000000)
OUR_ID = DHCP6OptServerId(duid=DUID_LL(lladdr="00:00:5e:00:01:01"))
OTHER_ID = DHCP6OptServerId(duid=DUID_LL(lladdr="00:00:5e:00:01:02"))
KINDS = {
    dhcpv6.SOLICIT: DHCP6_Solicit, dhcpv6.REQUEST: DHCP6_Request, dhcpv6.CONFIRM: DHCP6_Confirm, dhcpv6.RENEW: DHCP6_Renew,
    dhcpv6.REBIND: DHCP6_Rebind, dhcpv6.RELEASE: DHCP6_Release, dhcpv6.DECLINE: DHCP6_Decline, dhcpv6.INFORMATION_REQUEST: DHCP6_InfoRequest,
}  # fmt: skip
WITH_OUR_ID = (dhcpv6.REQUEST, dhcpv6.RENEW, dhcpv6.RELEASE, dhcpv6.DECLINE)


def ia_na(*addresses, iaid=0x0A010003):
    return DHCP6OptIA_NA(iaid=iaid, T1=0, T2=0, ianaopts=[DHCP6OptIAAddress(addr=a, preflft=0, validlft=0) for a in addresses])


def message(kind, *opts, server_id=None, client_id=True, trid=0xABCDEF):
    """A client message as a client sends it: the Client Identifier, ours as Server Identifier where
    RFC 8415 wants one, then the options given."""
    pkt = KINDS[kind](trid=trid)
    if client_id:
        pkt /= DHCP6OptClientId(duid=CLIENT_DUID)
    if server_id is None and kind in WITH_OUR_ID:
        server_id = OUR_ID
    if server_id:
        pkt /= server_id
    for opt in opts:
        pkt /= opt
    return bytes(pkt)


def chain(pkt):
    """The message's top-level options, in order (scapy chains them as payloads)."""
    out, layer = [], pkt.payload
    while layer:
        out.append(layer)
        layer = layer.payload
    return out


def answer(payload):
    """A reply parsed with scapy, checked as a client would: ADVERTISE or REPLY, every option whole
    and known, the options adding up to the message."""
    msg = _dhcp6_dispatcher(payload)
    assert isinstance(msg, DHCP6_Advertise | DHCP6_Reply), msg
    opts = chain(msg)
    assert not any(isinstance(o, DHCP6OptUnknown | Raw | Padding) for o in opts), opts
    assert sum(4 + o.optlen for o in opts) == len(payload) - 4
    return msg


def top(msg, cls):
    """The top-level option of this class, or None (scapy's getlayer also looks inside IAs)."""
    return next((o for o in chain(msg) if type(o) is cls), None)


def wire(opt):
    """One option's bytes, without the options scapy chains after it."""
    alone = opt.copy()
    alone.remove_payload()
    return bytes(alone)


def exchange(server, kind, *opts, subnet=STATEFUL, client=CLIENT, now=10.0, **kw):
    got, payload = server.handle(message(kind, *opts, **kw), client, subnet, now)
    assert got == kind
    return answer(payload) if payload is not None else None


def address_of(ia):
    return [(o.addr, o.preflft, o.validlft) for o in ia.ianaopts if isinstance(o, DHCP6OptIAAddress)]


def status_in(options):
    return [o.statuscode for o in options if isinstance(o, DHCP6OptStatusCode)]


def test_solicit_gets_an_advertise_of_the_ports_address_with_the_lease_times():
    server = Dhcp6Server(SERVER_MAC, lease_time=3600)
    sent = message(dhcpv6.SOLICIT, ia_na(iaid=7), DHCP6OptElapsedTime(), trid=0x123456)
    kind, payload = server.handle(sent, CLIENT, STATEFUL, 5.0)
    adv = answer(payload)
    assert kind == dhcpv6.SOLICIT and isinstance(adv, DHCP6_Advertise) and adv.trid == 0x123456
    assert wire(top(adv, DHCP6OptClientId)) == bytes(DHCP6OptClientId(duid=CLIENT_DUID))  # as it came
    duid = top(adv, DHCP6OptServerId).duid
    assert (duid.type, duid.hwtype, duid.lladdr) == (3, 1, "00:00:5e:00:01:01")
    ia = top(adv, DHCP6OptIA_NA)
    assert (ia.iaid, ia.T1, ia.T2) == (7, 1800, 2880) and address_of(ia) == [(ADDRESS, 3600, 3600)]
    assert top(adv, DHCP6OptDNSServers).dnsservers == ["fd00:10:1:1::2"]
    assert top(adv, DHCP6OptDNSDomains).dnsdomains == ["novalocal."]
    assert top(adv, DHCP6OptRapidCommit) is None and server.binding("port-1") is None  # advertised, not bound


def test_the_agents_default_lease_is_infinite_and_so_are_t1_and_t2():
    ia = top(exchange(Dhcp6Server(SERVER_MAC), dhcpv6.REQUEST, ia_na()), DHCP6OptIA_NA)
    assert (ia.T1, ia.T2) == (dhcpv6.INFINITE, dhcpv6.INFINITE) and address_of(ia) == [(ADDRESS, dhcpv6.INFINITE, dhcpv6.INFINITE)]


def test_solicit_with_rapid_commit_gets_a_reply_and_binds():
    server = Dhcp6Server(SERVER_MAC, lease_time=600)
    reply = exchange(server, dhcpv6.SOLICIT, ia_na(), DHCP6OptRapidCommit(), now=42.0)
    assert isinstance(reply, DHCP6_Reply) and top(reply, DHCP6OptRapidCommit) is not None
    assert address_of(top(reply, DHCP6OptIA_NA)) == [(ADDRESS, 600, 600)] and server.binding("port-1") == (ADDRESS, 42.0)


@pytest.mark.parametrize("kind", [dhcpv6.REQUEST, dhcpv6.RENEW, dhcpv6.REBIND])
def test_request_renew_and_rebind_get_a_reply_with_the_address_and_bind(kind):
    server = Dhcp6Server(SERVER_MAC, lease_time=100)
    reply = exchange(server, kind, ia_na(ADDRESS, iaid=9), now=7.0)
    ia = top(reply, DHCP6OptIA_NA)
    assert isinstance(reply, DHCP6_Reply) and (ia.iaid, ia.T1, ia.T2) == (9, 50, 80) and address_of(ia) == [(ADDRESS, 100, 100)]
    assert server.binding("port-1") == (ADDRESS, 7.0)
    exchange(server, kind, ia_na(), now=8.0)
    assert server.binding("port-1") == (ADDRESS, 8.0)  # renewed: bound again, now


def test_an_address_that_is_not_the_ports_comes_back_with_lifetimes_zero():
    reply = exchange(Dhcp6Server(SERVER_MAC, lease_time=60), dhcpv6.RENEW, ia_na("fd00:10:1:1::99", "fd00:10:1:1:0::3"))
    assert address_of(top(reply, DHCP6OptIA_NA)) == [(ADDRESS, 60, 60), ("fd00:10:1:1::99", 0, 0)]


def test_confirm_says_success_when_every_address_is_on_link_and_not_on_link_otherwise():
    server = Dhcp6Server(SERVER_MAC)
    ok = exchange(server, dhcpv6.CONFIRM, ia_na(ADDRESS, "fd00:10:1:1::77"))
    assert status_in(chain(ok)) == [0] and top(ok, DHCP6OptIA_NA) is None
    moved = exchange(server, dhcpv6.CONFIRM, ia_na(ADDRESS), ia_na("fd00:99::3", iaid=2))
    assert status_in(chain(moved)) == [4]
    assert exchange(server, dhcpv6.CONFIRM, ia_na()) is None  # no address to confirm: RFC 8415 18.3.3, no reply
    assert status_in(chain(exchange(server, dhcpv6.CONFIRM, ia_na(ADDRESS), subnet=STATELESS))) == [0]


@pytest.mark.parametrize("kind", [dhcpv6.RELEASE, dhcpv6.DECLINE])
def test_release_and_decline_get_success_and_drop_the_binding(kind):
    server = Dhcp6Server(SERVER_MAC)
    exchange(server, dhcpv6.REQUEST, ia_na())
    assert server.binding("port-1") is not None
    reply = exchange(server, kind, ia_na(ADDRESS))
    assert isinstance(reply, DHCP6_Reply) and status_in(chain(reply)) == [0] and server.binding("port-1") is None


@pytest.mark.parametrize("kind", [dhcpv6.SOLICIT, dhcpv6.REQUEST])
def test_temporary_addresses_and_prefixes_are_not_available(kind):
    server = Dhcp6Server(SERVER_MAC)
    ta = DHCP6OptIA_TA(iaid=1)
    pd = DHCP6OptIA_PD(iaid=2, T1=0, T2=0, iapdopt=[DHCP6OptIAPrefix(plen=56, prefix="2001:db8::")])
    reply = exchange(server, kind, ta, pd)
    assert top(reply, DHCP6OptIA_NA) is None and server.binding("port-1") is None
    assert top(reply, DHCP6OptIA_TA).iaid == 1 and status_in(top(reply, DHCP6OptIA_TA).iataopts) == [2]
    got_pd = top(reply, DHCP6OptIA_PD)
    assert (got_pd.iaid, got_pd.T1, got_pd.T2) == (2, 0, 0) and status_in(got_pd.iapdopt) == [6]
    both = exchange(server, kind, ia_na(), pd)
    assert address_of(top(both, DHCP6OptIA_NA)) and status_in(top(both, DHCP6OptIA_PD).iapdopt) == [6]


def test_a_port_without_an_ipv6_address_gets_no_addrs_avail():
    server = Dhcp6Server(SERVER_MAC)
    bare = Client6("port-2", CLIENT.mac, "", "")
    for kind in (dhcpv6.SOLICIT, dhcpv6.REQUEST):
        ia = top(exchange(server, kind, ia_na(), client=bare), DHCP6OptIA_NA)
        assert (ia.T1, ia.T2) == (0, 0) and address_of(ia) == [] and status_in(ia.ianaopts) == [2]
    assert server.binding("port-2") is None


def test_only_the_first_ia_na_gets_the_ports_one_address():
    reply = exchange(Dhcp6Server(SERVER_MAC), dhcpv6.REQUEST, ia_na(iaid=1), ia_na(iaid=2))
    first, second = [o for o in chain(reply) if isinstance(o, DHCP6OptIA_NA)]
    assert address_of(first) and status_in(second.ianaopts) == [2]


def test_stateless_answers_information_request_with_dns_and_domain_and_no_address():
    server = Dhcp6Server(SERVER_MAC)
    reply = exchange(server, dhcpv6.INFORMATION_REQUEST, DHCP6OptOptReq(reqopts=[23, 24]), subnet=STATELESS)
    assert isinstance(reply, DHCP6_Reply) and top(reply, DHCP6OptIA_NA) is None and status_in(chain(reply)) == []
    assert top(reply, DHCP6OptDNSServers).dnsservers == ["fd00:10:1:1::2", "2001:db8::53"]
    assert top(reply, DHCP6OptDNSDomains).dnsdomains == ["demo.example."]
    adv = exchange(server, dhcpv6.SOLICIT, ia_na(), subnet=STATELESS)
    assert isinstance(adv, DHCP6_Advertise) and status_in(top(adv, DHCP6OptIA_NA).ianaopts) == [2]
    for kind in (dhcpv6.REQUEST, dhcpv6.RENEW, dhcpv6.REBIND):
        ia = top(exchange(server, kind, ia_na(ADDRESS), subnet=STATELESS), DHCP6OptIA_NA)
        assert status_in(ia.ianaopts) == [2] and address_of(ia) == []  # not even lifetimes 0: SLAAC may hold it
    assert server.binding("port-1") is None


def test_information_request_is_answered_in_stateful_mode_too_with_or_without_a_client_id():
    server = Dhcp6Server(SERVER_MAC, domain="")
    reply = exchange(server, dhcpv6.INFORMATION_REQUEST, DHCP6OptElapsedTime(), client_id=False)
    assert top(reply, DHCP6OptClientId) is None and top(reply, DHCP6OptServerId) is not None
    assert top(reply, DHCP6OptDNSDomains) is None  # no domain at all: no option 24
    assert exchange(server, dhcpv6.INFORMATION_REQUEST, server_id=OUR_ID) is not None
    assert exchange(server, dhcpv6.INFORMATION_REQUEST, server_id=OTHER_ID) is None
    assert exchange(server, dhcpv6.INFORMATION_REQUEST, ia_na()) is None  # RFC 8415 16.12: no IA in it


def test_domain_search_list_is_rfc_1035_uncompressed_and_dns_only_when_the_subnet_has_some():
    server = Dhcp6Server(SERVER_MAC, domain="cloud.example")
    subnet = Subnet6("dhcpv6-stateless", "fd00::/64", ())
    _, payload = server.handle(message(dhcpv6.INFORMATION_REQUEST), CLIENT, subnet, 0)
    assert payload.endswith(struct.pack("!HH", 24, 15) + b"\x05cloud\x07example\x00")
    assert top(answer(payload), DHCP6OptDNSServers) is None


@pytest.mark.parametrize("subnet", [None, Subnet6("slaac", "fd00::/64", ("fd00::2",)), Subnet6("none", "fd00::/64", ())])
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_no_dhcpv6_on_the_network_answers_nothing(subnet, kind):
    server = Dhcp6Server(SERVER_MAC)
    assert server.handle(message(kind, ia_na(ADDRESS), DHCP6OptRapidCommit()), CLIENT, subnet, 0) == (kind, None)
    assert server.binding("port-1") is None


@pytest.mark.parametrize("kind", [dhcpv6.SOLICIT, dhcpv6.CONFIRM, dhcpv6.REBIND])
def test_messages_that_must_not_name_a_server_are_ignored_when_they_do(kind):
    server = Dhcp6Server(SERVER_MAC)
    for server_id in (OUR_ID, OTHER_ID):
        assert exchange(server, kind, ia_na(ADDRESS), server_id=server_id) is None


@pytest.mark.parametrize("kind", WITH_OUR_ID)
def test_messages_for_another_server_or_none_are_ignored(kind):
    server = Dhcp6Server(SERVER_MAC)
    assert exchange(server, kind, ia_na(ADDRESS), server_id=OTHER_ID) is None
    assert server.handle(message(kind, ia_na(ADDRESS), server_id=False), CLIENT, STATEFUL, 0) == (kind, None)
    assert server.binding("port-1") is None


def test_options_the_server_does_not_read_are_accepted():
    extras = [
        DHCP6OptOptReq(reqopts=[23, 24, 39]), DHCP6OptElapsedTime(elapsedtime=300), DHCP6OptReconfAccept(), DHCP6OptClientFQDN(fqdn="vm1."),
        DHCP6OptVendorClass(enterprisenum=4413, vcdata=[VENDOR_CLASS_DATA(data=b"dhcpcd")]),
        DHCP6OptUserClass(userclassdata=[USER_CLASS_DATA(data=b"vm")]), DHCP6OptUnknown(optcode=999, data=b"\x01\x02"),
    ]  # fmt: skip
    reply = exchange(Dhcp6Server(SERVER_MAC), dhcpv6.REQUEST, ia_na(), *extras)
    assert address_of(top(reply, DHCP6OptIA_NA))


def test_binding_is_forgotten_when_the_port_is_unplugged():
    server = Dhcp6Server(SERVER_MAC)
    exchange(server, dhcpv6.REQUEST, ia_na(), now=3.0)
    assert server.binding("port-1") == (ADDRESS, 3.0) and server.binding("port-9") is None
    server.forget("port-1")
    server.forget("port-9")
    assert server.binding("port-1") is None


def raw_options(*pairs):
    return b"".join(struct.pack("!HH", code, len(data)) + data for code, data in pairs)


CID = (1, bytes(DUID_LLT(lladdr=MAC)))
SID = (2, b"\x00\x03\x00\x01" + SERVER_MAC)


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"\x01\x00\x00", "shorter than 4"),
        (b"\x02\x00\x00\x01" + raw_options(CID), "type 2 is not a client's"),
        (b"\x07\x00\x00\x01" + raw_options(CID, SID), "type 7 is not a client's"),
        (b"\x0a\x00\x00\x01" + raw_options(CID, SID), "type 10 is not a client's"),
        (b"\x0c\x00" + bytes(32), "type 12 is not a client's"),
        (b"\x0d\x00" + bytes(32), "type 13 is not a client's"),
        (b"\x00\x00\x00\x01" + raw_options(CID), "type 0 is not a client's"),
        (b"\xc8\x00\x00\x01" + raw_options(CID), "type 200 is not a client's"),
        (b"\x01\x00\x00\x01" + raw_options(CID) + b"\x00\x08\x00\x05\x00", "runs past the end of the message"),
        (b"\x01\x00\x00\x01" + raw_options(CID) + b"\x00\x08", "bytes after the last option"),
        (b"\x01\x00\x00\x01" + raw_options((8, b"\x00\x00")), "SOLICIT without a Client Identifier"),
        (b"\x03\x00\x00\x01" + raw_options(SID), "REQUEST without a Client Identifier"),
        (b"\x01\x00\x00\x01" + raw_options(CID, CID), "two Client Identifiers"),
        (b"\x03\x00\x00\x01" + raw_options(CID, SID, SID), "two Server Identifiers"),
        (b"\x01\x00\x00\x01" + raw_options((1, b"\x00\x01")), "Client Identifier of 2 bytes is not a DUID"),
        (b"\x01\x00\x00\x01" + raw_options(CID, (3, bytes(11))), "IA option 3 of 11 bytes"),
        (b"\x01\x00\x00\x01" + raw_options(CID, (4, bytes(3))), "IA option 4 of 3 bytes"),
        (b"\x01\x00\x00\x01" + raw_options(CID, (25, bytes(8))), "IA option 25 of 8 bytes"),
        (b"\x03\x00\x00\x01" + raw_options(CID, SID, (3, bytes(12) + raw_options((5, bytes(23))))), "IA Address option of 23 bytes"),
        (b"\x03\x00\x00\x01" + raw_options(CID, SID, (3, bytes(12) + b"\x00\x05\x00\x30" + bytes(24))), "runs past the end of the IA option 3"),
        (b"\x03\x00\x00\x01" + raw_options(CID, SID, (3, bytes(12) + raw_options((5, bytes(24) + b"\x00\x0d")))), "after the last option"),
    ],
)  # fmt: skip
def test_malformed_messages_are_refused_naming_why(payload, why):
    with pytest.raises(Malformed, match=why):
        Dhcp6Server(SERVER_MAC).handle(payload, CLIENT, STATEFUL, 0)


def test_configuration_errors_are_refused_when_configured():
    with pytest.raises(ValueError, match="IPv6 address mode 'stateful'"):
        Subnet6("stateful", "fd00::/64", ())
    with pytest.raises(ValueError, match="domain"):
        Subnet6("dhcpv6-stateless", "fd00::/64", (), domain="a" * 64 + ".example")
    with pytest.raises(ValueError, match="server MAC of 4 bytes"):
        Dhcp6Server(b"\x00" * 4)


# ISC dhclient 4.4 (`dhclient -6`): DUID-LLT client id (hardware type 1, seconds since 2000, the MAC),
# the Option Request for name servers (23), domain search (24) and FQDN (39), Elapsed Time, then an
# IA_NA whose IAID is the MAC's last four bytes and whose T1 and T2 are 0.
DHCLIENT_DUID = bytes.fromhex("000100012b3c4d5e02000a010003")
DHCLIENT_SOLICIT = bytes.fromhex(
    "01" "5f2c91"
    "0001000e" + DHCLIENT_DUID.hex()
    + "00060006" "0017" "0018" "0027"
    + "00080002" "0000"
    + "0003000c" "0a010003" "00000000" "00000000"
)  # fmt: skip


def test_a_dhclient_solicit_and_its_request_get_the_ports_address():
    server = Dhcp6Server(SERVER_MAC, lease_time=86400)
    kind, payload = server.handle(DHCLIENT_SOLICIT, CLIENT, STATEFUL, 1.0)
    adv = answer(payload)
    assert kind == dhcpv6.SOLICIT and isinstance(adv, DHCP6_Advertise) and adv.trid == 0x5F2C91
    assert payload[4:22] == bytes.fromhex("0001000e") + DHCLIENT_DUID  # the client id first, as it came
    ia = top(adv, DHCP6OptIA_NA)
    assert (ia.iaid, ia.T1, ia.T2) == (0x0A010003, 43200, 69120) and address_of(ia) == [(ADDRESS, 86400, 86400)]
    # dhclient's REQUEST: the server id from the ADVERTISE, the offered address in its IA_NA
    server_id = wire(top(adv, DHCP6OptServerId))
    iaaddr = struct.pack("!HH", 5, 24) + bytes(DHCP6OptIAAddress(addr=ADDRESS))[4:20] + struct.pack("!II", 7200, 10800)
    request = (b"\x03\x11\x22\x33" + bytes.fromhex("0001000e") + DHCLIENT_DUID + server_id + DHCLIENT_SOLICIT[22:38]
               + struct.pack("!HH", 3, 12 + len(iaaddr)) + bytes.fromhex("0a010003") + bytes(8) + iaaddr)  # fmt: skip
    kind, payload = server.handle(request, CLIENT, STATEFUL, 2.0)
    reply = answer(payload)
    assert kind == dhcpv6.REQUEST and isinstance(reply, DHCP6_Reply) and reply.trid == 0x112233
    assert address_of(top(reply, DHCP6OptIA_NA)) == [(ADDRESS, 86400, 86400)] and server.binding("port-1") == (ADDRESS, 2.0)


# Properties: whatever a VM sends, the server answers with a message a client can parse, or says
# Malformed, or says nothing.

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SUBNETS = st.sampled_from([STATEFUL, STATELESS])
CLIENTS = st.sampled_from([CLIENT, Client6("port-2", CLIENT.mac, "", "")])


def check(payload, client, subnet):
    server = Dhcp6Server(SERVER_MAC, lease_time=3600)
    try:
        kind, reply = server.handle(payload, client, subnet, 1.0)
    except Malformed:
        return None
    assert kind == payload[0]
    if reply is not None:
        msg = answer(reply)
        assert reply[1:4] == payload[1:4] and msg.trid == int.from_bytes(payload[1:4], "big")
        assert kind == dhcpv6.SOLICIT or isinstance(msg, DHCP6_Reply)
    return reply


@SETTINGS
@given(st.binary(max_size=200), CLIENTS, SUBNETS)
def test_random_bytes_give_malformed_or_an_answer(data, client, subnet):
    check(data, client, subnet)


@SETTINGS
@given(st.sampled_from(sorted(KINDS)), st.binary(max_size=160), CLIENTS, SUBNETS)
def test_random_options_after_a_client_header_give_malformed_or_an_answer(kind, options, client, subnet):
    check(bytes([kind]) + b"\x01\x02\x03" + options, client, subnet)


@st.composite
def valid_messages(draw):
    """A client message of any type, with IAs, addresses and the options clients send."""
    kind = draw(st.sampled_from(sorted(KINDS)))
    ias = draw(st.lists(st.sampled_from([ia_na(), ia_na(ADDRESS), ia_na("fd00:99::1", ADDRESS), DHCP6OptIA_TA(iaid=5),
                                         DHCP6OptIA_PD(iaid=6, T1=0, T2=0)]), max_size=3))  # fmt: skip
    extras = draw(st.lists(st.sampled_from([DHCP6OptRapidCommit(), DHCP6OptElapsedTime(), DHCP6OptOptReq(reqopts=[23, 24]),
                                            DHCP6OptReconfAccept(), DHCP6OptClientFQDN(fqdn="vm1.")]), max_size=3))  # fmt: skip
    return message(kind, *ias, *extras, trid=draw(st.integers(0, 0xFFFFFF)))


@SETTINGS
@given(valid_messages(), CLIENTS, SUBNETS)
def test_valid_messages_are_answered_or_ignored_never_malformed(payload, client, subnet):
    server = Dhcp6Server(SERVER_MAC)
    kind, reply = server.handle(payload, client, subnet, 1.0)
    if reply is not None:
        assert answer(reply).trid == int.from_bytes(payload[1:4], "big")


@SETTINGS
@given(valid_messages(), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=3),
       st.none() | st.integers(1, 10_000), CLIENTS, SUBNETS)  # fmt: skip
def test_mutated_messages_give_malformed_or_an_answer(payload, flips, cut, client, subnet):
    """A few bytes of a valid message changed, and sometimes its end cut off."""
    raw = bytearray(payload)
    for where, value in flips:
        raw[where % len(raw)] = value
    check(bytes(raw if cut is None else raw[: max(cut % len(raw), 1)]), client, subnet)
