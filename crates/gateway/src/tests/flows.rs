//! Flow ids: every way a flow ends gives its slot back, so the flow tables stay as large
//! as the flows alive at once, not as all the flows there ever were.

use super::*;

#[test]
fn every_way_a_flow_ends_gives_its_slot_back() {
    use smoltcp::wire::TcpControl;
    let upstream: SocketAddr = "127.0.0.1:5300".parse().unwrap();
    let config = GatewayConfig { dns_upstreams: vec![upstream], ..GatewayConfig::default() };
    let (mut gateway, mut host, mut now) = gateway_with(config);
    host.tcp_accept = 100_000;
    for round in 0..50u16 {
        // A UDP flow, closed when idle.
        let remote = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 1000 + round);
        gateway.receive(&from_guest(&guest_udp(remote, b"x")), now, &mut host);
        // A DNS query, done when answered.
        gateway.receive(
            &from_guest(&guest_udp(SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 3), 53), &dns_query(round))),
            now,
            &mut host,
        );
        let (query_flow, _) = host.sent.last().cloned().unwrap();
        let mut answer = dns_query(round);
        answer[2] |= 0x80;
        gateway.on_udp_datagram(query_flow, FrameBuffer::copy_of(&answer), now, &mut host);
        while gateway.pop_frame().is_some() {}
        // A TCP connection, reset by the guest.
        let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 2000 + round);
        let (_, _) = established(&mut gateway, &mut host, now, dst);
        gateway.receive(&from_guest(&guest_tcp(dst, TcpControl::Rst, 101, None, &[])), now, &mut host);
        // A host client for a guest that never answers ARP.
        let inbound = gateway.allocate_flow();
        gateway.connect_to_guest(
            SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 99), 22).into(),
            None,
            inbound,
            now,
            &mut host,
        );
        now += Duration::from_secs(200);
        gateway.on_deadline(now, &mut host);
        while gateway.pop_frame().is_some() {}
        assert_eq!(gateway.flow_counts(), FlowCounts { tcp: 0, udp: 0, icmp: 0, dns: 0 });
    }
    assert!(gateway.flow_ids.slots() <= 4, "{} slots for at most 4 flows at once", gateway.flow_ids.slots());
}
