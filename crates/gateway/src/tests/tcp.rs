//! TCP NAT: handshakes, data both ways, refusals, hostfwd, resets, timers, fail-over, room toward guests, and flows kept apart.

use super::*;

#[test]
fn tcp_syn_ack_waits_for_the_host_connect_and_data_is_acked_as_the_host_takes_it() {
    use smoltcp::wire::TcpControl;
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    host.tcp_accept = 1000;
    let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 8080);
    gateway.receive(&from_guest(&guest_tcp(dst, TcpControl::Syn, 100, None, &[])), now, &mut host);
    let flow = *host.open.keys().next().expect("a host connect");
    assert_eq!(host.open[&flow], "127.0.0.1:8080".parse::<SocketAddr>().unwrap());
    assert!(gateway.pop_frame().is_none(), "no SYN-ACK before the host connect completes");

    gateway.on_tcp_connected(flow, now, &mut host);
    let (control, isn, ack, _, _) = tcp_of(&gateway.pop_frame().expect("SYN-ACK"));
    assert_eq!((control, ack), (TcpControl::Syn, Some(101)));
    gateway.receive(&from_guest(&guest_tcp(dst, TcpControl::None, 101, Some(isn + 1), &[])), now, &mut host);

    // 1500 bytes arrive; the host takes 1000, so only 1000 are acknowledged.
    gateway.receive(
        &from_guest(&guest_tcp(dst, TcpControl::Psh, 101, Some(isn + 1), &[7u8; 1500])),
        now,
        &mut host,
    );
    assert_eq!(host.sent.last().unwrap().1.len(), 1000);
    let (_, _, ack, _, _) = tcp_of(&gateway.pop_frame().expect("an ACK"));
    assert_eq!(ack, Some(1101));

    // Host data goes out in segments and is consumed only once acknowledged.
    host.tcp_incoming.insert(flow, vec![9u8; 3000]);
    gateway.on_tcp_readable(flow, now, &mut host);
    let mut sent = 0;
    while let Some(frame) = gateway.pop_frame() {
        sent += tcp_of(&frame).4.len();
    }
    assert_eq!(sent, 3000);
    assert_eq!(host.tcp_consumed.get(&flow), None, "nothing consumed before the guest's ACK");
    gateway.receive(
        &from_guest(&guest_tcp(dst, TcpControl::None, 1101, Some(isn + 1 + 2000), &[])),
        now,
        &mut host,
    );
    assert_eq!(host.tcp_consumed[&flow], 2000);
}

#[test]
fn tcp_refusals_reach_the_guest_as_rst() {
    use smoltcp::wire::TcpControl;
    let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 9);
    // The host refuses the connect.
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    gateway.receive(&from_guest(&guest_tcp(dst, TcpControl::Syn, 5, None, &[])), now, &mut host);
    let flow = *host.open.keys().next().unwrap();
    gateway.on_tcp_error(flow, &io::ErrorKind::ConnectionRefused.into(), None, now, &mut host);
    let (control, _, ack, _, _) = tcp_of(&gateway.pop_frame().unwrap());
    assert_eq!((control, ack), (TcpControl::Rst, Some(6)));
    assert_eq!(host.closed, vec![(flow, true)]);
    // restrict=on and a full flow table refuse at once.
    for config in [
        GatewayConfig { restrict: true, ..GatewayConfig::default() },
        GatewayConfig { max_flows: 1, ..GatewayConfig::default() },
    ] {
        let limited = config.max_flows == 1;
        let (mut gateway, mut host, now) = gateway_with(config);
        if limited {
            gateway.receive(
                &from_guest(&guest_tcp(
                    SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 1),
                    TcpControl::Syn,
                    1,
                    None,
                    &[],
                )),
                now,
                &mut host,
            );
        }
        gateway.receive(&from_guest(&guest_tcp(dst, TcpControl::Syn, 5, None, &[])), now, &mut host);
        let (control, _, _, _, _) = tcp_of(&gateway.pop_frame().unwrap());
        assert_eq!(control, TcpControl::Rst);
        let reason = if limited { GatewayDropReason::FlowLimit } else { GatewayDropReason::Restricted };
        assert_eq!(gateway.counters().drops(reason), 1);
    }
}

#[test]
fn guestfwd_and_dns_over_tcp_pick_their_host_targets() {
    use smoltcp::wire::TcpControl;
    let virtual_addr = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 100), 80);
    let config = GatewayConfig {
        restrict: false,
        dns_upstreams: vec!["127.0.0.1:5353".parse().unwrap()],
        guest_forwards: vec![GuestForward {
            virtual_addr: virtual_addr.into(),
            target: GuestForwardTarget::Connect("127.0.0.1:8080".parse().unwrap()),
        }],
        ..GatewayConfig::default()
    };
    let (mut gateway, mut host, now) = gateway_with(config);
    gateway.receive(&from_guest(&guest_tcp(virtual_addr, TcpControl::Syn, 1, None, &[])), now, &mut host);
    gateway.receive(
        &from_guest(&guest_tcp(
            SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 3), 53),
            TcpControl::Syn,
            1,
            None,
            &[],
        )),
        now,
        &mut host,
    );
    let mut targets: Vec<SocketAddr> = host.open.values().copied().collect();
    targets.sort();
    assert_eq!(targets, vec!["127.0.0.1:5353".parse().unwrap(), "127.0.0.1:8080".parse().unwrap()]);
}

#[test]
fn tcp_hostfwd_connects_to_the_guest_and_a_closed_port_closes_the_client() {
    use smoltcp::wire::TcpControl;
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    lease(&mut gateway, &mut host, GUEST_MAC, now);
    host.tcp_accept = 65536;
    let flow = gateway.allocate_flow();
    gateway.connect_to_guest(SocketAddrV4::new(GUEST_IP, 22).into(), None, flow, now, &mut host);
    let frame = gateway.pop_frame().expect("a SYN to the guest");
    let (control, isn, ack, _, _) = tcp_of(&frame);
    assert_eq!((control, ack), (TcpControl::Syn, None));
    let (from, _, _) = {
        let ip = Ipv4Packet::new_checked(&frame[14..]).unwrap();
        let tcp = smoltcp::wire::TcpPacket::new_checked(ip.payload()).unwrap();
        (SocketAddrV4::new(ip.src_addr(), tcp.src_port()), (), ())
    };
    // The guest's port is closed: it answers RST, and the client's socket is closed.
    let reset = guest_tcp_from(22, from, TcpControl::Rst, 0, Some(isn.wrapping_add(1)), &[]);
    gateway.receive(&from_guest(&reset), now, &mut host);
    assert_eq!(host.closed, vec![(flow, true)]);
}

#[test]
fn a_tcp_hostfwd_client_is_seen_at_its_own_address_unless_on_loopback_or_inside_the_network() {
    let source_of_syn = |config: GatewayConfig, client: &str| {
        let (mut gateway, mut host, now) = gateway_with(config);
        lease(&mut gateway, &mut host, GUEST_MAC, now);
        host.tcp_accept = 65536;
        let flow = gateway.allocate_flow();
        let client = Some(client.parse().unwrap());
        gateway.connect_to_guest(SocketAddrV4::new(GUEST_IP, 22).into(), client, flow, now, &mut host);
        let frame = gateway.pop_frame().expect("a SYN to the guest");
        let ip = Ipv4Packet::new_checked(&frame[14..]).unwrap();
        let tcp = smoltcp::wire::TcpPacket::new_checked(ip.payload()).unwrap();
        SocketAddrV4::new(ip.src_addr(), tcp.src_port())
    };
    let config = GatewayConfig::default;
    assert_eq!(source_of_syn(config(), "192.0.2.7:50000"), "192.0.2.7:50000".parse().unwrap());
    for client in ["127.0.0.1:50000", "10.0.2.77:50000", "10.0.2.2:50000", "[2001:db8::7]:50000"] {
        assert_eq!(*source_of_syn(config(), client).ip(), Ipv4Addr::new(10, 0, 2, 2), "{client}");
    }
    let gateway_source = GatewayConfig { hostfwd_shows_client: false, ..config() };
    assert_eq!(*source_of_syn(gateway_source, "192.0.2.7:50000").ip(), Ipv4Addr::new(10, 0, 2, 2));
}

#[test]
fn a_reset_counts_only_at_the_expected_sequence_number() {
    use smoltcp::wire::TcpControl;
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    host.tcp_accept = 1000;
    let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 8080);
    let (flow, _) = established(&mut gateway, &mut host, now, dst);
    gateway.receive(&from_guest(&guest_tcp(dst, TcpControl::Rst, 5000, None, &[])), now, &mut host);
    assert!(host.closed.is_empty(), "a blind reset is ignored");
    gateway.receive(&from_guest(&guest_tcp(dst, TcpControl::Rst, 101, None, &[])), now, &mut host);
    assert_eq!(host.closed, vec![(flow, true)]);
}

#[test]
fn a_lost_syn_ack_is_sent_again_and_a_silent_guest_is_given_up() {
    use smoltcp::wire::TcpControl;
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 8080);
    gateway.receive(&from_guest(&guest_tcp(dst, TcpControl::Syn, 100, None, &[])), now, &mut host);
    let flow = *host.open.keys().next().unwrap();
    gateway.on_tcp_connected(flow, now, &mut host);
    assert_eq!(tcp_of(&gateway.pop_frame().unwrap()).0, TcpControl::Syn);
    // The guest retransmits its SYN: the SYN-ACK goes out again.
    gateway.receive(&from_guest(&guest_tcp(dst, TcpControl::Syn, 100, None, &[])), now, &mut host);
    assert_eq!(tcp_of(&gateway.pop_frame().expect("SYN-ACK again")).0, TcpControl::Syn);
    // Timeouts resend it too, until the guest is given up.
    let mut at = now;
    let mut resent = 0;
    while host.closed.is_empty() && resent < 20 {
        at += Duration::from_secs(120);
        gateway.on_deadline(at, &mut host);
        while let Some(frame) = gateway.pop_frame() {
            if tcp_of(&frame).0 == TcpControl::Syn {
                resent += 1;
            }
        }
    }
    assert_eq!(host.closed, vec![(flow, true)], "given up after {resent} resends");
    assert!(resent >= 3);
}

#[test]
fn a_half_closed_connection_keeps_carrying_data() {
    use smoltcp::wire::TcpControl;
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    host.tcp_accept = 65536;
    let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 8080);
    let (flow, isn) = established(&mut gateway, &mut host, now, dst);
    gateway.receive(&from_guest(&guest_tcp(dst, TcpControl::Fin, 101, Some(isn + 1), &[])), now, &mut host);
    while gateway.pop_frame().is_some() {}
    // Long after the guest's FIN, the host still sends and the guest still acknowledges.
    let later = now + Duration::from_secs(600);
    gateway.on_deadline(later, &mut host);
    host.tcp_incoming.insert(flow, vec![1u8; 100]);
    gateway.on_tcp_readable(flow, later, &mut host);
    let (_, _, _, _, payload) = tcp_of(&gateway.pop_frame().expect("data after the guest's FIN"));
    assert_eq!(payload.len(), 100);
    assert!(host.closed.is_empty());
}

#[test]
fn a_tcp_connect_failed_by_icmp_reaches_the_guest_as_that_icmp_error() {
    use smoltcp::wire::TcpControl;
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let far = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 9), 80);
    gateway.receive(
        &from_guest(&with_ttl(guest_tcp(far, TcpControl::Syn, 500, None, &[]), 2)),
        now,
        &mut host,
    );
    let flow = *host.open.keys().next().unwrap();
    assert_eq!(host.ttls, vec![(flow, Some(1))], "the SYN leaves with the guest's TTL less one");
    let router = Ipv4Addr::new(198, 51, 100, 1);
    let icmp = HostIcmpError::from_message(router, 11, 0);
    gateway.on_tcp_error(flow, &io::ErrorKind::HostUnreachable.into(), icmp, now, &mut host);
    let (from, icmp_type, _, quoted_dst, quoted) = icmp_error_of(&gateway.pop_frame().unwrap());
    assert_eq!((from, icmp_type, quoted_dst), (router, 11, *far.ip()));
    assert_eq!(&quoted[4..8], &500u32.to_be_bytes(), "the SYN's sequence number is quoted");
    assert!(gateway.pop_frame().is_none(), "no RST besides");
    assert_eq!(host.closed, vec![(flow, true)]);

    // Without an ICMP report, an unreachable errno still says so, from the destination.
    gateway.receive(&from_guest(&guest_tcp(far, TcpControl::Syn, 900, None, &[])), now, &mut host);
    let flow = *host.open.keys().next().unwrap();
    gateway.on_tcp_error(flow, &io::ErrorKind::NetworkUnreachable.into(), None, now, &mut host);
    let (from, icmp_type, code, _, _) = icmp_error_of(&gateway.pop_frame().unwrap());
    assert_eq!((from, icmp_type, code), (*far.ip(), 3, 0));
}

#[test]
fn dns_over_tcp_fails_over_to_the_next_upstream() {
    use smoltcp::wire::TcpControl;
    let upstreams: Vec<SocketAddr> =
        ["127.0.0.1:5301", "127.0.0.1:5302", "127.0.0.1:5303"].iter().map(|a| a.parse().unwrap()).collect();
    let (mut gateway, mut host, now) =
        gateway_with(GatewayConfig { dns_upstreams: upstreams.clone(), ..GatewayConfig::default() });
    let dns = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 3), 53);
    gateway.receive(&from_guest(&guest_tcp(dns, TcpControl::Syn, 1, None, &[])), now, &mut host);
    let flow = *host.open.keys().next().unwrap();
    assert_eq!(host.open[&flow], upstreams[0]);

    gateway.on_tcp_error(flow, &io::ErrorKind::ConnectionRefused.into(), None, now, &mut host);
    assert_eq!(host.open[&flow], upstreams[1], "a refused upstream gives way to the next");
    assert!(gateway.pop_frame().is_none(), "the guest is not reset meanwhile");

    let later = now + Duration::from_secs(3);
    assert!(gateway.next_deadline().is_some_and(|deadline| deadline <= later));
    gateway.on_deadline(later, &mut host);
    assert_eq!(host.open[&flow], upstreams[2], "a silent upstream gives way too");
    // The last candidate gets a short timeout of its own, not the kernel's two minutes:
    // still connecting just before it.
    let nearly = later + Duration::from_millis(9_900);
    gateway.on_deadline(nearly, &mut host);
    assert!(gateway.pop_frame().is_none() && gateway.flow_counts().tcp == 1, "not given up before 10 s");

    gateway.on_tcp_connected(flow, nearly, &mut host);
    let (control, _, ack, _, _) = tcp_of(&gateway.pop_frame().expect("SYN-ACK"));
    assert_eq!((control, ack), (TcpControl::Syn, Some(2)));
}

#[test]
fn a_connect_that_never_completes_is_reset_after_ten_seconds() {
    use smoltcp::wire::TcpControl;
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 9);
    gateway.receive(&from_guest(&guest_tcp(dst, TcpControl::Syn, 1, None, &[])), now, &mut host);
    let flow = *host.open.keys().next().unwrap();
    gateway.on_deadline(now + Duration::from_secs(9), &mut host);
    assert!(gateway.pop_frame().is_none() && host.closed.is_empty(), "not before its time");
    gateway.on_deadline(now + Duration::from_secs(10), &mut host);
    let (control, ..) = tcp_of(&gateway.pop_frame().expect("RST"));
    assert_eq!(control, TcpControl::Rst);
    assert_eq!(host.closed, vec![(flow, true)]);
    assert_eq!(gateway.flow_counts().tcp, 0);
}

#[test]
fn a_guest_that_never_acknowledges_the_syn_ack_is_given_up_within_twenty_seconds() {
    use smoltcp::wire::TcpControl;
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 9);
    gateway.receive(&from_guest(&guest_tcp(dst, TcpControl::Syn, 1, None, &[])), now, &mut host);
    let flow = *host.open.keys().next().unwrap();
    gateway.on_tcp_connected(flow, now, &mut host);
    let mut at = now;
    while let Some(deadline) = gateway.next_deadline() {
        assert!(deadline <= now + Duration::from_secs(20), "a handshake ends within 20 s");
        at = deadline;
        gateway.on_deadline(at, &mut host);
    }
    assert_eq!(host.closed, vec![(flow, true)]);
    assert!(at >= now + Duration::from_secs(7), "three SYN-ACK retransmissions first");
}

#[test]
fn host_data_of_one_connection_never_reaches_another() {
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let to_a = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 8080);
    let to_b = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 8081);
    let (flow_a, _) = established(&mut gateway, &mut host, now, to_a);
    let (flow_b, _) = established(&mut gateway, &mut host, now, to_b);
    assert_ne!(flow_a, flow_b);
    host.tcp_incoming.insert(flow_a, vec![0xaa; 500]);
    gateway.on_tcp_readable(flow_b, now, &mut host);
    assert!(gateway.pop_frame().is_none(), "flow B has nothing to send");
    gateway.on_tcp_readable(flow_a, now, &mut host);
    let frame = gateway.pop_frame().expect("flow A's data");
    let src_port = smoltcp::wire::TcpPacket::new_checked(&frame[34..]).unwrap().src_port();
    assert_eq!((src_port, tcp_of(&frame).4), (8080, vec![0xaa; 500]), "from A's remote, with A's bytes");
}

#[test]
fn host_data_waits_in_the_socket_while_the_guests_port_is_full() {
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 8080);
    let (flow, _) = established(&mut gateway, &mut host, now, dst);
    host.tcp_incoming.insert(flow, vec![3u8; 10_000]);
    // Room for two full segments (MSS 1460) and no more.
    host.guest_room =
        Some(EgressRoom { frames: 2, bytes: 2 * (1460 + 54), takes_offloads: false, lends_receive: false });
    gateway.on_tcp_readable(flow, now, &mut host);
    let mut sent = 0;
    while let Some(frame) = gateway.pop_frame() {
        sent += tcp_of(&frame).4.len();
    }
    assert_eq!(sent, 2 * 1460, "only what fits in the port's queue");
    assert!(gateway.waits_for_guest_room());

    host.guest_room = None;
    gateway.on_guest_room(now, &mut host);
    let mut rest = 0;
    while let Some(frame) = gateway.pop_frame() {
        rest += tcp_of(&frame).4.len();
    }
    assert_eq!(sent + rest, 10_000, "the rest follows once the port drained");
    assert!(!gateway.waits_for_guest_room());
}

#[test]
fn three_duplicate_acks_send_the_missing_data_again_at_once() {
    use smoltcp::wire::TcpControl;
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 8080);
    let (flow, isn) = established(&mut gateway, &mut host, now, dst);
    host.tcp_accept = 65536;
    host.tcp_incoming.insert(flow, vec![5u8; 4 * 1460]);
    gateway.on_tcp_readable(flow, now, &mut host);
    let mut sent = 0;
    while let Some(frame) = gateway.pop_frame() {
        sent += tcp_of(&frame).4.len();
    }
    assert_eq!(sent, 4 * 1460);
    // The first segment was lost: the guest acknowledges only the handshake again, once
    // for each later segment.
    let ack_nothing = guest_tcp(dst, TcpControl::None, 101, Some(isn + 1), &[]);
    for _ in 0..2 {
        gateway.receive(&from_guest(&ack_nothing), now, &mut host);
        let extra = gateway.pop_frame().map(|f| tcp_of(&f));
        assert!(extra.is_none(), "no resend before the third duplicate: {extra:?}");
    }
    gateway.receive(&from_guest(&ack_nothing), now, &mut host);
    let (_, seq, _, _, payload) = tcp_of(&gateway.pop_frame().expect("the lost data again"));
    assert_eq!((seq, payload.len()), (isn + 1, 1460), "from the first unacknowledged byte");
}

#[test]
fn the_first_flight_is_ten_segments_and_a_loss_halves_what_is_sent_again() {
    use smoltcp::wire::TcpControl;
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 8080);
    let (flow, isn) = established(&mut gateway, &mut host, now, dst);
    host.tcp_incoming.insert(flow, vec![5u8; 60 * 1460]);
    gateway.on_tcp_readable(flow, now, &mut host);
    let segments_sent = |gateway: &mut Gateway| {
        std::iter::from_fn(|| gateway.pop_frame()).filter(|frame| !tcp_of(frame).4.is_empty()).count()
    };
    assert_eq!(segments_sent(&mut gateway), 10, "RFC 6928's initial window, though the guest's is larger");
    let ack_ten = guest_tcp(dst, TcpControl::None, 101, Some(isn + 1 + 10 * 1460), &[]);
    gateway.receive(&from_guest(&ack_ten), now, &mut host);
    assert_eq!(segments_sent(&mut gateway), 20, "slow start doubles the window");
    // The next segment was lost on the way (a full datagram socket, say).
    for _ in 0..3 {
        gateway.receive(&from_guest(&ack_ten), now, &mut host);
    }
    assert_eq!(segments_sent(&mut gateway), 10, "half of the 20 that were out go again");
}

#[test]
fn an_ack_of_what_was_sent_before_a_timeout_is_taken_and_sending_goes_on_from_it() {
    use smoltcp::wire::TcpControl;
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 8080);
    let (flow, isn) = established(&mut gateway, &mut host, now, dst);
    host.tcp_incoming.insert(flow, vec![6u8; 20 * 1460]);
    gateway.on_tcp_readable(flow, now, &mut host);
    assert_eq!(std::iter::from_fn(|| gateway.pop_frame()).count(), 10);
    // A slow guest's ACK comes after the timeout: the gateway went back to the start.
    gateway.on_deadline(now + Duration::from_secs(2), &mut host);
    let (_, seq, _, _, _) = tcp_of(&gateway.pop_frame().expect("a retransmission"));
    assert_eq!(seq, isn + 1);
    while gateway.pop_frame().is_some() {}
    let ack_all_ten = guest_tcp(dst, TcpControl::None, 101, Some(isn + 1 + 10 * 1460), &[]);
    gateway.receive(&from_guest(&ack_all_ten), now + Duration::from_secs(2), &mut host);
    let next: Vec<u32> = std::iter::from_fn(|| gateway.pop_frame()).map(|frame| tcp_of(&frame).1).collect();
    assert_eq!(next.first(), Some(&(isn + 1 + 10 * 1460)), "new data follows what the guest has: {next:?}");
}

#[test]
fn a_fin_acknowledged_after_a_timeout_ends_the_sending_side() {
    use smoltcp::wire::TcpControl;
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 8080);
    let (flow, isn) = established(&mut gateway, &mut host, now, dst);
    host.tcp_incoming.insert(flow, vec![6u8; 1000]);
    host.tcp_eof.insert(flow);
    gateway.on_tcp_readable(flow, now, &mut host);
    gateway.on_tcp_readable(flow, now, &mut host); // the next peek finds the end
    let controls: Vec<TcpControl> =
        std::iter::from_fn(|| gateway.pop_frame()).map(|frame| tcp_of(&frame).0).collect();
    assert_eq!(controls.last(), Some(&TcpControl::Fin), "{controls:?}");
    gateway.on_deadline(now + Duration::from_secs(2), &mut host);
    while gateway.pop_frame().is_some() {}
    let ack_fin = guest_tcp(dst, TcpControl::None, 101, Some(isn + 1 + 1000 + 1), &[]);
    gateway.receive(&from_guest(&ack_fin), now + Duration::from_secs(2), &mut host);
    assert!(gateway.pop_frame().is_none(), "nothing is left to send");
    assert!(host.tcp_incoming.get(&flow).is_none_or(Vec::is_empty), "the 1000 bytes were consumed, no more");
}

#[test]
fn a_shut_window_is_probed_until_the_guest_tells_it_open_and_then_data_flows() {
    use smoltcp::wire::TcpControl;
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 8080);
    let (flow, isn) = established(&mut gateway, &mut host, now, dst);
    let with_window =
        |window: u16| guest_segment(40000, dst, TcpControl::None, 101, Some(isn + 1), window, &[]);
    gateway.receive(&from_guest(&with_window(0)), now, &mut host);
    host.tcp_incoming.insert(flow, vec![1u8; 3000]);
    gateway.on_tcp_readable(flow, now, &mut host);
    assert!(gateway.pop_frame().is_none(), "nothing goes into a shut window");
    // The guest's update opening the window is lost; the gateway asks.
    gateway.on_deadline(now + Duration::from_secs(2), &mut host);
    let (control, seq, ack, _, payload) = tcp_of(&gateway.pop_frame().expect("a window probe"));
    assert_eq!(
        (control, seq, ack, payload.len()),
        (TcpControl::None, isn, Some(101), 0),
        "a byte already taken"
    );
    gateway.receive(&from_guest(&with_window(1000)), now + Duration::from_secs(2), &mut host);
    let sent: usize = std::iter::from_fn(|| gateway.pop_frame()).map(|frame| tcp_of(&frame).4.len()).sum();
    assert_eq!(sent, 3000, "the answer opened the window");
    let ack_all = guest_segment(40000, dst, TcpControl::None, 101, Some(isn + 1 + 3000), 1000, &[]);
    gateway.receive(&from_guest(&ack_all), now + Duration::from_secs(2), &mut host);
    gateway.on_deadline(now + Duration::from_secs(600), &mut host);
    assert!(gateway.pop_frame().is_none(), "no probe once the window is open");
}

#[test]
fn segments_for_an_ipv6_guest_carry_an_ipv6_header_and_a_checksum_over_its_pseudo_header() {
    use smoltcp::wire::{IpAddress, Ipv6Packet, Ipv6Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber};
    let guest: SocketAddr = "[fd00::15]:40000".parse().unwrap();
    let remote: SocketAddr = "[fd00::2]:80".parse().unwrap();
    let repr = TcpRepr {
        src_port: remote.port(),
        dst_port: guest.port(),
        control: TcpControl::Psh,
        seq_number: TcpSeqNumber(7),
        ack_number: Some(TcpSeqNumber(9)),
        window_len: 100,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: b"hello",
    };
    let frame = packet::tcp(MacAddress([2; 6]), GUEST_MAC, remote, guest, &repr).unwrap();
    let ethernet = EthernetFrame::new_checked(&frame[..]).unwrap();
    assert_eq!(ethernet.ethertype(), smoltcp::wire::EthernetProtocol::Ipv6);
    let ip = Ipv6Packet::new_checked(ethernet.payload()).unwrap();
    let ip_repr = Ipv6Repr::parse(&ip).unwrap();
    assert_eq!(
        (ip_repr.src_addr.to_string(), ip_repr.dst_addr.to_string()),
        ("fd00::2".into(), "fd00::15".into())
    );
    let (src, dst) = (IpAddress::Ipv6(ip_repr.src_addr), IpAddress::Ipv6(ip_repr.dst_addr));
    let segment = TcpPacket::new_checked(ip.payload()).unwrap();
    assert!(segment.verify_checksum(&src, &dst), "the checksum covers the IPv6 pseudo-header");
    let parsed = TcpRepr::parse(&segment, &src, &dst, &ChecksumCapabilities::default()).unwrap();
    assert_eq!((parsed.dst_port, parsed.payload), (40000, &b"hello"[..]));
    assert_eq!(packet::tcp_partial_checksum(guest.ip()).start, 14 + 40);

    let mixed =
        packet::tcp(MacAddress([2; 6]), GUEST_MAC, "10.0.2.2:80".parse().unwrap(), guest, &repr).unwrap();
    let ip = Ipv6Packet::new_checked(&mixed[14..]).unwrap();
    assert_eq!(
        Ipv6Repr::parse(&ip).unwrap().src_addr.to_string(),
        "::ffff:10.0.2.2",
        "a v4 peer of a v6 guest is mapped"
    );
}

#[test]
fn a_window_too_small_for_a_segment_is_updated_once_the_host_has_room_and_looked_at_less_often_while_not() {
    use smoltcp::wire::TcpControl;
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    host.tcp_accept = 100_000;
    let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 8080);
    let (_, isn) = established(&mut gateway, &mut host, now, dst);
    while gateway.pop_frame().is_some() {}

    // The host socket has room for 256 bytes, less than one 1460-byte segment. The
    // guest's window probe (an empty segment from before what was taken) is answered.
    host.tcp_accept = 256;
    let probe = guest_tcp(dst, TcpControl::None, 100, Some(isn + 1), &[]);
    gateway.receive(&from_guest(&probe), now, &mut host);
    let (_, _, _, window, _) = tcp_of(&gateway.pop_frame().expect("the probe is answered"));
    assert_eq!(window << 7, 256, "the small window is what the guest is told");
    let ms = Duration::from_millis(1);
    assert_eq!(gateway.next_deadline(), Some(now + ms), "a window too small is looked at again in 1 ms");

    // Still too small: nothing is sent, and the next look waits twice as long.
    gateway.on_deadline(now + ms, &mut host);
    assert!(gateway.pop_frame().is_none(), "no update while the window is still too small");
    assert_eq!(gateway.next_deadline(), Some(now + 3 * ms));

    // The host socket drained: one update, with a window the guest can send into.
    host.tcp_accept = 100_000;
    gateway.on_deadline(now + 3 * ms, &mut host);
    let (control, _, ack, window, _) = tcp_of(&gateway.pop_frame().expect("a window update"));
    assert_eq!((control, ack), (TcpControl::None, Some(101)));
    assert!(window << 7 >= 1460, "a window of {} bytes", window << 7);
    assert!(gateway.pop_frame().is_none(), "exactly one update, not duplicate ACKs");
}

#[test]
fn on_a_connection_that_goes_back_and_forth_the_answer_carries_the_ack_of_the_request() {
    use smoltcp::wire::TcpControl;
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    host.tcp_accept = 100_000;
    let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 8080);
    let (flow, isn) = established(&mut gateway, &mut host, now, dst);
    while gateway.pop_frame().is_some() {}
    let mut guest_seq = 101;
    let mut our_seq = isn + 1;
    let mut request = |gateway: &mut Gateway, host: &mut FakeHost, at: Instant, our_seq: u32| {
        let frame = guest_tcp(dst, TcpControl::Psh, guest_seq, Some(our_seq), b"q");
        gateway.receive(&from_guest(&frame), at, host);
        guest_seq += 1;
    };

    // The first request is acknowledged at once: nothing says yet that answers follow.
    request(&mut gateway, &mut host, now, our_seq);
    let (control, _, ack, _, payload) = tcp_of(&gateway.pop_frame().expect("an ACK"));
    assert_eq!((control, ack, payload.len()), (TcpControl::None, Some(102), 0));
    host.tcp_incoming.insert(flow, b"a".to_vec());
    gateway.on_tcp_readable(flow, now, &mut host);
    assert_eq!(tcp_of(&gateway.pop_frame().expect("the answer")).4, b"a");
    our_seq += 1;

    // The host answered at once: the next request's ACK waits for the answer, which
    // carries it, so a round trip is one frame each way.
    let later = now + Duration::from_micros(100);
    request(&mut gateway, &mut host, later, our_seq);
    assert!(gateway.pop_frame().is_none(), "no ACK of its own for an interactive request");
    host.tcp_incoming.insert(flow, b"b".to_vec());
    gateway.on_tcp_readable(flow, later, &mut host);
    let (_, _, ack, _, payload) = tcp_of(&gateway.pop_frame().expect("the answer"));
    assert_eq!((ack, payload.as_slice()), (Some(103), &b"b"[..]), "the answer carries the ACK");
    assert!(gateway.pop_frame().is_none());
    let next = gateway.next_deadline().expect("the answer's retransmission timer");
    assert!(next >= later + Duration::from_millis(500), "no wake-up is left for the ACK the answer carried");
    our_seq += 1;

    // A request the host does not answer in time is acknowledged after the delay, and
    // the next one at once.
    let quiet = later + Duration::from_millis(10);
    request(&mut gateway, &mut host, quiet, our_seq);
    assert!(gateway.pop_frame().is_none());
    let due = quiet + Duration::from_millis(1);
    assert!(gateway.next_deadline().is_some_and(|deadline| deadline <= due), "a deadline for the ACK");
    gateway.on_deadline(due, &mut host);
    let (control, _, ack, _, _) = tcp_of(&gateway.pop_frame().expect("the delayed ACK"));
    assert_eq!((control, ack), (TcpControl::None, Some(104)));
    request(&mut gateway, &mut host, due, our_seq);
    assert_eq!(tcp_of(&gateway.pop_frame().expect("an ACK at once")).2, Some(105));
}

#[test]
fn a_denied_connection_is_reset_and_counted_and_restrict_yields_to_an_allow_rule() {
    use smoltcp::wire::TcpControl;
    let rules = ["allow=proto:tcp+to:10.0.2.2+port:8080", "deny=proto:tcp+port:22"];
    let config = GatewayConfig {
        restrict: true,
        policy: rules.iter().map(|rule| rule.parse().unwrap()).collect(),
        ..GatewayConfig::default()
    };
    let (mut gateway, mut host, now) = gateway_with(config);
    host.tcp_accept = 1000;
    let allowed = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 8080);
    gateway.receive(&from_guest(&guest_tcp(allowed, TcpControl::Syn, 100, None, &[])), now, &mut host);
    assert_eq!(host.open.len(), 1, "the allow rule opens a way out under restrict=on");
    for (port, reason) in [(22, GatewayDropReason::PolicyDenied), (23, GatewayDropReason::Restricted)] {
        let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), port);
        gateway.receive(&from_guest(&guest_tcp(dst, TcpControl::Syn, 100, None, &[])), now, &mut host);
        let (control, _, _, _, _) = tcp_of(&gateway.pop_frame().expect("a reset"));
        assert_eq!(control, TcpControl::Rst, "port {port}");
        assert_eq!(gateway.counters().drops(reason), 1, "port {port}");
    }
    assert_eq!(host.open.len(), 1);
    assert_eq!(gateway.policy_rules().map(|(_, denied)| denied).collect::<Vec<_>>(), [0, 1]);
}
