//! IPv6 neighbour discovery and echo on the gateway: router advertisements that give
//! guests the prefix, MTU and DNS; advertisements for the gateway's addresses; echo to
//! them; and addresses no guest can take from the gateway or from another guest.

use std::net::Ipv6Addr;

use smoltcp::wire::{
    Icmpv6Message, Icmpv6Packet, Ipv6Packet, NdiscNeighborFlags, NdiscRepr, RawHardwareAddress,
};

use super::*;

const GUEST_LINK_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0x5054, 0xff, 0xfe12, 0x3456);
const GUEST_GLOBAL: Ipv6Addr = Ipv6Addr::new(0xfec0, 0, 0, 0, 0x5054, 0xff, 0xfe12, 0x3456);
const GATEWAY_LINK_LOCAL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2);
const GATEWAY_GLOBAL: Ipv6Addr = Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 2);
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);

/// An ICMPv6 frame from a guest at `mac`, with `message` (checksum filled in).
fn icmpv6_from(mac: MacAddress, src: Ipv6Addr, dst: Ipv6Addr, hop_limit: u8, message: &[u8]) -> Vec<u8> {
    let dst_mac = MacAddress([0x33, 0x33, 0, 0, 0, 2]);
    packet::icmpv6(mac, dst_mac, src, dst, hop_limit, message).unwrap().as_bytes().to_vec()
}

/// The bytes of a neighbour discovery message.
fn ndisc(repr: NdiscRepr<'_>) -> Vec<u8> {
    let mut message = vec![0u8; repr.buffer_len()];
    repr.emit(&mut Icmpv6Packet::new_unchecked(&mut message[..]));
    message
}

fn solicitation(target: Ipv6Addr) -> Vec<u8> {
    ndisc(NdiscRepr::NeighborSolicit {
        target_addr: target,
        lladdr: Some(RawHardwareAddress::from(GUEST_MAC)),
    })
}

fn advertisement(target: Ipv6Addr, mac: MacAddress) -> Vec<u8> {
    ndisc(NdiscRepr::NeighborAdvert {
        flags: NdiscNeighborFlags::OVERRIDE,
        target_addr: target,
        lladdr: Some(RawHardwareAddress::from(mac)),
    })
}

/// The Ethernet destination, IPv6 source and destination, hop limit and ICMPv6 message
/// of a frame the gateway sent.
fn icmpv6_sent(frame: &[u8]) -> (MacAddress, Ipv6Addr, Ipv6Addr, u8, Vec<u8>) {
    let ethernet = EthernetFrame::new_checked(frame).unwrap();
    let ip = Ipv6Packet::new_checked(ethernet.payload()).unwrap();
    let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
    assert!(icmp.verify_checksum(&ip.src_addr(), &ip.dst_addr()), "the gateway's ICMPv6 checksum");
    (ethernet.dst_addr(), ip.src_addr(), ip.dst_addr(), ip.hop_limit(), ip.payload().to_vec())
}

/// The options of a router advertisement, by type.
fn options(advertisement: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut options = Vec::new();
    let mut rest = &advertisement[16..];
    while rest.len() >= 8 {
        let len = usize::from(rest[1]) * 8;
        options.push((rest[0], rest[..len].to_vec()));
        rest = &rest[len..];
    }
    options
}

#[test]
fn a_router_solicitation_gets_the_prefix_mtu_dns_and_search_list() {
    let config = GatewayConfig { domain: Some("vnet.test".into()), mtu: 1400, ..GatewayConfig::default() };
    let (mut gateway, mut host, now) = gateway_with(config);
    let solicit = ndisc(NdiscRepr::RouterSolicit { lladdr: Some(RawHardwareAddress::from(GUEST_MAC)) });
    gateway.receive(
        &from_guest(&icmpv6_from(GUEST_MAC, GUEST_LINK_LOCAL, ALL_ROUTERS, 255, &solicit)),
        now,
        &mut host,
    );
    let (dst_mac, src, dst, hop_limit, message) =
        icmpv6_sent(&gateway.pop_frame().expect("an advertisement"));
    assert_eq!((dst_mac, src, dst, hop_limit), (GUEST_MAC, GATEWAY_LINK_LOCAL, GUEST_LINK_LOCAL, 255));
    assert_eq!(message[0], 134);
    assert_eq!(u16::from_be_bytes([message[6], message[7]]), 1800, "the gateway is the default router");
    let options = options(&message);
    let option = |kind: u8| options.iter().find(|(t, _)| *t == kind).map(|(_, o)| o.clone()).unwrap();
    assert_eq!(option(1)[2..8], gateway.config().mac().0, "source link-layer address");
    assert_eq!(u32::from_be_bytes(option(5)[4..8].try_into().unwrap()), 1400, "MTU");
    let prefix = option(3);
    assert_eq!((prefix[2], prefix[3] & 0xc0), (64, 0xc0), "a /64, on-link and autonomous");
    assert_eq!(prefix[16..32], "fec0::".parse::<Ipv6Addr>().unwrap().octets());
    assert_eq!(option(25)[8..24], "fec0::3".parse::<Ipv6Addr>().unwrap().octets(), "RDNSS");
    assert_eq!(&option(31)[8..19], b"\x04vnet\x04test\x00", "DNSSL");
    assert!(gateway.pop_frame().is_none());
}

#[test]
fn unsolicited_advertisements_go_to_all_nodes_at_intervals() {
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    assert_eq!(gateway.next_deadline(), None, "nothing before a guest sends IPv6");
    let solicit = solicitation(GATEWAY_GLOBAL);
    gateway.receive(
        &from_guest(&icmpv6_from(GUEST_MAC, GUEST_LINK_LOCAL, GATEWAY_GLOBAL, 255, &solicit)),
        now,
        &mut host,
    );
    gateway.pop_frame();
    assert_eq!(gateway.next_deadline(), Some(now));
    gateway.on_deadline(now, &mut host);
    let (dst_mac, _, dst, _, message) = icmpv6_sent(&gateway.pop_frame().expect("an advertisement"));
    assert_eq!(
        (dst_mac, dst, message[0]),
        (MacAddress([0x33, 0x33, 0, 0, 0, 1]), "ff02::1".parse().unwrap(), 134)
    );
    assert_eq!(gateway.next_deadline(), Some(now + Duration::from_secs(200)));
}

#[test]
fn solicitations_for_the_gateways_addresses_are_answered_and_others_are_not() {
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    for target in [GATEWAY_GLOBAL, GATEWAY_LINK_LOCAL, "fec0::3".parse().unwrap()] {
        let frame = icmpv6_from(GUEST_MAC, GUEST_LINK_LOCAL, target, 255, &solicitation(target));
        gateway.receive(&from_guest(&frame), now, &mut host);
        let (dst_mac, src, dst, _, message) = icmpv6_sent(&gateway.pop_frame().expect("an advertisement"));
        assert_eq!((dst_mac, src, dst), (GUEST_MAC, target, GUEST_LINK_LOCAL));
        let NdiscRepr::NeighborAdvert { flags, target_addr, lladdr } =
            NdiscRepr::parse(&Icmpv6Packet::new_checked(&message[..]).unwrap()).unwrap()
        else {
            panic!("not a neighbour advertisement")
        };
        assert_eq!(target_addr, target);
        assert_eq!(lladdr.unwrap().as_bytes(), gateway.config().mac().as_bytes());
        assert!(flags.contains(NdiscNeighborFlags::SOLICITED | NdiscNeighborFlags::ROUTER));
    }
    let other = "fec0::99".parse().unwrap();
    gateway.receive(
        &from_guest(&icmpv6_from(GUEST_MAC, GUEST_LINK_LOCAL, other, 255, &solicitation(other))),
        now,
        &mut host,
    );
    assert!(gateway.pop_frame().is_none(), "another guest's address is that guest's to answer");
    // A guest checking whether fec0::2 is free (duplicate address detection) is told,
    // through all nodes, that it is not.
    let dad =
        icmpv6_from(GUEST_MAC, Ipv6Addr::UNSPECIFIED, GATEWAY_GLOBAL, 255, &solicitation(GATEWAY_GLOBAL));
    gateway.receive(&from_guest(&dad), now, &mut host);
    let (_, _, dst, _, _) = icmpv6_sent(&gateway.pop_frame().expect("an advertisement"));
    assert_eq!(dst, "ff02::1".parse::<Ipv6Addr>().unwrap());
}

#[test]
fn echo_to_the_gateways_addresses_is_answered() {
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let request = [128, 0, 0, 0, 0x12, 0x34, 0, 7, b'p', b'i', b'n', b'g'];
    gateway.receive(
        &from_guest(&icmpv6_from(GUEST_MAC, GUEST_GLOBAL, GATEWAY_GLOBAL, 64, &request)),
        now,
        &mut host,
    );
    let (dst_mac, src, dst, _, message) = icmpv6_sent(&gateway.pop_frame().expect("an echo reply"));
    assert_eq!((dst_mac, src, dst), (GUEST_MAC, GATEWAY_GLOBAL, GUEST_GLOBAL));
    assert_eq!(Icmpv6Packet::new_checked(&message[..]).unwrap().msg_type(), Icmpv6Message::EchoReply);
    assert_eq!(message[4..], request[4..], "identifier, sequence number and data come back");
}

#[test]
fn no_guest_takes_the_gateways_addresses_or_another_guests() {
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let claim = advertisement(GATEWAY_GLOBAL, GUEST_MAC);
    gateway.receive(
        &from_guest(&icmpv6_from(GUEST_MAC, GUEST_LINK_LOCAL, "ff02::1".parse().unwrap(), 255, &claim)),
        now,
        &mut host,
    );
    assert_eq!(gateway.counters().drops(GatewayDropReason::Spoofed), 1, "the gateway's address");
    let mine = advertisement(GUEST_GLOBAL, GUEST_MAC);
    gateway.receive(
        &from_guest(&icmpv6_from(GUEST_MAC, GUEST_GLOBAL, "ff02::1".parse().unwrap(), 255, &mine)),
        now,
        &mut host,
    );
    let thief = MacAddress([0x02, 0, 0, 0, 0, 0x66]);
    let stolen = advertisement(GUEST_GLOBAL, thief);
    let frame = icmpv6_from(thief, "fe80::66".parse().unwrap(), "ff02::1".parse().unwrap(), 255, &stolen);
    gateway.receive(&from_port(2, &frame), now, &mut host);
    assert_eq!(gateway.counters().drops(GatewayDropReason::Spoofed), 2, "a live guest's address");
    host.gone_ports.push(GUEST_PORT);
    gateway.receive(&from_port(2, &frame), now, &mut host);
    assert_eq!(
        gateway.counters().drops(GatewayDropReason::Spoofed),
        2,
        "the address of a guest whose port is gone"
    );
}

#[test]
fn neighbour_discovery_from_beyond_the_link_and_a_switched_off_family_are_dropped() {
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let frame = icmpv6_from(GUEST_MAC, GUEST_LINK_LOCAL, GATEWAY_GLOBAL, 64, &solicitation(GATEWAY_GLOBAL));
    gateway.receive(&from_guest(&frame), now, &mut host);
    assert!(gateway.pop_frame().is_none());
    assert_eq!(gateway.counters().drops(GatewayDropReason::Malformed), 1, "a hop limit below 255");
    let config = GatewayConfig { ipv6: false, ..GatewayConfig::default() };
    let (mut gateway, mut host, now) = gateway_with(config);
    let frame = icmpv6_from(GUEST_MAC, GUEST_LINK_LOCAL, GATEWAY_GLOBAL, 255, &solicitation(GATEWAY_GLOBAL));
    gateway.receive(&from_guest(&frame), now, &mut host);
    assert!(gateway.pop_frame().is_none());
    assert_eq!(gateway.counters().drops(GatewayDropReason::FamilyOff), 1);
    assert_eq!(gateway.next_deadline(), None, "no advertisements with ipv6=off");
}

#[test]
fn with_restrict_on_the_advertisement_names_no_default_router_and_no_dns() {
    let (mut gateway, mut host, now) =
        gateway_with(GatewayConfig { restrict: true, ..GatewayConfig::default() });
    let solicit = ndisc(NdiscRepr::RouterSolicit { lladdr: Some(RawHardwareAddress::from(GUEST_MAC)) });
    gateway.receive(
        &from_guest(&icmpv6_from(GUEST_MAC, GUEST_LINK_LOCAL, ALL_ROUTERS, 255, &solicit)),
        now,
        &mut host,
    );
    let (_, _, _, _, message) = icmpv6_sent(&gateway.pop_frame().expect("an advertisement"));
    assert_eq!(u16::from_be_bytes([message[6], message[7]]), 0, "not a default router");
    let kinds: Vec<u8> = options(&message).into_iter().map(|(kind, _)| kind).collect();
    assert!(kinds.contains(&3) && !kinds.contains(&25), "the prefix, and no DNS: {kinds:?}");
}
