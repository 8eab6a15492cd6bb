//! ARP: answers for the gateway's addresses, asking for a guest that has not spoken, and
//! neighbours that no guest can take over.

use super::*;

#[test]
fn arp_requests_for_the_host_and_dns_addresses_are_answered() {
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    for target in [Ipv4Addr::new(10, 0, 2, 2), Ipv4Addr::new(10, 0, 2, 3)] {
        let request = ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr: GUEST_MAC,
            source_protocol_addr: GUEST_IP,
            target_hardware_addr: MacAddress([0; 6]),
            target_protocol_addr: target,
        };
        let mut frame = vec![0u8; 14 + request.buffer_len()];
        frame[..6].copy_from_slice(&[0xff; 6]);
        frame[6..12].copy_from_slice(&GUEST_MAC.0);
        frame[12..14].copy_from_slice(&[0x08, 0x06]);
        request.emit(&mut ArpPacket::new_unchecked(&mut frame[14..]));
        gateway.receive(&from_guest(&frame), now, &mut host);
        let reply = gateway.pop_frame().expect("an ARP reply");
        let ethernet = EthernetFrame::new_checked(&reply[..]).unwrap();
        let ArpRepr::EthernetIpv4 { operation, source_hardware_addr, source_protocol_addr, .. } =
            ArpRepr::parse(&ArpPacket::new_checked(ethernet.payload()).unwrap()).unwrap()
        else {
            panic!("not an IPv4 ARP reply")
        };
        assert_eq!(operation, ArpOperation::Reply);
        assert_eq!(source_hardware_addr, gateway.config().mac());
        assert_eq!(source_protocol_addr, target);
    }
}

#[test]
fn a_hostfwd_client_for_a_silent_guest_waits_for_its_arp_reply() {
    use smoltcp::wire::TcpControl;
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let flow = gateway.allocate_flow();
    gateway.connect_to_guest(SocketAddrV4::new(GUEST_IP, 22).into(), None, flow, now, &mut host);
    let request = gateway.pop_frame().expect("an ARP request for the guest");
    let arp = ArpRepr::parse(&ArpPacket::new_checked(&request[14..]).unwrap()).unwrap();
    let ArpRepr::EthernetIpv4 {
        operation,
        target_protocol_addr,
        source_hardware_addr,
        source_protocol_addr,
        ..
    } = arp
    else {
        panic!("{arp:?}")
    };
    assert_eq!((operation, target_protocol_addr), (ArpOperation::Request, GUEST_IP));
    assert!(host.closed.is_empty(), "the client waits");

    let reply = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: GUEST_MAC,
        source_protocol_addr: GUEST_IP,
        target_hardware_addr: source_hardware_addr,
        target_protocol_addr: source_protocol_addr,
    };
    let mut frame = vec![0u8; 14 + reply.buffer_len()];
    {
        let mut ethernet = EthernetFrame::new_unchecked(&mut frame[..]);
        ethernet.set_dst_addr(source_hardware_addr);
        ethernet.set_src_addr(GUEST_MAC);
        ethernet.set_ethertype(smoltcp::wire::EthernetProtocol::Arp);
    }
    reply.emit(&mut ArpPacket::new_unchecked(&mut frame[14..]));
    gateway.receive(&from_guest(&frame), now, &mut host);
    let (control, _, _, _, _) = tcp_of(&gateway.pop_frame().expect("the SYN, once the guest is known"));
    assert_eq!(control, TcpControl::Syn);

    // A guest that never answers: the client is closed after the ARP timeout.
    let other = gateway.allocate_flow();
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    gateway.connect_to_guest(
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 99), 22).into(),
        None,
        other,
        now,
        &mut host,
    );
    let later = now + Duration::from_secs(4);
    assert!(gateway.next_deadline().is_some_and(|deadline| deadline <= later));
    gateway.on_deadline(later, &mut host);
    assert_eq!(host.closed, vec![(other, true)]);
}

/// An ARP request from `mac` claiming `ip`, for the gateway's address.
fn arp_claim(mac: MacAddress, ip: Ipv4Addr) -> Vec<u8> {
    let request = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: mac,
        source_protocol_addr: ip,
        target_hardware_addr: MacAddress([0; 6]),
        target_protocol_addr: Ipv4Addr::new(10, 0, 2, 2),
    };
    let mut frame = vec![0u8; 14 + request.buffer_len()];
    frame[..6].copy_from_slice(&[0xff; 6]);
    frame[6..12].copy_from_slice(&mac.0);
    frame[12..14].copy_from_slice(&[0x08, 0x06]);
    request.emit(&mut ArpPacket::new_checked(&mut frame[14..]).unwrap());
    frame
}

#[test]
fn no_guest_can_take_over_a_leased_address_or_the_gateways_own() {
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let victim = lease(&mut gateway, &mut host, GUEST_MAC, now);
    let attacker = MacAddress([0x52, 0x54, 0, 0x66, 0x66, 0x66]);
    let before = gateway.counters().drops(GatewayDropReason::Spoofed);
    // ARP claiming the victim's leased address, and the gateway's own two.
    for claimed in [victim, Ipv4Addr::new(10, 0, 2, 2), Ipv4Addr::new(10, 0, 2, 3)] {
        gateway.receive(&from_guest(&arp_claim(attacker, claimed)), now, &mut host);
        assert!(gateway.pop_frame().is_none(), "a spoofed claim is not answered");
    }
    assert_eq!(gateway.counters().drops(GatewayDropReason::Spoofed) - before, 3);
    assert_eq!(gateway.neighbors.lookup(victim), Some(GUEST_MAC), "the victim's entry follows its lease");
    // An IPv4 packet from the victim's address on the attacker's MAC is dropped too.
    let mut spoofed = guest_udp(SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 9), b"x");
    spoofed[6..12].copy_from_slice(&attacker.0);
    gateway.receive(&from_guest(&spoofed), now, &mut host);
    assert_eq!(gateway.counters().drops(GatewayDropReason::Spoofed) - before, 4);
    assert!(host.sent.is_empty(), "nothing of the spoofed packet left for the host");
    // The holder's own claim is taken, and an address nobody leased is learned as before.
    gateway.receive(&from_guest(&arp_claim(GUEST_MAC, victim)), now, &mut host);
    let unleased = Ipv4Addr::new(10, 0, 2, 200);
    gateway.receive(&from_guest(&arp_claim(attacker, unleased)), now, &mut host);
    assert_eq!(gateway.neighbors.lookup(unleased), Some(attacker));
    assert_eq!(gateway.counters().drops(GatewayDropReason::Spoofed) - before, 4);
}
