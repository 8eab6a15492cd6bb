//! What every frame goes through: the flow limit and the counted drop reasons.

use super::*;

#[test]
fn the_flow_table_is_bounded() {
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig {
        max_flows: 2,
        guest_limits: roomy_limits(),
        ..GatewayConfig::default()
    });
    for port in 1..=3 {
        gateway.receive(
            &from_guest(&guest_udp(SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), port), b"x")),
            now,
            &mut host,
        );
    }
    assert_eq!(host.open.len(), 2);
    assert_eq!(gateway.counters().drops(GatewayDropReason::FlowLimit), 1);
}

#[test]
fn bad_frames_are_counted_by_reason() {
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let good = guest_udp(SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 7), b"data");
    gateway.receive(&from_guest(&good[..20]), now, &mut host);
    let mut bad_ip_checksum = good.clone();
    bad_ip_checksum[24] ^= 0xff;
    gateway.receive(&from_guest(&bad_ip_checksum), now, &mut host);
    let mut bad_udp_checksum = good.clone();
    let last = bad_udp_checksum.len() - 1;
    bad_udp_checksum[last] ^= 0xff;
    gateway.receive(&from_guest(&bad_udp_checksum), now, &mut host);
    let mut fragment = good.clone();
    fragment[20] = 0x20; // more fragments
    let checksum = {
        let mut ip = Ipv4Packet::new_unchecked(&mut fragment[14..]);
        ip.fill_checksum();
        ip.checksum()
    };
    assert_ne!(checksum, 0);
    gateway.receive(&from_guest(&fragment), now, &mut host);
    let mut other_mac = good.clone();
    other_mac[..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    gateway.receive(&from_guest(&other_mac), now, &mut host);
    let counters = gateway.counters();
    assert_eq!(counters.drops(GatewayDropReason::Malformed), 1);
    assert_eq!(counters.drops(GatewayDropReason::BadChecksum), 2);
    assert_eq!(counters.drops(GatewayDropReason::Fragment), 1);
    assert_eq!(counters.drops(GatewayDropReason::NotForGateway), 1);
    assert!(host.sent.is_empty());
}
