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
fn pxe_clients_get_the_boot_file_and_tftp_server_and_others_the_boot_file_field_only() {
    let config = GatewayConfig {
        tftp_root: Some("/srv/tftp".into()),
        bootfile: Some("boot.ipxe".into()),
        tftp_server_name: Some("10.0.2.2".into()),
        ..GatewayConfig::default()
    };
    let pxe = [DhcpOption { kind: 60, data: b"PXEClient:Arch:00000:UNDI:002001" }];
    for (options, boot_options) in [(&pxe[..], true), (&[][..], false)] {
        let (mut gateway, mut host, now) = gateway_with(config.clone());
        let discover = dhcp_message_with_options(
            DhcpMessageType::Discover,
            GUEST_MAC,
            None,
            Ipv4Addr::UNSPECIFIED,
            options,
        );
        gateway.receive(&from_guest(&discover), now, &mut host);
        let frame = gateway.pop_frame().expect("an offer");
        let (_, _, payload) = udp_of(&frame);
        assert_eq!(&payload[108..118], b"boot.ipxe\0", "the BOOTP file field");
        let packet = DhcpPacket::new_checked(&payload[..]).unwrap();
        assert_eq!(DhcpRepr::parse(&packet).unwrap().server_ip, Ipv4Addr::new(10, 0, 2, 2), "next server");
        let option = |kind: u8| packet.options().find(|o| o.kind == kind).map(|o| o.data.to_vec());
        assert_eq!(option(67).is_some(), boot_options);
        assert_eq!(option(66), boot_options.then(|| b"10.0.2.2".to_vec()));
    }
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

/// DHCP from `mac` on switch port `port`; the gateway's reply, if any.
fn dhcp_from(
    gateway: &mut Gateway,
    host: &mut FakeHost,
    port: u32,
    message: Vec<u8>,
    now: Instant,
) -> Option<(DhcpMessageType, Ipv4Addr)> {
    gateway.receive(&from_port(port, &message), now, host);
    gateway.pop_frame().map(|frame| {
        let (_, _, payload) = udp_of(frame.as_bytes());
        let packet = DhcpPacket::new_checked(&payload[..]).unwrap();
        let repr = DhcpRepr::parse(&packet).unwrap();
        (repr.message_type, repr.your_ip)
    })
}

fn made_up_mac(n: u16) -> MacAddress {
    let [hi, lo] = n.to_be_bytes();
    MacAddress([0x02, 0, 0, 0, hi, lo])
}

#[test]
fn one_port_with_made_up_macs_cannot_empty_the_pool() {
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let mut offers = 0;
    for n in 0..240 {
        let discover = dhcp_message(DhcpMessageType::Discover, made_up_mac(n), None, false);
        if dhcp_from(&mut gateway, &mut host, 7, discover, now).is_some() {
            offers += 1;
        }
    }
    assert_eq!(offers, 16, "the port's lease budget");
    assert_eq!(gateway.counters().drops(GatewayDropReason::GuestBudget), 224);
    assert_eq!(
        lease(&mut gateway, &mut host, GUEST_MAC, now),
        Ipv4Addr::new(10, 0, 2, 31),
        "a guest on another port"
    );
}

#[test]
fn offers_never_requested_hold_their_address_for_a_minute_only() {
    let config = GatewayConfig { port_max_leases: 2, ..GatewayConfig::default() };
    let (mut gateway, mut host, now) = gateway_with(config);
    for n in 0..2 {
        let discover = dhcp_message(DhcpMessageType::Discover, made_up_mac(n), None, false);
        assert!(dhcp_from(&mut gateway, &mut host, 7, discover, now).is_some());
    }
    let third = || dhcp_message(DhcpMessageType::Discover, made_up_mac(2), None, false);
    assert_eq!(dhcp_from(&mut gateway, &mut host, 7, third(), now), None, "two offers held");
    let later = now + Duration::from_secs(61);
    assert_eq!(
        dhcp_from(&mut gateway, &mut host, 7, third(), later),
        Some((DhcpMessageType::Offer, Ipv4Addr::new(10, 0, 2, 15))),
        "the first offer's address is free again"
    );
}

#[test]
fn a_refused_request_holds_nothing() {
    let config = GatewayConfig { dhcp_start: Ipv4Addr::new(10, 0, 2, 253), ..GatewayConfig::default() };
    let (mut gateway, mut host, now) = gateway_with(config);
    for n in 0..20 {
        let wrong =
            dhcp_message(DhcpMessageType::Request, made_up_mac(n), Some(Ipv4Addr::new(10, 0, 2, 99)), false);
        assert_eq!(
            dhcp_from(&mut gateway, &mut host, 7, wrong, now).map(|r| r.0),
            Some(DhcpMessageType::Nak)
        );
    }
    assert_eq!(lease(&mut gateway, &mut host, GUEST_MAC, now), Ipv4Addr::new(10, 0, 2, 253));
    assert_eq!(lease(&mut gateway, &mut host, made_up_mac(99), now), Ipv4Addr::new(10, 0, 2, 254));
}

#[test]
fn leases_end_after_the_lease_time_and_their_addresses_go_to_new_guests() {
    let config = GatewayConfig {
        dhcp_start: Ipv4Addr::new(10, 0, 2, 254),
        lease_time: Duration::from_secs(100),
        ..GatewayConfig::default()
    };
    let (mut gateway, mut host, now) = gateway_with(config);
    assert_eq!(lease(&mut gateway, &mut host, GUEST_MAC, now), Ipv4Addr::new(10, 0, 2, 254));
    let newcomer = || dhcp_message(DhcpMessageType::Discover, made_up_mac(1), None, false);
    assert_eq!(
        dhcp_from(&mut gateway, &mut host, 2, newcomer(), now).map(|r| r.0),
        Some(DhcpMessageType::Nak)
    );
    let later = now + Duration::from_secs(101);
    assert_eq!(gateway.leases(later), vec![]);
    let offer = dhcp_from(&mut gateway, &mut host, 2, newcomer(), later);
    assert_eq!(offer, Some((DhcpMessageType::Offer, Ipv4Addr::new(10, 0, 2, 254))));
}

#[test]
fn release_and_decline_count_only_from_the_port_and_mac_that_hold_the_lease() {
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let ip = lease(&mut gateway, &mut host, GUEST_MAC, now);
    let decline = || dhcp_message(DhcpMessageType::Decline, GUEST_MAC, Some(ip), false);
    let release = || dhcp_message_with_ciaddr(DhcpMessageType::Release, GUEST_MAC, None, false, ip);
    for forged in [decline(), release()] {
        assert_eq!(dhcp_from(&mut gateway, &mut host, 9, forged, now), None);
    }
    assert_eq!(gateway.counters().drops(GatewayDropReason::DhcpRefused), 2);
    assert_eq!(gateway.leases(now).len(), 1, "the lease survives forged messages from another port");
    let renew = || dhcp_message(DhcpMessageType::Request, GUEST_MAC, Some(ip), false);
    assert_eq!(
        dhcp_from(&mut gateway, &mut host, GUEST_PORT, renew(), now),
        Some((DhcpMessageType::Ack, ip))
    );

    assert_eq!(dhcp_from(&mut gateway, &mut host, GUEST_PORT, decline(), now), None);
    assert_eq!(gateway.leases(now), vec![], "the holder may decline");
    let other = dhcp_message(DhcpMessageType::Discover, made_up_mac(5), None, false);
    let (_, offered) = dhcp_from(&mut gateway, &mut host, 3, other, now).unwrap();
    assert_ne!(offered, ip, "a declined address stays out of the pool for a while");
}

#[test]
fn a_lease_follows_its_guest_to_a_new_port_only_once_the_old_one_is_gone() {
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let ip = lease(&mut gateway, &mut host, GUEST_MAC, now);
    let request = || dhcp_message(DhcpMessageType::Request, GUEST_MAC, Some(ip), false);
    assert_eq!(dhcp_from(&mut gateway, &mut host, 5, request(), now), None, "a live holder keeps it");
    host.gone_ports.push(GUEST_PORT);
    assert_eq!(dhcp_from(&mut gateway, &mut host, 5, request(), now), Some((DhcpMessageType::Ack, ip)));
}
