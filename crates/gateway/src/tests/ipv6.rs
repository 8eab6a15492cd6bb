//! UDP, DNS and TCP over IPv6: the gateway's address leads to the host's ::1, replies
//! find the guest by the address it sent from, addresses that must not leave do not,
//! and a guest over budget is refused with ICMPv6.

use std::net::{Ipv6Addr, SocketAddrV6};

use smoltcp::wire::{Icmpv6Packet, IpProtocol, Ipv6Packet, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber};

use super::*;

const GUEST_IP6: Ipv6Addr = Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0x15);
const GATEWAY_IP6: Ipv6Addr = Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 2);

fn guest_udp6(dst: SocketAddrV6, payload: &[u8]) -> Vec<u8> {
    let src = SocketAddr::from((GUEST_IP6, 40000));
    packet::udp(GUEST_MAC, MacAddress([0x52, 0x55, 10, 0, 2, 2]), src, dst.into(), payload).unwrap().to_vec()
}

/// Source, destination and payload of an IPv6 UDP frame the gateway sent.
fn udp6_of(frame: &[u8]) -> (SocketAddrV6, SocketAddrV6, Vec<u8>) {
    let ethernet = EthernetFrame::new_checked(frame).unwrap();
    assert_eq!(ethernet.dst_addr(), GUEST_MAC);
    let ip = Ipv6Packet::new_checked(ethernet.payload()).unwrap();
    let udp = UdpPacket::new_checked(ip.payload()).unwrap();
    assert!(udp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()));
    (
        SocketAddrV6::new(ip.src_addr(), udp.src_port(), 0, 0),
        SocketAddrV6::new(ip.dst_addr(), udp.dst_port(), 0, 0),
        udp.payload().to_vec(),
    )
}

/// A guest's SYN from port 40000 to `dst_port`, with sequence number `seq`.
fn syn_to(dst_port: u16, seq: u32) -> TcpRepr<'static> {
    TcpRepr {
        src_port: 40000,
        dst_port,
        control: TcpControl::Syn,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: None,
        window_len: 65535,
        window_scale: None,
        max_seg_size: Some(1440),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    }
}

#[test]
fn udp_to_the_gateways_ipv6_address_reaches_host_loopback_and_replies_come_back() {
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let dst = SocketAddrV6::new(GATEWAY_IP6, 7777, 0, 0);
    gateway.receive(&from_guest(&guest_udp6(dst, b"ping")), now, &mut host);
    let (flow, sent) = host.sent.last().cloned().expect("sent to the host");
    assert_eq!(host.open[&flow], "[::1]:7777".parse::<SocketAddr>().unwrap());
    assert_eq!(sent, b"ping");
    gateway.on_udp_datagram(flow, FrameBuffer::copy_of(b"pong"), now, &mut host);
    let (from, to, payload) = udp6_of(&gateway.pop_frame().expect("the reply"));
    assert_eq!((from, to, payload), (dst, SocketAddrV6::new(GUEST_IP6, 40000, 0, 0), b"pong".to_vec()));
}

#[test]
fn ipv6_addresses_that_must_not_leave_do_not() {
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    for (dst, reason) in [
        ("::1", GatewayDropReason::Restricted),
        ("fe80::1", GatewayDropReason::Restricted),
        ("::ffff:127.0.0.1", GatewayDropReason::Restricted),
        ("fec0::99", GatewayDropReason::NotForGateway),
        ("ff02::fb", GatewayDropReason::Broadcast),
    ] {
        let before = gateway.counters().drops(reason);
        let dst = SocketAddrV6::new(dst.parse().unwrap(), 9, 0, 0);
        gateway.receive(&from_guest(&guest_udp6(dst, b"x")), now, &mut host);
        assert_eq!(gateway.counters().drops(reason), before + 1, "{dst}");
    }
    assert!(host.sent.is_empty());
    let restricted = GatewayConfig { host_loopback: false, ..GatewayConfig::default() };
    let (mut gateway, mut host, now) = gateway_with(restricted);
    gateway.receive(&from_guest(&guest_udp6(SocketAddrV6::new(GATEWAY_IP6, 9, 0, 0), b"x")), now, &mut host);
    assert_eq!(gateway.counters().drops(GatewayDropReason::Restricted), 1, "host-loopback=off");
}

#[test]
fn dns_to_the_ipv6_dns_address_is_forwarded_and_answered() {
    let upstream: SocketAddr = "127.0.0.1:5353".parse().unwrap();
    let (mut gateway, mut host, now) =
        gateway_with(GatewayConfig { dns_upstreams: vec![upstream], ..GatewayConfig::default() });
    let dns = SocketAddrV6::new("fec0::3".parse().unwrap(), 53, 0, 0);
    gateway.receive(&from_guest(&guest_udp6(dns, &dns_query(0x4242))), now, &mut host);
    let (flow, query) = host.sent.last().cloned().expect("forwarded upstream");
    assert_eq!(host.open[&flow], upstream);
    let mut answer = query.clone();
    answer[2] |= 0x80;
    gateway.on_udp_datagram(flow, FrameBuffer::copy_of(&answer), now, &mut host);
    let (from, to, payload) = udp6_of(&gateway.pop_frame().expect("the answer"));
    assert_eq!((from, to), (dns, SocketAddrV6::new(GUEST_IP6, 40000, 0, 0)));
    assert_eq!(payload[..2], [0x42, 0x42]);
}

#[test]
fn a_tcp_connection_to_the_gateways_ipv6_address_connects_to_host_loopback() {
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let syn = syn_to(8080, 1000);
    let src = SocketAddr::from((GUEST_IP6, 40000));
    let dst = SocketAddr::from((GATEWAY_IP6, 8080));
    let frame = packet::tcp(GUEST_MAC, gateway.config().mac(), src, dst, &syn).unwrap();
    gateway.receive(&from_guest(&frame), now, &mut host);
    let (flow, remote) = host.open.iter().next().map(|(flow, remote)| (*flow, *remote)).expect("a connect");
    assert_eq!(remote, "[::1]:8080".parse::<SocketAddr>().unwrap());
    gateway.on_tcp_connected(flow, now, &mut host);
    let reply = gateway.pop_frame().expect("the SYN-ACK");
    let ip = Ipv6Packet::new_checked(&reply[14..]).unwrap();
    assert_eq!((ip.src_addr(), ip.dst_addr()), (GATEWAY_IP6, GUEST_IP6));
    let segment = TcpPacket::new_checked(ip.payload()).unwrap();
    assert!(segment.syn() && segment.ack());
    assert!(segment.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()));
    assert_eq!(segment.ack_number(), TcpSeqNumber(1001));
}

#[test]
fn a_guest_over_its_udp_budget_is_refused_with_icmpv6() {
    let limits = GuestLimits { udp: Some(1), ..GuestLimits::default() };
    let (mut gateway, mut host, now) =
        gateway_with(GatewayConfig { guest_limits: limits, ..GatewayConfig::default() });
    for port in [7000, 7001] {
        gateway.receive(
            &from_guest(&guest_udp6(SocketAddrV6::new(GATEWAY_IP6, port, 0, 0), b"x")),
            now,
            &mut host,
        );
    }
    let refusal = gateway.pop_frame().expect("a refusal");
    let ip = Ipv6Packet::new_checked(&refusal[14..]).unwrap();
    assert_eq!(
        (ip.src_addr(), ip.dst_addr(), ip.next_header()),
        (GATEWAY_IP6, GUEST_IP6, IpProtocol::Icmpv6)
    );
    let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
    assert!(icmp.verify_checksum(&ip.src_addr(), &ip.dst_addr()));
    assert_eq!((icmp.msg_type().into(), icmp.msg_code()), (1u8, 1u8), "administratively prohibited");
    assert_eq!(gateway.counters().drops(GatewayDropReason::GuestBudget), 1);
}

#[test]
fn echo_beyond_the_gateway_goes_through_a_ping_socket_and_the_reply_keeps_the_guests_identifier() {
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let far: Ipv6Addr = "2001:db8::1".parse().unwrap();
    let request = [128, 0, 0, 0, 0x12, 0x34, 0, 9, b'h', b'i'];
    let frame = packet::icmpv6(GUEST_MAC, gateway.config().mac(), GUEST_IP6, far, 64, &request).unwrap();
    gateway.receive(&from_guest(&frame), now, &mut host);
    let (flow, sent) = host.sent.last().cloned().expect("sent through a ping socket");
    assert_eq!(host.open[&flow], SocketAddr::from((far, 0)));
    assert_eq!(sent[4..], request[4..]);
    // The ping socket chose its own identifier; the guest gets its own back.
    let from_socket = [129, 0, 0, 0, 0x77, 0x77, 0, 9, b'h', b'i'];
    gateway.on_udp_datagram(flow, FrameBuffer::copy_of(&from_socket), now, &mut host);
    let reply = gateway.pop_frame().expect("the echo reply");
    let ip = Ipv6Packet::new_checked(&reply[14..]).unwrap();
    assert_eq!((ip.src_addr(), ip.dst_addr()), (far, GUEST_IP6));
    let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
    assert!(icmp.verify_checksum(&ip.src_addr(), &ip.dst_addr()));
    assert_eq!(ip.payload()[..], [129, 0, ip.payload()[2], ip.payload()[3], 0x12, 0x34, 0, 9, b'h', b'i']);
}

#[test]
fn a_hop_limit_that_runs_out_at_the_gateway_gets_time_exceeded_from_it() {
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let far: Ipv6Addr = "2001:db8::1".parse().unwrap();
    let mut frame = guest_udp6(SocketAddrV6::new(far, 33434, 0, 0), b"probe");
    frame[14 + 7] = 1; // the hop limit, which the UDP checksum does not cover
    gateway.receive(&from_guest(&frame), now, &mut host);
    assert!(host.sent.is_empty(), "nothing leaves");
    let error = gateway.pop_frame().expect("time exceeded");
    let ip = Ipv6Packet::new_checked(&error[14..]).unwrap();
    assert_eq!((ip.src_addr(), ip.dst_addr()), (GATEWAY_IP6, GUEST_IP6));
    let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
    assert!(icmp.verify_checksum(&ip.src_addr(), &ip.dst_addr()));
    assert_eq!((u8::from(icmp.msg_type()), icmp.msg_code()), (3, 0));
    let quoted = Ipv6Packet::new_checked(&ip.payload()[8..]).unwrap();
    assert_eq!((quoted.dst_addr(), quoted.hop_limit()), (far, 1), "the probe is quoted");
}

/// The ICMPv6 type, code and source of an error frame the gateway sent to the guest.
fn icmpv6_error_of(frame: &[u8]) -> (u8, u8, Ipv6Addr) {
    let ip = Ipv6Packet::new_checked(&frame[14..]).unwrap();
    assert_eq!(ip.dst_addr(), GUEST_IP6);
    let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
    assert!(icmp.verify_checksum(&ip.src_addr(), &ip.dst_addr()));
    (u8::from(icmp.msg_type()), icmp.msg_code(), ip.src_addr())
}

#[test]
fn host_errors_about_a_guests_ipv6_datagrams_reach_it_as_icmpv6_from_who_sent_them() {
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let far: Ipv6Addr = "2001:db8::1".parse().unwrap();
    gateway.receive(&from_guest(&guest_udp6(SocketAddrV6::new(far, 9, 0, 0), b"x")), now, &mut host);
    let (flow, _) = host.sent.last().cloned().unwrap();
    gateway.on_udp_error(flow, &io::ErrorKind::ConnectionRefused.into(), None, now, &mut host);
    assert_eq!(icmpv6_error_of(&gateway.pop_frame().expect("port unreachable")), (1, 4, far));
    let router: Ipv6Addr = "2001:db8:1::9".parse().unwrap();
    let expired = HostIcmpError::from_icmpv6_message(router, 3, 0);
    gateway.on_udp_error(flow, &io::Error::from_raw_os_error(libc::EHOSTUNREACH), expired, now, &mut host);
    assert_eq!(icmpv6_error_of(&gateway.pop_frame().expect("time exceeded")), (3, 0, router));
}

#[test]
fn a_guestfwd_on_an_ipv6_virtual_address_is_answered_by_ndp_and_connects_to_its_target() {
    let virtual_addr: SocketAddr = "[fec0::100]:80".parse().unwrap();
    let target: SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let config = GatewayConfig {
        guest_forwards: vec![GuestForward { virtual_addr, target: GuestForwardTarget::Connect(target) }],
        ..GatewayConfig::default()
    };
    let (mut gateway, mut host, now) = gateway_with(config);
    assert!(gateway.config().is_own_ipv6("fec0::100".parse().unwrap()), "NDP answers for it");
    let syn = syn_to(80, 7);
    let frame = packet::tcp(
        GUEST_MAC,
        gateway.config().mac(),
        SocketAddr::from((GUEST_IP6, 40000)),
        virtual_addr,
        &syn,
    )
    .unwrap();
    gateway.receive(&from_guest(&frame), now, &mut host);
    assert_eq!(host.open.values().copied().collect::<Vec<_>>(), [target]);
}

#[test]
fn an_ipv6_packet_above_the_mtu_gets_packet_too_big_with_the_mtu() {
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig { mtu: 1400, ..GatewayConfig::default() });
    let far = SocketAddrV6::new("2001:db8::1".parse().unwrap(), 9, 0, 0);
    gateway.receive(&from_guest(&guest_udp6(far, &[7u8; 1500])), now, &mut host);
    assert!(host.sent.is_empty(), "nothing leaves");
    let frame = gateway.pop_frame().expect("packet too big");
    let (icmp_type, code, from) = icmpv6_error_of(&frame);
    assert_eq!((icmp_type, code, from), (2, 0, GATEWAY_IP6));
    let ip = Ipv6Packet::new_checked(&frame[14..]).unwrap();
    assert_eq!(ip.payload()[4..8], 1400u32.to_be_bytes(), "the MTU");
    assert!(ip.payload().len() <= 1240, "the error fits the minimum MTU");
    assert_eq!(gateway.counters().drops(GatewayDropReason::TooLarge), 1);
    gateway.receive(&from_guest(&guest_udp6(far, &[7u8; 1300])), now, &mut host);
    assert_eq!(host.sent.len(), 1, "a packet that fits goes out");
}

#[test]
fn a_connection_to_a_silent_ipv6_guest_asks_for_it_by_neighbour_solicitation_first() {
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let flow = gateway.allocate_flow();
    gateway.connect_to_guest(SocketAddr::from((GUEST_IP6, 22)), None, flow, now, &mut host);
    let solicitation = gateway.pop_frame().expect("a neighbour solicitation");
    assert_eq!(solicitation[..6], [0x33, 0x33, 0xff, 0, 0, 0x15], "to the solicited-node address");
    let ip = Ipv6Packet::new_checked(&solicitation[14..]).unwrap();
    assert_eq!(ip.dst_addr(), "ff02::1:ff00:15".parse::<Ipv6Addr>().unwrap());
    assert_eq!((ip.payload()[0], &ip.payload()[8..24]), (135, &GUEST_IP6.octets()[..]));
    // The guest answers; the SYN follows, from the gateway's IPv6 address.
    let mut answer = vec![136, 0, 0, 0, 0x60, 0, 0, 0];
    answer.extend_from_slice(&GUEST_IP6.octets());
    answer.extend_from_slice(&[2, 1]);
    answer.extend_from_slice(GUEST_MAC.as_bytes());
    let frame =
        packet::icmpv6(GUEST_MAC, gateway.config().mac(), GUEST_IP6, GATEWAY_IP6, 255, &answer).unwrap();
    gateway.receive(&from_guest(&frame), now, &mut host);
    let syn = gateway.pop_frame().expect("the SYN");
    let ip = Ipv6Packet::new_checked(&syn[14..]).unwrap();
    assert_eq!((ip.src_addr(), ip.dst_addr()), (GATEWAY_IP6, GUEST_IP6));
    assert!(TcpPacket::new_checked(ip.payload()).unwrap().syn());
}

#[test]
fn host_data_reaches_an_ipv6_guest_in_the_largest_frames_an_offloading_port_takes() {
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let src = SocketAddr::from((GUEST_IP6, 40000));
    let dst = SocketAddr::from((GATEWAY_IP6, 8080));
    let mut syn = syn_to(8080, 1000);
    syn.window_scale = Some(7);
    let frame = packet::tcp(GUEST_MAC, gateway.config().mac(), src, dst, &syn).unwrap();
    gateway.receive(&from_guest(&frame), now, &mut host);
    let flow = *host.open.keys().next().expect("a connect");
    gateway.on_tcp_connected(flow, now, &mut host);
    let syn_ack = gateway.pop_frame().expect("the SYN-ACK");
    let isn = TcpPacket::new_checked(&syn_ack[14 + 40..]).unwrap().seq_number();
    let ack = TcpRepr {
        control: TcpControl::None,
        seq_number: TcpSeqNumber(1001),
        ack_number: Some(isn + 1),
        window_len: 65535,
        window_scale: None,
        max_seg_size: None,
        ..syn
    };
    let frame = packet::tcp(GUEST_MAC, gateway.config().mac(), src, dst, &ack).unwrap();
    gateway.receive(&from_guest(&frame), now, &mut host);
    host.guest_room = Some(EgressRoom { takes_offloads: true, ..EgressRoom::UNLIMITED });
    host.tcp_incoming.insert(flow, vec![7u8; 200_000]);
    gateway.on_tcp_readable(flow, now, &mut host);
    let mut received = 0;
    let mut largest = 0;
    // The guest acknowledges each flight, and the congestion window grows with it.
    for _ in 0..10 {
        while let Some(frame) = gateway.pop_frame() {
            let ip = Ipv6Packet::new_checked(&frame[14..]).unwrap();
            largest = largest.max(frame.len());
            received += TcpPacket::new_checked(ip.payload()).unwrap().payload().len();
        }
        let ack_all = TcpRepr { ack_number: Some(isn + 1 + received), ..ack };
        let frame = packet::tcp(GUEST_MAC, gateway.config().mac(), src, dst, &ack_all).unwrap();
        gateway.receive(&from_guest(&frame), now, &mut host);
    }
    assert_eq!(received, 200_000, "all of it, though one frame of IPv4's size does not fit");
    assert_eq!(largest, vnet_wire::MAX_FRAME_LEN, "frames as large as a port takes");
}

#[test]
fn without_ipv4_a_forward_to_an_empty_guest_address_reaches_the_first_learned_ipv6_guest() {
    let config = GatewayConfig { ipv4: false, ..GatewayConfig::default() };
    let forward = HostForward {
        protocol: ForwardProtocol::Tcp,
        host: "[::1]:2222".parse().unwrap(),
        guest: "0.0.0.0:22".parse().unwrap(),
    };
    let resolved = config.resolve_forward(forward).guest;
    assert_eq!(resolved, "[::]:22".parse::<SocketAddr>().unwrap());
    let (mut gateway, mut host, now) = gateway_with(config);
    let nobody_yet = gateway.allocate_flow();
    gateway.connect_to_guest(resolved, None, nobody_yet, now, &mut host);
    assert_eq!(host.closed, [(nobody_yet, true)], "refused while no guest is known");
    assert_eq!(gateway.counters().drops(GatewayDropReason::UnknownGuest), 1);

    // The guest speaks (to the gateway, from its SLAAC address); then another guest.
    let later_guest = Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0x9);
    for (mac, ip, at) in [
        (GUEST_MAC, GUEST_IP6, now),
        (MacAddress([0x52, 0x54, 0, 0, 0, 9]), later_guest, now + Duration::from_secs(1)),
    ] {
        let src = SocketAddr::from((ip, 40000));
        let frame =
            packet::udp(mac, gateway.config().mac(), src, SocketAddr::from((GATEWAY_IP6, 9)), b"hi").unwrap();
        gateway.receive(&from_guest(&frame), at, &mut host);
    }
    let flow = gateway.allocate_flow();
    gateway.connect_to_guest(resolved, None, flow, now + Duration::from_secs(2), &mut host);
    let syn = gateway.pop_frame().expect("the SYN");
    let ip = Ipv6Packet::new_checked(&syn[14..]).unwrap();
    assert_eq!((ip.src_addr(), ip.dst_addr()), (GATEWAY_IP6, GUEST_IP6), "to the guest learned first");
    assert_eq!(TcpPacket::new_checked(ip.payload()).unwrap().dst_port(), 22);
}

/// `frame` (IPv6, from a guest) with `headers` between its fixed header and its payload,
/// the first of them named by `first` (the last must name the payload's protocol).
fn with_extension_headers(frame: &[u8], first: u8, headers: &[u8]) -> Vec<u8> {
    let (fixed, payload) = frame.split_at(14 + 40);
    let mut out = fixed.to_vec();
    out[18..20].copy_from_slice(&((payload.len() + headers.len()) as u16).to_be_bytes());
    out[20] = first;
    out.extend_from_slice(headers);
    out.extend_from_slice(payload);
    out
}

#[test]
fn extension_headers_are_looked_through_and_chains_the_gateway_will_not_act_on_are_counted() {
    const UDP: u8 = 17;
    const HOP_BY_HOP: u8 = 0;
    const ROUTING: u8 = 43;
    const FRAGMENT: u8 = 44;
    const DESTINATION_OPTIONS: u8 = 60;
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let udp = guest_udp6(SocketAddrV6::new(GATEWAY_IP6, 7777, 0, 0), b"behind options");
    let options = [UDP, 0, 1, 4, 0, 0, 0, 0];
    gateway.receive(
        &from_guest(&with_extension_headers(&udp, DESTINATION_OPTIONS, &options)),
        now,
        &mut host,
    );
    assert_eq!(host.sent.last().map(|(_, sent)| sent.as_slice()), Some(&b"behind options"[..]));

    let spent_route = [UDP, 0, 4, 0, 0, 0, 0, 0];
    let sent = host.sent.len();
    gateway.receive(&from_guest(&with_extension_headers(&udp, ROUTING, &spent_route)), now, &mut host);
    assert_eq!(host.sent.len(), sent + 1, "a routing header with no segments left is no obstacle");

    let dropped = [
        (FRAGMENT, vec![UDP, 0, 0, 1, 0, 0, 0, 9], GatewayDropReason::Fragment),
        (ROUTING, vec![UDP, 0, 0, 1, 0, 0, 0, 0], GatewayDropReason::SourceRoute),
        (HOP_BY_HOP, vec![UDP, 0, 0xc2, 4, 0, 1, 0, 0], GatewayDropReason::Jumbogram),
        (DESTINATION_OPTIONS, vec![UDP, 0, 0xc0, 4, 0, 0, 0, 0], GatewayDropReason::ExtensionHeader),
        (DESTINATION_OPTIONS, vec![UDP, 0, 1, 9, 0, 0, 0, 0], GatewayDropReason::Malformed),
    ];
    for (first, headers, reason) in dropped {
        let before = gateway.counters().drops(reason);
        gateway.receive(&from_guest(&with_extension_headers(&udp, first, &headers)), now, &mut host);
        assert_eq!(gateway.counters().drops(reason), before + 1, "{reason:?}");
    }
    let mut jumbogram = with_extension_headers(&udp, HOP_BY_HOP, &[UDP, 0, 0xc2, 4, 0, 1, 0, 0]);
    jumbogram[18..20].copy_from_slice(&[0, 0]);
    gateway.receive(&from_guest(&jumbogram), now, &mut host);
    assert_eq!(gateway.counters().drops(GatewayDropReason::Jumbogram), 2, "payload length 0");
    assert_eq!(host.sent.len(), sent + 1, "none of them reached the host");
    assert!(gateway.pop_frame().is_none(), "nor got an answer");
}

#[test]
fn tftp_answers_on_the_gateways_ipv6_address() {
    let config = GatewayConfig {
        tftp_root: Some("/srv/tftp".into()),
        bootfile: Some("boot.ipxe".into()),
        ..GatewayConfig::default()
    };
    let (mut gateway, mut host, now) = gateway_with(config);
    let server = SocketAddrV6::new(Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 2), 69, 0, 0);
    gateway.receive(&from_guest(&guest_udp6(server, b"\0\x01missing\0octet\0")), now, &mut host);
    let (from, _, payload) = udp6_of(&gateway.pop_frame().expect("a TFTP answer"));
    assert_eq!(*from.ip(), *server.ip());
    assert_eq!(&payload[..4], &[0, 5, 0, 1], "error 1: file not found, from the IPv6 address");
}

#[test]
fn a_named_guest_is_answered_with_its_ipv6_address_too_and_its_reverse_name() {
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let name = [DhcpOption { kind: 12, data: b"alpha" }];
    gateway.receive(
        &from_guest(&dhcp_message_with_options(
            DhcpMessageType::Discover,
            GUEST_MAC,
            None,
            Ipv4Addr::UNSPECIFIED,
            &name,
        )),
        now,
        &mut host,
    );
    let (_, offered, _, _) = dhcp_reply(&mut gateway);
    let request = dhcp_message_with_options(
        DhcpMessageType::Request,
        GUEST_MAC,
        Some(offered),
        Ipv4Addr::UNSPECIFIED,
        &name,
    );
    gateway.receive(&from_guest(&request), now, &mut host);
    dhcp_reply(&mut gateway);
    // The guest speaks from its SLAAC address, so the gateway learns it.
    gateway.receive(&from_guest(&guest_udp6(SocketAddrV6::new(GATEWAY_IP6, 9, 0, 0), b"hi")), now, &mut host);
    while gateway.pop_frame().is_some() {}

    let ask = |gateway: &mut Gateway, host: &mut FakeHost, name: &[u8], kind: u16| {
        let mut query = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        query.extend_from_slice(name);
        query.extend_from_slice(&kind.to_be_bytes());
        query.extend_from_slice(&[0, 1]);
        let dns = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 3), 53);
        gateway.receive(&from_guest(&guest_udp(dns, &query)), now, host);
        udp_of(&gateway.pop_frame().expect("a local answer")).2
    };
    let aaaa = ask(&mut gateway, &mut host, b"\x05alpha\x04vnet\x08internal\x00", 28);
    assert!(aaaa.ends_with(&GUEST_IP6.octets()), "{aaaa:?}");
    let reverse: Vec<u8> = GUEST_IP6
        .octets()
        .iter()
        .rev()
        .flat_map(|byte| [byte & 0x0f, byte >> 4])
        .flat_map(|nibble| [1, format!("{nibble:x}").as_bytes()[0]])
        .chain(*b"\x03ip6\x04arpa\x00")
        .collect();
    let ptr = ask(&mut gateway, &mut host, &reverse, 12);
    assert!(ptr.ends_with(b"\x05alpha\x04vnet\x08internal\x00"), "{ptr:?}");
}
