//! ICMP: echo to the gateway and beyond, errors from the host and from routers, TTLs.

use super::*;

#[test]
fn ping_to_the_gateway_is_answered_locally() {
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let request = Icmpv4Repr::EchoRequest { ident: 7, seq_no: 3, data: b"hello" };
    let frame =
        packet::icmp(GUEST_MAC, gateway.config().mac(), GUEST_IP, Ipv4Addr::new(10, 0, 2, 2), &request)
            .unwrap()
            .to_vec();
    gateway.receive(&from_guest(&frame), now, &mut host);
    let reply = gateway.pop_frame().expect("an echo reply");
    let ethernet = EthernetFrame::new_checked(&reply[..]).unwrap();
    let ip = Ipv4Packet::new_checked(ethernet.payload()).unwrap();
    let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
    let repr = Icmpv4Repr::parse(&icmp, &ChecksumCapabilities::default()).unwrap();
    assert_eq!(repr, Icmpv4Repr::EchoReply { ident: 7, seq_no: 3, data: b"hello" });
    assert_eq!((ip.src_addr(), ip.dst_addr()), (Ipv4Addr::new(10, 0, 2, 2), GUEST_IP));
}

#[test]
fn pings_beyond_the_gateway_go_through_a_ping_socket_with_the_ident_restored() {
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let outside = Ipv4Addr::new(192, 0, 2, 9);
    let request = Icmpv4Repr::EchoRequest { ident: 0x4242, seq_no: 1, data: b"abc" };
    let frame =
        packet::icmp(GUEST_MAC, gateway.config().mac(), GUEST_IP, outside, &request).unwrap().to_vec();
    gateway.receive(&from_guest(&frame), now, &mut host);
    let (flow, sent) = host.sent.last().cloned().expect("sent through the host");
    assert_eq!(host.open[&flow], SocketAddr::from((outside, 0)));
    assert_eq!(sent, frame[34..].to_vec(), "the echo request as the guest sent it");

    // The kernel's ping socket answers with its own identifier.
    let mut reply = vec![0u8; 11];
    let repr = Icmpv4Repr::EchoReply { ident: 0x0101, seq_no: 1, data: b"abc" };
    repr.emit(&mut Icmpv4Packet::new_unchecked(&mut reply[..]), &ChecksumCapabilities::default());
    gateway.on_udp_datagram(flow, FrameBuffer::copy_of(&reply), now, &mut host);
    let back = gateway.pop_frame().expect("a reply for the guest");
    let ip = Ipv4Packet::new_checked(&back[14..]).unwrap();
    assert_eq!((ip.src_addr(), ip.dst_addr()), (outside, GUEST_IP));
    let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
    let parsed = Icmpv4Repr::parse(&icmp, &ChecksumCapabilities::default()).unwrap();
    assert_eq!(parsed, Icmpv4Repr::EchoReply { ident: 0x4242, seq_no: 1, data: b"abc" });

    let (mut restricted, mut host, now) =
        gateway_with(GatewayConfig { restrict: true, ..GatewayConfig::default() });
    restricted.receive(&from_guest(&frame), now, &mut host);
    assert!(host.sent.is_empty(), "restrict=on keeps pings in");
    assert_eq!(restricted.counters().drops(GatewayDropReason::Restricted), 1);
}

#[test]
fn host_unreachable_errors_reach_the_guest_as_icmp() {
    use smoltcp::wire::Icmpv4DstUnreachable;
    let dst = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 53);
    for (errno, reason) in [
        (101, Icmpv4DstUnreachable::NetUnreachable),
        (113, Icmpv4DstUnreachable::HostUnreachable),
        (111, Icmpv4DstUnreachable::PortUnreachable),
    ] {
        let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
        host.send_error = Some(errno);
        gateway.receive(&from_guest(&guest_udp(dst, b"x")), now, &mut host);
        let frame = gateway.pop_frame().expect("an ICMP error for the guest");
        let ip = Ipv4Packet::new_checked(&frame[14..]).unwrap();
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        let repr = Icmpv4Repr::parse(&icmp, &ChecksumCapabilities::default()).unwrap();
        assert!(
            matches!(repr, Icmpv4Repr::DstUnreachable { reason: r, .. } if r == reason),
            "{errno}: {repr:?}"
        );
        assert_eq!(ip.dst_addr(), GUEST_IP);
    }
}

#[test]
fn a_packet_whose_ttl_ends_at_the_gateway_gets_time_exceeded() {
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let mut frame = guest_udp(SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 33434), b"probe");
    {
        let mut ip = Ipv4Packet::new_unchecked(&mut frame[14..]);
        ip.set_hop_limit(1);
        ip.fill_checksum();
    }
    gateway.receive(&from_guest(&frame), now, &mut host);
    assert!(host.sent.is_empty(), "the probe does not go out");
    let reply = gateway.pop_frame().expect("time exceeded");
    let ip = Ipv4Packet::new_checked(&reply[14..]).unwrap();
    assert_eq!((ip.src_addr(), ip.dst_addr()), (Ipv4Addr::new(10, 0, 2, 2), GUEST_IP));
    let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
    assert_eq!(icmp.msg_type(), smoltcp::wire::Icmpv4Message::TimeExceeded);
    assert!(icmp.verify_checksum());
}

#[test]
fn a_low_guest_ttl_reaches_the_host_socket_less_one_hop() {
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let far = Ipv4Addr::new(192, 0, 2, 9);
    gateway.receive(
        &from_guest(&with_ttl(guest_udp(SocketAddrV4::new(far, 33434), b"a"), 3)),
        now,
        &mut host,
    );
    gateway.receive(
        &from_guest(&with_ttl(guest_udp(SocketAddrV4::new(far, 33434), b"b"), 3)),
        now,
        &mut host,
    );
    gateway.receive(
        &from_guest(&with_ttl(guest_udp(SocketAddrV4::new(far, 33434), b"c"), 64)),
        now,
        &mut host,
    );
    let flow = host.sent[0].0;
    assert_eq!(host.ttls, vec![(flow, Some(2)), (flow, None)], "set on change only, default at 64");
    gateway.receive(&from_guest(&with_ttl(guest_udp(SocketAddrV4::new(far, 7), b"d"), 128)), now, &mut host);
    assert_eq!(host.ttls.len(), 2, "a new flow at a normal TTL keeps the host's default");
}

#[test]
fn time_exceeded_from_a_router_reaches_the_guest_from_that_router() {
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let far = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 9), 33435);
    gateway.receive(&from_guest(&with_ttl(guest_udp(far, b"probe"), 2)), now, &mut host);
    let flow = host.sent[0].0;
    let router = Ipv4Addr::new(198, 51, 100, 1);
    let icmp = HostIcmpError::from_message(router, 11, 0);
    gateway.on_udp_error(flow, &io::ErrorKind::HostUnreachable.into(), icmp, now, &mut host);
    let (from, icmp_type, _, quoted_dst, quoted) = icmp_error_of(&gateway.pop_frame().unwrap());
    assert_eq!((from, icmp_type, quoted_dst), (router, 11, *far.ip()));
    assert_eq!(&quoted[..4], &[0x9c, 0x40, 0x82, 0x9b], "the probe's ports, which traceroute matches");

    // The destination's own port unreachable comes from the address the guest used,
    // also when that address stood for host loopback.
    let host_address = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 33436);
    gateway.receive(&from_guest(&with_ttl(guest_udp(host_address, b"probe"), 5)), now, &mut host);
    let flow = host.sent.last().unwrap().0;
    let icmp = HostIcmpError::from_message(Ipv4Addr::LOCALHOST, 3, 3);
    gateway.on_udp_error(flow, &io::ErrorKind::ConnectionRefused.into(), icmp, now, &mut host);
    let (from, icmp_type, code, _, _) = icmp_error_of(&gateway.pop_frame().unwrap());
    assert_eq!((from, icmp_type, code), (*host_address.ip(), 3, 3));
}
