//! UDP NAT: host loopback, restrictions and hostfwd.

use smoltcp::wire::IpProtocol;

use super::*;

#[test]
fn udp_to_the_host_address_goes_to_host_loopback_and_replies_come_back() {
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 7777);
    gateway.receive(&from_guest(&guest_udp(dst, b"ping")), now, &mut host);
    let (flow, sent) = host.sent.last().cloned().unwrap();
    assert_eq!(host.open[&flow], "127.0.0.1:7777".parse::<SocketAddr>().unwrap());
    assert_eq!(sent, b"ping");
    gateway.on_udp_datagram(flow, FrameBuffer::copy_of(b"pong"), now, &mut host);
    let (from, to, payload) = udp_of(&gateway.pop_frame().unwrap());
    assert_eq!((from, to, payload), (dst, SocketAddrV4::new(GUEST_IP, 40000), b"pong".to_vec()));

    gateway.on_udp_error(flow, &io::ErrorKind::ConnectionRefused.into(), None, now, &mut host);
    let unreachable = gateway.pop_frame().expect("port unreachable");
    let ip = Ipv4Packet::new_checked(&unreachable[14..]).unwrap();
    assert_eq!(ip.next_header(), IpProtocol::Icmp);

    gateway.on_deadline(now + crate::udp::IDLE_TIMEOUT, &mut host);
    assert!(host.open.is_empty(), "idle flow closed");
}

#[test]
fn restrict_broadcast_and_host_loopback_off_keep_udp_in() {
    let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 7777);
    for config in [
        GatewayConfig { restrict: true, ..GatewayConfig::default() },
        GatewayConfig { host_loopback: false, ..GatewayConfig::default() },
    ] {
        let (mut gateway, mut host, now) = gateway_with(config);
        gateway.receive(&from_guest(&guest_udp(dst, b"x")), now, &mut host);
        assert!(host.sent.is_empty());
        assert_eq!(gateway.counters().drops(GatewayDropReason::Restricted), 1);
    }
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    for dst in [Ipv4Addr::BROADCAST, Ipv4Addr::new(10, 0, 2, 255), Ipv4Addr::new(239, 1, 2, 3)] {
        let frame = packet::udp(
            GUEST_MAC,
            MacAddress::BROADCAST,
            SocketAddr::from((GUEST_IP, 1)),
            SocketAddr::from((dst, 9)),
            b"x",
        )
        .unwrap()
        .to_vec();
        gateway.receive(&from_guest(&frame), now, &mut host);
    }
    assert!(host.sent.is_empty(), "broadcast and multicast never leak out");
}

#[test]
fn udp_hostfwd_reaches_the_guest_and_its_reply_returns_to_the_client() {
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    lease(&mut gateway, &mut host, GUEST_MAC, now);
    let client: SocketAddr = "127.0.0.1:40001".parse().unwrap();
    gateway.on_inbound_udp(ForwardId(0), SocketAddrV4::new(GUEST_IP, 53).into(), client, b"question", now);
    let (from, to, payload) = udp_of(&gateway.pop_frame().expect("a datagram for the guest"));
    assert_eq!((to, payload.as_slice()), (SocketAddrV4::new(GUEST_IP, 53), &b"question"[..]));
    assert_eq!(*from.ip(), Ipv4Addr::new(10, 0, 2, 2));
    let reply =
        packet::udp(GUEST_MAC, gateway.config().mac(), to.into(), from.into(), b"answer").unwrap().to_vec();
    gateway.receive(&from_guest(&reply), now, &mut host);
    assert_eq!(host.replies, vec![(client, b"answer".to_vec())]);
}

#[test]
fn a_udp_hostfwd_client_off_loopback_is_seen_at_its_own_address_and_answered_there() {
    let client: SocketAddr = "192.0.2.7:40001".parse().unwrap();
    for (config, shown) in [
        (GatewayConfig::default(), true),
        (GatewayConfig { hostfwd_shows_client: false, ..GatewayConfig::default() }, false),
    ] {
        let restrict = GatewayConfig { restrict: true, ..config };
        let (mut gateway, mut host, now) = gateway_with(restrict);
        lease(&mut gateway, &mut host, GUEST_MAC, now);
        gateway.on_inbound_udp(
            ForwardId(0),
            SocketAddrV4::new(GUEST_IP, 53).into(),
            client,
            b"question",
            now,
        );
        let (from, to, _) = udp_of(&gateway.pop_frame().expect("a datagram for the guest"));
        assert_eq!(SocketAddr::from(from) == client, shown, "{from}");
        let reply = packet::udp(GUEST_MAC, gateway.config().mac(), to.into(), from.into(), b"answer")
            .unwrap()
            .to_vec();
        gateway.receive(&from_guest(&reply), now, &mut host);
        assert_eq!(
            host.replies,
            vec![(client, b"answer".to_vec())],
            "the reply returns even under restrict=on"
        );
        assert!(host.open.is_empty(), "no NAT flow was opened for the reply");
    }
}

#[test]
fn the_hosts_loopback_is_reachable_only_as_the_host_address() {
    use smoltcp::wire::TcpControl;
    let config = GatewayConfig { host_loopback: false, ..GatewayConfig::default() };
    let (mut gateway, mut host, now) = gateway_with(config);
    for dst in [Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(0, 1, 2, 3), Ipv4Addr::new(10, 0, 2, 2)] {
        gateway.receive(&from_guest(&guest_udp(SocketAddrV4::new(dst, 22), b"x")), now, &mut host);
        gateway.receive(
            &from_guest(&guest_tcp(SocketAddrV4::new(dst, 22), TcpControl::Syn, 1, None, &[])),
            now,
            &mut host,
        );
    }
    assert!(host.open.is_empty(), "nothing reached the host: {:?}", host.open);
    assert_eq!(gateway.counters().drops(GatewayDropReason::Restricted), 6);
}
