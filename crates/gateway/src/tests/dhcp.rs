//! DHCP: leases, options, static leases, a full pool, refusals.

use super::*;

#[test]
fn dhcp_hands_out_addresses_from_dhcpstart_with_every_option() {
    let config = GatewayConfig {
        hostname: Some("vm1".into()),
        domain: Some("lab.test".into()),
        dns_search: vec!["lab.test".into()],
        mtu: 9000,
        ..GatewayConfig::default()
    };
    let (mut gateway, mut host, now) = gateway_with(config);
    assert_eq!(lease(&mut gateway, &mut host, GUEST_MAC, now), GUEST_IP);
    gateway.receive(
        &from_guest(&dhcp_message(DhcpMessageType::Discover, GUEST_MAC, None, false)),
        now,
        &mut host,
    );
    let (_, _, options, repr) = dhcp_reply(&mut gateway);
    assert_eq!(repr.router, Some(Ipv4Addr::new(10, 0, 2, 2)));
    assert_eq!(repr.subnet_mask, Some(Ipv4Addr::new(255, 255, 255, 0)));
    assert_eq!(repr.server_identifier, Some(Ipv4Addr::new(10, 0, 2, 2)));
    assert_eq!(repr.lease_duration, Some(86400));
    let option = |kind: u8| options.iter().find(|(k, _)| *k == kind).map(|(_, v)| v.clone());
    assert_eq!(option(6), Some(vec![10, 0, 2, 3]), "DNS server");
    assert_eq!(option(26), Some(9000u16.to_be_bytes().to_vec()), "MTU");
    assert_eq!(option(12), Some(b"vm1".to_vec()));
    assert_eq!(option(15), Some(b"lab.test".to_vec()));
    assert_eq!(option(119), Some(b"\x03lab\x04test\x00".to_vec()));
}

#[test]
fn ten_guests_get_ten_addresses_and_keep_them() {
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let macs: Vec<MacAddress> = (0..10).map(|i| MacAddress([0x52, 0x54, 0, 0, 1, i])).collect();
    let addresses: Vec<Ipv4Addr> = macs.iter().map(|mac| lease(&mut gateway, &mut host, *mac, now)).collect();
    let expected: Vec<Ipv4Addr> = (15..25).map(|n| Ipv4Addr::new(10, 0, 2, n)).collect();
    assert_eq!(addresses, expected);
    assert_eq!(lease(&mut gateway, &mut host, macs[3], now), expected[3], "same MAC, same address");
}

#[test]
fn static_leases_win_and_are_not_given_to_others() {
    let fixed = Ipv4Addr::new(10, 0, 2, 15);
    let config = GatewayConfig {
        static_leases: vec![StaticLease { mac: MacAddress([2, 0, 0, 0, 0, 9]), ip: fixed }],
        ..GatewayConfig::default()
    };
    let (mut gateway, mut host, now) = gateway_with(config);
    assert_eq!(lease(&mut gateway, &mut host, GUEST_MAC, now), Ipv4Addr::new(10, 0, 2, 16));
    assert_eq!(lease(&mut gateway, &mut host, MacAddress([2, 0, 0, 0, 0, 9]), now), fixed);
}

#[test]
fn a_full_pool_gets_a_nak_and_rapid_commit_gets_an_ack() {
    let config = GatewayConfig { dhcp_start: Ipv4Addr::new(10, 0, 2, 253), ..GatewayConfig::default() };
    let (mut gateway, mut host, now) = gateway_with(config);
    gateway.receive(
        &from_guest(&dhcp_message(DhcpMessageType::Discover, GUEST_MAC, None, true)),
        now,
        &mut host,
    );
    let (kind, ip, options, _) = dhcp_reply(&mut gateway);
    assert_eq!((kind, ip), (DhcpMessageType::Ack, Ipv4Addr::new(10, 0, 2, 253)));
    assert!(options.iter().any(|(k, _)| *k == 80), "rapid commit acknowledged");
    lease(&mut gateway, &mut host, MacAddress([2, 0, 0, 0, 0, 2]), now);
    gateway.receive(
        &from_guest(&dhcp_message(DhcpMessageType::Discover, MacAddress([2, 0, 0, 0, 0, 3]), None, false)),
        now,
        &mut host,
    );
    assert_eq!(dhcp_reply(&mut gateway).0, DhcpMessageType::Nak);
}

#[test]
fn a_request_for_someone_elses_address_is_refused() {
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    lease(&mut gateway, &mut host, GUEST_MAC, now);
    let other = MacAddress([2, 0, 0, 0, 0, 7]);
    gateway.receive(
        &from_guest(&dhcp_message(DhcpMessageType::Request, other, Some(GUEST_IP), false)),
        now,
        &mut host,
    );
    assert_eq!(dhcp_reply(&mut gateway).0, DhcpMessageType::Nak);
}

#[test]
fn restrict_leaves_router_and_dns_out_of_dhcp() {
    let (mut gateway, mut host, now) =
        gateway_with(GatewayConfig { restrict: true, ..GatewayConfig::default() });
    gateway.receive(
        &from_guest(&dhcp_message(DhcpMessageType::Discover, GUEST_MAC, None, false)),
        now,
        &mut host,
    );
    let (_, _, options, repr) = dhcp_reply(&mut gateway);
    assert_eq!(repr.router, None);
    assert!(!options.iter().any(|(k, _)| *k == 6));
}
