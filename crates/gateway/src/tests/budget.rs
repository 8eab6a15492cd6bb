//! Per-guest budgets through the gateway: a guest at its limit is refused the way its
//! protocol expects (RST, ICMP, SERVFAIL), counted, and another guest is not touched.

use smoltcp::wire::{Icmpv4DstUnreachable, Icmpv4Message, TcpControl};

use super::*;

const OTHER_MAC: MacAddress = MacAddress([0x52, 0x54, 0, 0x65, 0x43, 0x21]);
const OTHER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 16);
const OTHER_PORT: u32 = 2;
const GATEWAY_MAC: MacAddress = MacAddress([0x52, 0x55, 10, 0, 2, 2]);

fn tight(limits: GuestLimits) -> (Gateway, FakeHost, Instant) {
    gateway_with(GatewayConfig {
        dns_upstreams: vec!["127.0.0.1:5300".parse().unwrap()],
        guest_limits: limits,
        ..GatewayConfig::default()
    })
}

fn other_udp(dst: SocketAddrV4, payload: &[u8]) -> vnet_wire::Frame {
    let bytes = packet::udp(OTHER_MAC, GATEWAY_MAC, SocketAddr::from((OTHER_IP, 40000)), dst.into(), payload);
    from_port(OTHER_PORT, &bytes.unwrap())
}

/// The ICMP type and code of the one frame the gateway sent.
fn icmp_reply(gateway: &mut Gateway) -> (Icmpv4Message, u8) {
    let frame = gateway.pop_frame().expect("an ICMP error for the guest");
    let ethernet = EthernetFrame::new_checked(frame.as_bytes()).unwrap();
    let ip = Ipv4Packet::new_checked(ethernet.payload()).unwrap();
    let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
    (icmp.msg_type(), icmp.msg_code())
}

#[test]
fn a_guest_over_its_udp_budget_is_told_prohibited_and_another_guest_is_not() {
    let (mut gateway, mut host, now) = tight(GuestLimits { udp: Some(2), ..GuestLimits::default() });
    let far = |port| SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), port);
    for port in 1..=2 {
        gateway.receive(&from_guest(&guest_udp(far(port), b"x")), now, &mut host);
    }
    assert!(gateway.pop_frame().is_none());
    gateway.receive(&from_guest(&guest_udp(far(3), b"x")), now, &mut host);
    let prohibited = (Icmpv4Message::DstUnreachable, u8::from(Icmpv4DstUnreachable::CommProhibited));
    assert_eq!(icmp_reply(&mut gateway), prohibited);
    assert_eq!(host.open.len(), 2);
    gateway.receive(&other_udp(far(3), b"x"), now, &mut host);
    assert_eq!(host.open.len(), 3, "the other guest's flow opens");
    assert!(gateway.pop_frame().is_none());
    assert_eq!(gateway.counters().drops(GatewayDropReason::GuestBudget), 1);
    let usage: Vec<_> = gateway.guests().map(|(guest, usage)| (guest.port, usage.refused[1])).collect();
    assert!(usage.contains(&(GUEST_PORT, 1)) && usage.contains(&(OTHER_PORT, 0)), "{usage:?}");
}

#[test]
fn a_made_up_mac_on_the_same_port_shares_that_ports_budget() {
    let limits = GuestLimits { udp: Some(100), port_flows: Some(2), ..GuestLimits::default() };
    let (mut gateway, mut host, now) = tight(limits);
    let far = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 7);
    for last in 1..=3u8 {
        let mac = MacAddress([0x02, 0, 0, 0, 0, last]);
        let ip = Ipv4Addr::new(10, 0, 2, 100 + last);
        let bytes = packet::udp(mac, GATEWAY_MAC, SocketAddr::from((ip, 40000)), far.into(), b"x").unwrap();
        gateway.receive(&from_guest(&bytes), now, &mut host);
    }
    assert_eq!(host.open.len(), 2);
    gateway.receive(&other_udp(far, b"x"), now, &mut host);
    assert_eq!(host.open.len(), 3, "another port has its own budget");
}

#[test]
fn a_guest_over_its_tcp_budget_gets_rst_and_its_ended_connections_give_room_back() {
    let (mut gateway, mut host, now) = tight(GuestLimits { tcp: Some(1), ..GuestLimits::default() });
    let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 8080);
    let (flow, _) = established(&mut gateway, &mut host, now, dst);
    gateway.receive(&from_guest(&guest_tcp_from(40001, dst, TcpControl::Syn, 1, None, &[])), now, &mut host);
    let (control, ..) = tcp_of(gateway.pop_frame().expect("RST").as_bytes());
    assert_eq!(control, TcpControl::Rst);
    assert_eq!(gateway.counters().drops(GatewayDropReason::GuestBudget), 1);
    gateway.on_tcp_error(flow, &io::ErrorKind::ConnectionReset.into(), None, now, &mut host);
    while gateway.pop_frame().is_some() {}
    gateway.receive(&from_guest(&guest_tcp_from(40002, dst, TcpControl::Syn, 1, None, &[])), now, &mut host);
    assert!(gateway.pop_frame().is_none(), "room again once the first connection ended");
    assert_eq!(gateway.flow_counts().tcp, 1);
}

#[test]
fn handshakes_beyond_the_half_open_budget_are_refused_until_one_completes() {
    let (mut gateway, mut host, now) = tight(GuestLimits { half_open: Some(2), ..GuestLimits::default() });
    let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 8080);
    for port in [40001, 40002, 40003] {
        gateway.receive(
            &from_guest(&guest_tcp_from(port, dst, TcpControl::Syn, 1, None, &[])),
            now,
            &mut host,
        );
    }
    assert_eq!(host.open.len(), 2);
    assert_eq!(gateway.counters().drops(GatewayDropReason::GuestBudget), 1);
    while gateway.pop_frame().is_some() {}
    let flow = *host.open.keys().min().unwrap();
    gateway.on_tcp_connected(flow, now, &mut host);
    let (_, isn, ..) = tcp_of(gateway.pop_frame().expect("SYN-ACK").as_bytes());
    let ack = guest_tcp_from(40001, dst, TcpControl::None, 2, Some(isn.wrapping_add(1)), &[]);
    gateway.receive(&from_guest(&ack), now, &mut host);
    gateway.receive(&from_guest(&guest_tcp_from(40004, dst, TcpControl::Syn, 1, None, &[])), now, &mut host);
    assert_eq!(host.open.len(), 3, "a finished handshake frees its place");
}

#[test]
fn a_guest_with_its_dns_budget_in_flight_gets_servfail_and_another_guest_is_forwarded() {
    let (mut gateway, mut host, now) = tight(GuestLimits { dns: Some(1), ..GuestLimits::default() });
    let dns = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 3), 53);
    gateway.receive(&from_guest(&guest_udp(dns, &dns_query(1))), now, &mut host);
    gateway.receive(&from_guest(&guest_udp(dns, &dns_query(2))), now, &mut host);
    let (_, _, answer) = udp_of(gateway.pop_frame().expect("SERVFAIL").as_bytes());
    assert_eq!((answer[..2].to_vec(), answer[3] & 0x0f), (vec![0, 2], 2), "SERVFAIL for query 2");
    gateway.receive(&other_udp(dns, &dns_query(3)), now, &mut host);
    assert_eq!(host.sent.len(), 2, "queries 1 and 3 went upstream");
    assert!(gateway.pop_frame().is_none());
}

#[test]
fn the_flows_of_a_port_that_went_away_are_closed_and_its_budget_freed() {
    let (mut gateway, mut host, now) = tight(GuestLimits::default());
    let far = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 7);
    gateway.receive(&from_guest(&guest_udp(far, b"x")), now, &mut host);
    gateway.receive(&from_guest(&guest_tcp_from(40001, far, TcpControl::Syn, 1, None, &[])), now, &mut host);
    gateway.receive(
        &from_guest(&guest_udp(SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 3), 53), &dns_query(1))),
        now,
        &mut host,
    );
    gateway.receive(&other_udp(far, b"y"), now, &mut host);
    let counts = gateway.flow_counts();
    assert_eq!((counts.tcp, counts.udp, counts.dns), (1, 2, 1));
    let check = gateway.next_deadline().expect("a port check is due");
    assert!(check <= now + Duration::from_secs(5));
    host.gone_ports.push(GUEST_PORT);
    gateway.on_deadline(now + Duration::from_secs(5), &mut host);
    let counts = gateway.flow_counts();
    assert_eq!((counts.tcp, counts.udp, counts.dns), (0, 1, 0), "only the other port's flow is left");
    assert_eq!(host.closed.len(), 1, "the connection's host socket is reset");
    assert!(host.closed[0].1);
    let ports: Vec<u32> = gateway.guests().map(|(guest, _)| guest.port).collect();
    assert_eq!(ports, vec![OTHER_PORT]);
}
