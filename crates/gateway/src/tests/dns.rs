//! DNS over UDP: forwarding, fail-over and SERVFAIL.

use super::*;

#[test]
fn dns_is_forwarded_and_the_answer_returns_from_the_dns_address() {
    let upstream: SocketAddr = "127.0.0.1:5300".parse().unwrap();
    let (mut gateway, mut host, now) =
        gateway_with(GatewayConfig { dns_upstreams: vec![upstream], ..GatewayConfig::default() });
    gateway.receive(
        &from_guest(&guest_udp(SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 3), 53), &dns_query(9))),
        now,
        &mut host,
    );
    let (flow, sent) = host.sent.last().cloned().unwrap();
    assert_eq!(host.open[&flow], upstream);
    assert_eq!(sent, dns_query(9));
    let mut answer = dns_query(9);
    answer[2] |= 0x80;
    gateway.on_udp_datagram(flow, FrameBuffer::copy_of(&answer), now, &mut host);
    assert!(host.open.is_empty(), "the query's socket is closed once answered");
    let (from, to, payload) = udp_of(&gateway.pop_frame().unwrap());
    assert_eq!(from, SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 3), 53));
    assert_eq!(to, SocketAddrV4::new(GUEST_IP, 40000));
    assert_eq!(payload, answer);
}

#[test]
fn dns_fails_over_and_answers_servfail_when_every_upstream_fails() {
    let first: SocketAddr = "127.0.0.1:5301".parse().unwrap();
    let second: SocketAddr = "127.0.0.1:5302".parse().unwrap();
    let (mut gateway, mut host, now) =
        gateway_with(GatewayConfig { dns_upstreams: vec![first, second], ..GatewayConfig::default() });
    gateway.receive(
        &from_guest(&guest_udp(SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 3), 53), &dns_query(5))),
        now,
        &mut host,
    );
    let (flow, _) = host.sent.last().cloned().unwrap();
    gateway.on_udp_error(flow, &io::ErrorKind::ConnectionRefused.into(), None, now, &mut host);
    let (second_flow, _) = host.sent.last().cloned().unwrap();
    assert_eq!(host.open[&second_flow], second, "fail-over to the next upstream");
    assert!(gateway.pop_frame().is_none());

    let later = now + Duration::from_secs(3);
    assert!(gateway.next_deadline().is_some_and(|d| d <= later));
    gateway.on_deadline(later, &mut host);
    let (_, _, payload) = udp_of(&gateway.pop_frame().expect("SERVFAIL"));
    assert_eq!(&payload[..2], &[0, 5]);
    assert_eq!(payload[3] & 0x0f, 2, "SERVFAIL");
    assert!(host.open.is_empty(), "every query socket closed");
}
