//! The gateway driven frame by frame, with a fake host that records what it was asked.

use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, DhcpMessageType, DhcpOption, DhcpPacket, DhcpRepr, EthernetFrame,
    Icmpv4Packet, Icmpv4Repr, Ipv4Packet, UdpPacket,
};

use super::*;

const GUEST_MAC: MacAddress = MacAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

/// A host that records opens and sends, and refuses what it is told to (`send_error`
/// makes every datagram send fail with that OS error). TCP sockets
/// take at most `tcp_accept` bytes per write and hold `tcp_incoming` for peeking.
#[derive(Default)]
struct FakeHost {
    open: HashMap<FlowId, SocketAddr>,
    sent: Vec<(FlowId, Vec<u8>)>,
    refuse_open: Vec<SocketAddr>,
    send_error: Option<i32>,
    tcp_accept: usize,
    tcp_incoming: Vec<u8>,
    tcp_consumed: usize,
    closed: Vec<(FlowId, bool)>,
    replies: Vec<(SocketAddr, Vec<u8>)>,
    ttls: Vec<(FlowId, Option<u8>)>,
    /// Room toward guests; unlimited unless a test sets it.
    guest_room: Option<EgressRoom>,
}

impl HostSockets for FakeHost {
    fn udp_open(&mut self, flow: FlowId, remote: SocketAddr) -> io::Result<()> {
        if self.refuse_open.contains(&remote) {
            return Err(io::ErrorKind::ConnectionRefused.into());
        }
        self.open.insert(flow, remote);
        Ok(())
    }
    fn icmp_open(&mut self, flow: FlowId, remote: Ipv4Addr) -> io::Result<IcmpSocketKind> {
        self.udp_open(flow, SocketAddr::from((remote, 0))).map(|()| IcmpSocketKind::Ping)
    }
    fn set_ttl(&mut self, flow: FlowId, ttl: Option<u8>) -> io::Result<()> {
        self.ttls.push((flow, ttl));
        Ok(())
    }
    fn datagram_send(&mut self, flow: FlowId, payload: &[u8]) -> io::Result<()> {
        if let Some(errno) = self.send_error {
            return Err(io::Error::from_raw_os_error(errno));
        }
        self.sent.push((flow, payload.to_vec()));
        Ok(())
    }
    fn datagram_close(&mut self, flow: FlowId) {
        self.open.remove(&flow);
    }
    fn tcp_connect(&mut self, flow: FlowId, remote: SocketAddr, ttl: Option<u8>) -> io::Result<()> {
        self.udp_open(flow, remote)?;
        self.ttls.push((flow, ttl));
        Ok(())
    }
    fn tcp_send(&mut self, flow: FlowId, data: &[u8]) -> io::Result<usize> {
        let taken = data.len().min(self.tcp_accept);
        self.sent.push((flow, data[..taken].to_vec()));
        Ok(taken)
    }
    fn tcp_peek(
        &mut self,
        _flow: FlowId,
        offset: usize,
        buffers: &mut [IoSliceMut<'_>],
    ) -> io::Result<usize> {
        let mut available = self.tcp_incoming.get(offset..).unwrap_or(&[]);
        if available.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut peeked = 0;
        for buffer in buffers {
            let n = available.len().min(buffer.len());
            buffer[..n].copy_from_slice(&available[..n]);
            available = &available[n..];
            peeked += n;
        }
        Ok(peeked)
    }
    fn tcp_consume(&mut self, _flow: FlowId, len: usize) -> io::Result<()> {
        self.tcp_incoming.drain(..len);
        self.tcp_consumed += len;
        Ok(())
    }
    fn tcp_send_space(&mut self, _flow: FlowId) -> usize {
        self.tcp_accept
    }
    fn tcp_shutdown_write(&mut self, _flow: FlowId) {}
    fn tcp_close(&mut self, flow: FlowId, reset: bool) {
        self.open.remove(&flow);
        self.closed.push((flow, reset));
    }
    fn udp_forward_reply(&mut self, _forward: usize, client: SocketAddr, payload: &[u8]) -> io::Result<()> {
        self.replies.push((client, payload.to_vec()));
        Ok(())
    }
    fn guest_room(&mut self, _guest: MacAddress) -> EgressRoom {
        self.guest_room.unwrap_or(EgressRoom::UNLIMITED)
    }
}

fn dhcp_message(
    message_type: DhcpMessageType,
    mac: MacAddress,
    requested: Option<Ipv4Addr>,
    rapid: bool,
) -> Vec<u8> {
    let rapid_option = [DhcpOption { kind: 80, data: &[] }];
    let repr = DhcpRepr {
        message_type,
        transaction_id: 0x1234,
        secs: 0,
        client_hardware_address: mac,
        client_ip: Ipv4Addr::UNSPECIFIED,
        your_ip: Ipv4Addr::UNSPECIFIED,
        server_ip: Ipv4Addr::UNSPECIFIED,
        router: None,
        subnet_mask: None,
        relay_agent_ip: Ipv4Addr::UNSPECIFIED,
        broadcast: false,
        requested_ip: requested,
        client_identifier: None,
        server_identifier: None,
        parameter_request_list: None,
        dns_servers: None,
        max_size: None,
        lease_duration: None,
        renew_duration: None,
        rebind_duration: None,
        additional_options: if rapid { &rapid_option } else { &[] },
    };
    let mut payload = vec![0u8; repr.buffer_len()];
    repr.emit(&mut DhcpPacket::new_unchecked(&mut payload)).unwrap();
    packet::udp(
        mac,
        MacAddress::BROADCAST,
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
        SocketAddrV4::new(Ipv4Addr::BROADCAST, 67),
        &payload,
    )
    .unwrap()
    .to_vec()
}

/// The UDP payload of a frame the gateway sent, and its addresses.
fn udp_of(frame: &[u8]) -> (SocketAddrV4, SocketAddrV4, Vec<u8>) {
    let ethernet = EthernetFrame::new_checked(frame).unwrap();
    let ip = Ipv4Packet::new_checked(ethernet.payload()).unwrap();
    assert!(ip.verify_checksum());
    let udp = UdpPacket::new_checked(ip.payload()).unwrap();
    assert!(udp.verify_checksum(&ip.src_addr().into(), &ip.dst_addr().into()));
    (
        SocketAddrV4::new(ip.src_addr(), udp.src_port()),
        SocketAddrV4::new(ip.dst_addr(), udp.dst_port()),
        udp.payload().to_vec(),
    )
}

fn dhcp_reply(gateway: &mut Gateway) -> (DhcpMessageType, Ipv4Addr, Vec<(u8, Vec<u8>)>, DhcpRepr<'static>) {
    let frame = gateway.pop_frame().expect("a DHCP reply");
    let (_, to, payload) = udp_of(&frame);
    assert_eq!(to.port(), 68);
    let payload: &'static [u8] = Box::leak(payload.into_boxed_slice());
    let packet: &'static DhcpPacket<&'static [u8]> =
        Box::leak(Box::new(DhcpPacket::new_checked(payload).unwrap()));
    let repr = DhcpRepr::parse(packet).unwrap();
    let options = packet.options().map(|o| (o.kind, o.data.to_vec())).collect();
    (repr.message_type, repr.your_ip, options, repr)
}

/// A gateway with one hostfwd: `protocol` from host address `host` to `guest`.
fn gateway_forwarding(
    protocol: ForwardProtocol,
    host: &str,
    guest: SocketAddrV4,
) -> (Gateway, FakeHost, Instant) {
    let forward = HostForward { protocol, host: host.parse().unwrap(), guest };
    gateway_with(GatewayConfig { host_forwards: vec![forward], ..GatewayConfig::default() })
}

fn gateway_with(config: GatewayConfig) -> (Gateway, FakeHost, Instant) {
    config.validate().unwrap();
    (Gateway::new(config), FakeHost::default(), Instant::now())
}

fn lease(gateway: &mut Gateway, host: &mut FakeHost, mac: MacAddress, now: Instant) -> Ipv4Addr {
    gateway.receive(&dhcp_message(DhcpMessageType::Discover, mac, None, false), Offload::NONE, now, host);
    let (kind, offered, _, _) = dhcp_reply(gateway);
    assert_eq!(kind, DhcpMessageType::Offer);
    gateway.receive(
        &dhcp_message(DhcpMessageType::Request, mac, Some(offered), false),
        Offload::NONE,
        now,
        host,
    );
    let (kind, acked, _, _) = dhcp_reply(gateway);
    assert_eq!(kind, DhcpMessageType::Ack);
    assert_eq!(acked, offered);
    acked
}

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
        gateway.receive(&frame, Offload::NONE, now, &mut host);
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
        &dhcp_message(DhcpMessageType::Discover, GUEST_MAC, None, false),
        Offload::NONE,
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
        &dhcp_message(DhcpMessageType::Discover, GUEST_MAC, None, true),
        Offload::NONE,
        now,
        &mut host,
    );
    let (kind, ip, options, _) = dhcp_reply(&mut gateway);
    assert_eq!((kind, ip), (DhcpMessageType::Ack, Ipv4Addr::new(10, 0, 2, 253)));
    assert!(options.iter().any(|(k, _)| *k == 80), "rapid commit acknowledged");
    lease(&mut gateway, &mut host, MacAddress([2, 0, 0, 0, 0, 2]), now);
    gateway.receive(
        &dhcp_message(DhcpMessageType::Discover, MacAddress([2, 0, 0, 0, 0, 3]), None, false),
        Offload::NONE,
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
        &dhcp_message(DhcpMessageType::Request, other, Some(GUEST_IP), false),
        Offload::NONE,
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
        &dhcp_message(DhcpMessageType::Discover, GUEST_MAC, None, false),
        Offload::NONE,
        now,
        &mut host,
    );
    let (_, _, options, repr) = dhcp_reply(&mut gateway);
    assert_eq!(repr.router, None);
    assert!(!options.iter().any(|(k, _)| *k == 6));
}

fn guest_udp(dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    packet::udp(
        GUEST_MAC,
        MacAddress([0x52, 0x55, 10, 0, 2, 2]),
        SocketAddrV4::new(GUEST_IP, 40000),
        dst,
        payload,
    )
    .unwrap()
    .to_vec()
}

#[test]
fn ping_to_the_gateway_is_answered_locally() {
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let request = Icmpv4Repr::EchoRequest { ident: 7, seq_no: 3, data: b"hello" };
    let frame =
        packet::icmp(GUEST_MAC, gateway.config().mac(), GUEST_IP, Ipv4Addr::new(10, 0, 2, 2), &request)
            .unwrap()
            .to_vec();
    gateway.receive(&frame, Offload::NONE, now, &mut host);
    let reply = gateway.pop_frame().expect("an echo reply");
    let ethernet = EthernetFrame::new_checked(&reply[..]).unwrap();
    let ip = Ipv4Packet::new_checked(ethernet.payload()).unwrap();
    let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
    let repr = Icmpv4Repr::parse(&icmp, &ChecksumCapabilities::default()).unwrap();
    assert_eq!(repr, Icmpv4Repr::EchoReply { ident: 7, seq_no: 3, data: b"hello" });
    assert_eq!((ip.src_addr(), ip.dst_addr()), (Ipv4Addr::new(10, 0, 2, 2), GUEST_IP));
}

fn dns_query(id: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    q.extend_from_slice(b"\x04vnet\x04test\x00\x00\x01\x00\x01");
    q
}

#[test]
fn dns_is_forwarded_and_the_answer_returns_from_the_dns_address() {
    let upstream: SocketAddr = "127.0.0.1:5300".parse().unwrap();
    let (mut gateway, mut host, now) =
        gateway_with(GatewayConfig { dns_upstreams: vec![upstream], ..GatewayConfig::default() });
    gateway.receive(
        &guest_udp(SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 3), 53), &dns_query(9)),
        Offload::NONE,
        now,
        &mut host,
    );
    let (flow, sent) = host.sent.last().cloned().unwrap();
    assert_eq!(host.open[&flow], upstream);
    assert_eq!(sent, dns_query(9));
    let mut answer = dns_query(9);
    answer[2] |= 0x80;
    gateway.on_udp_datagram(flow, &answer, now, &mut host);
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
        &guest_udp(SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 3), 53), &dns_query(5)),
        Offload::NONE,
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

#[test]
fn udp_to_the_host_address_goes_to_host_loopback_and_replies_come_back() {
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 7777);
    gateway.receive(&guest_udp(dst, b"ping"), Offload::NONE, now, &mut host);
    let (flow, sent) = host.sent.last().cloned().unwrap();
    assert_eq!(host.open[&flow], "127.0.0.1:7777".parse::<SocketAddr>().unwrap());
    assert_eq!(sent, b"ping");
    gateway.on_udp_datagram(flow, b"pong", now, &mut host);
    let (from, to, payload) = udp_of(&gateway.pop_frame().unwrap());
    assert_eq!((from, to, payload), (dst, SocketAddrV4::new(GUEST_IP, 40000), b"pong".to_vec()));

    gateway.on_udp_error(flow, &io::ErrorKind::ConnectionRefused.into(), None, now, &mut host);
    let unreachable = gateway.pop_frame().expect("port unreachable");
    let ip = Ipv4Packet::new_checked(&unreachable[14..]).unwrap();
    assert_eq!(ip.next_header(), IpProtocol::Icmp);

    gateway.on_deadline(now + udp::IDLE_TIMEOUT, &mut host);
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
        gateway.receive(&guest_udp(dst, b"x"), Offload::NONE, now, &mut host);
        assert!(host.sent.is_empty());
        assert_eq!(gateway.counters().drops(DropReason::Restricted), 1);
    }
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    for dst in [Ipv4Addr::BROADCAST, Ipv4Addr::new(10, 0, 2, 255), Ipv4Addr::new(239, 1, 2, 3)] {
        let frame = packet::udp(
            GUEST_MAC,
            MacAddress::BROADCAST,
            SocketAddrV4::new(GUEST_IP, 1),
            SocketAddrV4::new(dst, 9),
            b"x",
        )
        .unwrap()
        .to_vec();
        gateway.receive(&frame, Offload::NONE, now, &mut host);
    }
    assert!(host.sent.is_empty(), "broadcast and multicast never leak out");
}

#[test]
fn the_flow_table_is_bounded() {
    let (mut gateway, mut host, now) =
        gateway_with(GatewayConfig { max_flows: 2, ..GatewayConfig::default() });
    for port in 1..=3 {
        gateway.receive(
            &guest_udp(SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), port), b"x"),
            Offload::NONE,
            now,
            &mut host,
        );
    }
    assert_eq!(host.open.len(), 2);
    assert_eq!(gateway.counters().drops(DropReason::FlowLimit), 1);
}

#[test]
fn bad_frames_are_counted_by_reason() {
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let good = guest_udp(SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 7), b"data");
    gateway.receive(&good[..20], Offload::NONE, now, &mut host);
    let mut bad_ip_checksum = good.clone();
    bad_ip_checksum[24] ^= 0xff;
    gateway.receive(&bad_ip_checksum, Offload::NONE, now, &mut host);
    let mut bad_udp_checksum = good.clone();
    let last = bad_udp_checksum.len() - 1;
    bad_udp_checksum[last] ^= 0xff;
    gateway.receive(&bad_udp_checksum, Offload::NONE, now, &mut host);
    let mut fragment = good.clone();
    fragment[20] = 0x20; // more fragments
    let checksum = {
        let mut ip = Ipv4Packet::new_unchecked(&mut fragment[14..]);
        ip.fill_checksum();
        ip.checksum()
    };
    assert_ne!(checksum, 0);
    gateway.receive(&fragment, Offload::NONE, now, &mut host);
    let mut other_mac = good.clone();
    other_mac[..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    gateway.receive(&other_mac, Offload::NONE, now, &mut host);
    let counters = gateway.counters();
    assert_eq!(counters.drops(DropReason::Malformed), 1);
    assert_eq!(counters.drops(DropReason::BadChecksum), 2);
    assert_eq!(counters.drops(DropReason::Fragment), 1);
    assert_eq!(counters.drops(DropReason::NotForGateway), 1);
    assert!(host.sent.is_empty());
}

fn guest_tcp(
    dst: SocketAddrV4,
    control: smoltcp::wire::TcpControl,
    seq: u32,
    ack: Option<u32>,
    payload: &[u8],
) -> Vec<u8> {
    guest_tcp_from(40000, dst, control, seq, ack, payload)
}

/// A segment from the guest's port `src_port` to `dst`.
fn guest_tcp_from(
    src_port: u16,
    dst: SocketAddrV4,
    control: smoltcp::wire::TcpControl,
    seq: u32,
    ack: Option<u32>,
    payload: &[u8],
) -> Vec<u8> {
    use smoltcp::wire::{TcpRepr, TcpSeqNumber};
    let repr = TcpRepr {
        src_port,
        dst_port: dst.port(),
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: 1000,
        window_scale: (control == smoltcp::wire::TcpControl::Syn).then_some(7),
        max_seg_size: (control == smoltcp::wire::TcpControl::Syn).then_some(1460),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload,
    };
    packet::tcp(
        GUEST_MAC,
        MacAddress([0x52, 0x55, 10, 0, 2, 2]),
        SocketAddrV4::new(GUEST_IP, src_port),
        dst,
        &repr,
    )
    .unwrap()
    .to_vec()
}

/// The TCP header fields of a frame the gateway sent.
fn tcp_of(frame: &[u8]) -> (smoltcp::wire::TcpControl, u32, Option<u32>, usize, Vec<u8>) {
    use smoltcp::wire::{TcpPacket, TcpRepr};
    let ethernet = EthernetFrame::new_checked(frame).unwrap();
    let ip = Ipv4Packet::new_checked(ethernet.payload()).unwrap();
    let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
    let repr =
        TcpRepr::parse(&tcp, &ip.src_addr().into(), &ip.dst_addr().into(), &ChecksumCapabilities::default())
            .expect("a valid segment with a good checksum");
    (
        repr.control,
        repr.seq_number.0 as u32,
        repr.ack_number.map(|a| a.0 as u32),
        usize::from(repr.window_len),
        repr.payload.to_vec(),
    )
}

#[test]
fn tcp_syn_ack_waits_for_the_host_connect_and_data_is_acked_as_the_host_takes_it() {
    use smoltcp::wire::TcpControl;
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    host.tcp_accept = 1000;
    let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 8080);
    gateway.receive(&guest_tcp(dst, TcpControl::Syn, 100, None, &[]), Offload::NONE, now, &mut host);
    let flow = *host.open.keys().next().expect("a host connect");
    assert_eq!(host.open[&flow], "127.0.0.1:8080".parse::<SocketAddr>().unwrap());
    assert!(gateway.pop_frame().is_none(), "no SYN-ACK before the host connect completes");

    gateway.on_tcp_connected(flow, now, &mut host);
    let (control, isn, ack, _, _) = tcp_of(&gateway.pop_frame().expect("SYN-ACK"));
    assert_eq!((control, ack), (TcpControl::Syn, Some(101)));
    gateway.receive(
        &guest_tcp(dst, TcpControl::None, 101, Some(isn + 1), &[]),
        Offload::NONE,
        now,
        &mut host,
    );

    // 1500 bytes arrive; the host takes 1000, so only 1000 are acknowledged.
    gateway.receive(
        &guest_tcp(dst, TcpControl::Psh, 101, Some(isn + 1), &[7u8; 1500]),
        Offload::NONE,
        now,
        &mut host,
    );
    assert_eq!(host.sent.last().unwrap().1.len(), 1000);
    let (_, _, ack, _, _) = tcp_of(&gateway.pop_frame().expect("an ACK"));
    assert_eq!(ack, Some(1101));

    // Host data goes out in segments and is consumed only once acknowledged.
    host.tcp_incoming = vec![9u8; 3000];
    gateway.on_tcp_readable(flow, now, &mut host);
    let mut sent = 0;
    while let Some(frame) = gateway.pop_frame() {
        sent += tcp_of(&frame).4.len();
    }
    assert_eq!(sent, 3000);
    assert_eq!(host.tcp_consumed, 0, "nothing consumed before the guest's ACK");
    gateway.receive(
        &guest_tcp(dst, TcpControl::None, 1101, Some(isn + 1 + 2000), &[]),
        Offload::NONE,
        now,
        &mut host,
    );
    assert_eq!(host.tcp_consumed, 2000);
}

#[test]
fn tcp_refusals_reach_the_guest_as_rst() {
    use smoltcp::wire::TcpControl;
    let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 9);
    // The host refuses the connect.
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    gateway.receive(&guest_tcp(dst, TcpControl::Syn, 5, None, &[]), Offload::NONE, now, &mut host);
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
                &guest_tcp(SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 1), TcpControl::Syn, 1, None, &[]),
                Offload::NONE,
                now,
                &mut host,
            );
        }
        gateway.receive(&guest_tcp(dst, TcpControl::Syn, 5, None, &[]), Offload::NONE, now, &mut host);
        let (control, _, _, _, _) = tcp_of(&gateway.pop_frame().unwrap());
        assert_eq!(control, TcpControl::Rst);
        let reason = if limited { DropReason::FlowLimit } else { DropReason::Restricted };
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
        guest_forwards: vec![GuestForward { virtual_addr, target: "127.0.0.1:8080".parse().unwrap() }],
        ..GatewayConfig::default()
    };
    let (mut gateway, mut host, now) = gateway_with(config);
    gateway.receive(&guest_tcp(virtual_addr, TcpControl::Syn, 1, None, &[]), Offload::NONE, now, &mut host);
    gateway.receive(
        &guest_tcp(SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 3), 53), TcpControl::Syn, 1, None, &[]),
        Offload::NONE,
        now,
        &mut host,
    );
    let mut targets: Vec<SocketAddr> = host.open.values().copied().collect();
    targets.sort();
    assert_eq!(targets, vec!["127.0.0.1:5353".parse().unwrap(), "127.0.0.1:8080".parse().unwrap()]);
}

#[test]
fn udp_hostfwd_reaches_the_guest_and_its_reply_returns_to_the_client() {
    let (mut gateway, mut host, now) =
        gateway_forwarding(ForwardProtocol::Udp, "127.0.0.1:5353", SocketAddrV4::new(GUEST_IP, 53));
    lease(&mut gateway, &mut host, GUEST_MAC, now);
    let client: SocketAddr = "127.0.0.1:40001".parse().unwrap();
    gateway.on_inbound_udp(0, client, b"question", now);
    let (from, to, payload) = udp_of(&gateway.pop_frame().expect("a datagram for the guest"));
    assert_eq!((to, payload.as_slice()), (SocketAddrV4::new(GUEST_IP, 53), &b"question"[..]));
    assert_eq!(*from.ip(), Ipv4Addr::new(10, 0, 2, 2));
    let reply = packet::udp(GUEST_MAC, gateway.config().mac(), to, from, b"answer").unwrap().to_vec();
    gateway.receive(&reply, Offload::NONE, now, &mut host);
    assert_eq!(host.replies, vec![(client, b"answer".to_vec())]);
}

#[test]
fn tcp_hostfwd_connects_to_the_guest_and_a_closed_port_closes_the_client() {
    use smoltcp::wire::TcpControl;
    let (mut gateway, mut host, now) =
        gateway_forwarding(ForwardProtocol::Tcp, "127.0.0.1:2222", SocketAddrV4::new(GUEST_IP, 22));
    lease(&mut gateway, &mut host, GUEST_MAC, now);
    host.tcp_accept = 65536;
    let flow = gateway.allocate_flow();
    gateway.on_inbound_tcp(0, flow, now, &mut host);
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
    gateway.receive(&reset, Offload::NONE, now, &mut host);
    assert_eq!(host.closed, vec![(flow, true)]);
}

#[test]
fn pings_beyond_the_gateway_go_through_a_ping_socket_with_the_ident_restored() {
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let outside = Ipv4Addr::new(192, 0, 2, 9);
    let request = Icmpv4Repr::EchoRequest { ident: 0x4242, seq_no: 1, data: b"abc" };
    let frame =
        packet::icmp(GUEST_MAC, gateway.config().mac(), GUEST_IP, outside, &request).unwrap().to_vec();
    gateway.receive(&frame, Offload::NONE, now, &mut host);
    let (flow, sent) = host.sent.last().cloned().expect("sent through the host");
    assert_eq!(host.open[&flow], SocketAddr::from((outside, 0)));
    assert_eq!(sent, frame[34..].to_vec(), "the echo request as the guest sent it");

    // The kernel's ping socket answers with its own identifier.
    let mut reply = vec![0u8; 11];
    let repr = Icmpv4Repr::EchoReply { ident: 0x0101, seq_no: 1, data: b"abc" };
    repr.emit(&mut Icmpv4Packet::new_unchecked(&mut reply[..]), &ChecksumCapabilities::default());
    gateway.on_udp_datagram(flow, &reply, now, &mut host);
    let back = gateway.pop_frame().expect("a reply for the guest");
    let ip = Ipv4Packet::new_checked(&back[14..]).unwrap();
    assert_eq!((ip.src_addr(), ip.dst_addr()), (outside, GUEST_IP));
    let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
    let parsed = Icmpv4Repr::parse(&icmp, &ChecksumCapabilities::default()).unwrap();
    assert_eq!(parsed, Icmpv4Repr::EchoReply { ident: 0x4242, seq_no: 1, data: b"abc" });

    let (mut restricted, mut host, now) =
        gateway_with(GatewayConfig { restrict: true, ..GatewayConfig::default() });
    restricted.receive(&frame, Offload::NONE, now, &mut host);
    assert!(host.sent.is_empty(), "restrict=on keeps pings in");
    assert_eq!(restricted.counters().drops(DropReason::Restricted), 1);
}

#[test]
fn host_unreachable_errors_reach_the_guest_as_icmp() {
    use smoltcp::wire::Icmpv4DstUnreachable;
    let dst = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 53);
    for (errno, reason) in [
        (101, Icmpv4DstUnreachable::NetUnreachable),
        (113, Icmpv4DstUnreachable::HostUnreachable),
        (111, Icmpv4DstUnreachable::PortUnreachable),
    ] {
        let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
        host.send_error = Some(errno);
        gateway.receive(&guest_udp(dst, b"x"), Offload::NONE, now, &mut host);
        let frame = gateway.pop_frame().expect("an ICMP error for the guest");
        let ip = Ipv4Packet::new_checked(&frame[14..]).unwrap();
        let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
        let repr = Icmpv4Repr::parse(&icmp, &ChecksumCapabilities::default()).unwrap();
        assert!(
            matches!(repr, Icmpv4Repr::DstUnreachable { reason: r, .. } if r == reason),
            "{errno}: {repr:?}"
        );
        assert_eq!(ip.dst_addr(), GUEST_IP);
    }
}

#[test]
fn the_hosts_loopback_is_reachable_only_as_the_host_address() {
    use smoltcp::wire::TcpControl;
    let config = GatewayConfig { host_loopback: false, ..GatewayConfig::default() };
    let (mut gateway, mut host, now) = gateway_with(config);
    for dst in [Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(0, 1, 2, 3), Ipv4Addr::new(10, 0, 2, 2)] {
        gateway.receive(&guest_udp(SocketAddrV4::new(dst, 22), b"x"), Offload::NONE, now, &mut host);
        gateway.receive(
            &guest_tcp(SocketAddrV4::new(dst, 22), TcpControl::Syn, 1, None, &[]),
            Offload::NONE,
            now,
            &mut host,
        );
    }
    assert!(host.open.is_empty(), "nothing reached the host: {:?}", host.open);
    assert_eq!(gateway.counters().drops(DropReason::Restricted), 6);
}

#[test]
fn a_reset_counts_only_at_the_expected_sequence_number() {
    use smoltcp::wire::TcpControl;
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    host.tcp_accept = 1000;
    let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 8080);
    let (flow, _) = established(&mut gateway, &mut host, now, dst);
    gateway.receive(&guest_tcp(dst, TcpControl::Rst, 5000, None, &[]), Offload::NONE, now, &mut host);
    assert!(host.closed.is_empty(), "a blind reset is ignored");
    gateway.receive(&guest_tcp(dst, TcpControl::Rst, 101, None, &[]), Offload::NONE, now, &mut host);
    assert_eq!(host.closed, vec![(flow, true)]);
}

#[test]
fn a_lost_syn_ack_is_sent_again_and_a_silent_guest_is_given_up() {
    use smoltcp::wire::TcpControl;
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 8080);
    gateway.receive(&guest_tcp(dst, TcpControl::Syn, 100, None, &[]), Offload::NONE, now, &mut host);
    let flow = *host.open.keys().next().unwrap();
    gateway.on_tcp_connected(flow, now, &mut host);
    assert_eq!(tcp_of(&gateway.pop_frame().unwrap()).0, TcpControl::Syn);
    // The guest retransmits its SYN: the SYN-ACK goes out again.
    gateway.receive(&guest_tcp(dst, TcpControl::Syn, 100, None, &[]), Offload::NONE, now, &mut host);
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
    gateway.receive(&guest_tcp(dst, TcpControl::Fin, 101, Some(isn + 1), &[]), Offload::NONE, now, &mut host);
    while gateway.pop_frame().is_some() {}
    // Long after the guest's FIN, the host still sends and the guest still acknowledges.
    let later = now + Duration::from_secs(600);
    gateway.on_deadline(later, &mut host);
    host.tcp_incoming = vec![1u8; 100];
    gateway.on_tcp_readable(flow, later, &mut host);
    let (_, _, _, _, payload) = tcp_of(&gateway.pop_frame().expect("data after the guest's FIN"));
    assert_eq!(payload.len(), 100);
    assert!(host.closed.is_empty());
}

#[test]
fn a_packet_whose_ttl_ends_at_the_gateway_gets_time_exceeded() {
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let mut frame = guest_udp(SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1), 33434), b"probe");
    {
        let mut ip = Ipv4Packet::new_unchecked(&mut frame[14..]);
        ip.set_hop_limit(1);
        ip.fill_checksum();
    }
    gateway.receive(&frame, Offload::NONE, now, &mut host);
    assert!(host.sent.is_empty(), "the probe does not go out");
    let reply = gateway.pop_frame().expect("time exceeded");
    let ip = Ipv4Packet::new_checked(&reply[14..]).unwrap();
    assert_eq!((ip.src_addr(), ip.dst_addr()), (Ipv4Addr::new(10, 0, 2, 2), GUEST_IP));
    let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
    assert_eq!(icmp.msg_type(), smoltcp::wire::Icmpv4Message::TimeExceeded);
    assert!(icmp.verify_checksum());
}

/// A guest TCP connection to `dst` through the handshake; returns its flow and the
/// gateway's initial sequence number.
fn established(gateway: &mut Gateway, host: &mut FakeHost, now: Instant, dst: SocketAddrV4) -> (FlowId, u32) {
    use smoltcp::wire::TcpControl;
    gateway.receive(&guest_tcp(dst, TcpControl::Syn, 100, None, &[]), Offload::NONE, now, host);
    let flow = *host.open.keys().next().expect("a host connect");
    gateway.on_tcp_connected(flow, now, host);
    let (_, isn, _, _, _) = tcp_of(&gateway.pop_frame().expect("SYN-ACK"));
    gateway.receive(&guest_tcp(dst, TcpControl::None, 101, Some(isn + 1), &[]), Offload::NONE, now, host);
    (flow, isn)
}

/// `frame` (from a guest) with its IPv4 TTL set to `ttl`.
fn with_ttl(mut frame: Vec<u8>, ttl: u8) -> Vec<u8> {
    let mut ip = Ipv4Packet::new_unchecked(&mut frame[14..]);
    ip.set_hop_limit(ttl);
    ip.fill_checksum();
    frame
}

/// The ICMP message in a frame the gateway sent, with the IPv4 source it came from and
/// the quoted packet's header (type, code, quoted IPv4 header's destination and the
/// eight quoted transport bytes).
fn icmp_error_of(frame: &[u8]) -> (Ipv4Addr, u8, u8, Ipv4Addr, Vec<u8>) {
    let ip = Ipv4Packet::new_checked(&frame[14..]).unwrap();
    let icmp = Icmpv4Packet::new_checked(ip.payload()).unwrap();
    assert!(icmp.verify_checksum());
    let quoted = Ipv4Packet::new_checked(icmp.data()).unwrap();
    (ip.src_addr(), u8::from(icmp.msg_type()), icmp.msg_code(), quoted.dst_addr(), quoted.payload().to_vec())
}

#[test]
fn a_low_guest_ttl_reaches_the_host_socket_less_one_hop() {
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let far = Ipv4Addr::new(192, 0, 2, 9);
    gateway.receive(
        &with_ttl(guest_udp(SocketAddrV4::new(far, 33434), b"a"), 3),
        Offload::NONE,
        now,
        &mut host,
    );
    gateway.receive(
        &with_ttl(guest_udp(SocketAddrV4::new(far, 33434), b"b"), 3),
        Offload::NONE,
        now,
        &mut host,
    );
    gateway.receive(
        &with_ttl(guest_udp(SocketAddrV4::new(far, 33434), b"c"), 64),
        Offload::NONE,
        now,
        &mut host,
    );
    let flow = host.sent[0].0;
    assert_eq!(host.ttls, vec![(flow, Some(2)), (flow, None)], "set on change only, default at 64");
    gateway.receive(
        &with_ttl(guest_udp(SocketAddrV4::new(far, 7), b"d"), 128),
        Offload::NONE,
        now,
        &mut host,
    );
    assert_eq!(host.ttls.len(), 2, "a new flow at a normal TTL keeps the host's default");
}

#[test]
fn time_exceeded_from_a_router_reaches_the_guest_from_that_router() {
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let far = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 9), 33435);
    gateway.receive(&with_ttl(guest_udp(far, b"probe"), 2), Offload::NONE, now, &mut host);
    let flow = host.sent[0].0;
    let router = Ipv4Addr::new(198, 51, 100, 1);
    let icmp = HostIcmpError::from_message(router, 11, 0);
    gateway.on_udp_error(flow, &io::ErrorKind::HostUnreachable.into(), icmp, now, &mut host);
    let (from, icmp_type, _, quoted_dst, quoted) = icmp_error_of(&gateway.pop_frame().unwrap());
    assert_eq!((from, icmp_type, quoted_dst), (router, 11, *far.ip()));
    assert_eq!(&quoted[..4], &[0x9c, 0x40, 0x82, 0x9b], "the probe's ports, which traceroute matches");

    // The destination's own port unreachable comes from the address the guest used,
    // also when that address stood for host loopback.
    let host_address = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 33436);
    gateway.receive(&with_ttl(guest_udp(host_address, b"probe"), 5), Offload::NONE, now, &mut host);
    let flow = host.sent.last().unwrap().0;
    let icmp = HostIcmpError::from_message(Ipv4Addr::LOCALHOST, 3, 3);
    gateway.on_udp_error(flow, &io::ErrorKind::ConnectionRefused.into(), icmp, now, &mut host);
    let (from, icmp_type, code, _, _) = icmp_error_of(&gateway.pop_frame().unwrap());
    assert_eq!((from, icmp_type, code), (*host_address.ip(), 3, 3));
}

#[test]
fn a_tcp_connect_failed_by_icmp_reaches_the_guest_as_that_icmp_error() {
    use smoltcp::wire::TcpControl;
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let far = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 9), 80);
    gateway.receive(
        &with_ttl(guest_tcp(far, TcpControl::Syn, 500, None, &[]), 2),
        Offload::NONE,
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
    gateway.receive(&guest_tcp(far, TcpControl::Syn, 900, None, &[]), Offload::NONE, now, &mut host);
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
    gateway.receive(&guest_tcp(dns, TcpControl::Syn, 1, None, &[]), Offload::NONE, now, &mut host);
    let flow = *host.open.keys().next().unwrap();
    assert_eq!(host.open[&flow], upstreams[0]);

    gateway.on_tcp_error(flow, &io::ErrorKind::ConnectionRefused.into(), None, now, &mut host);
    assert_eq!(host.open[&flow], upstreams[1], "a refused upstream gives way to the next");
    assert!(gateway.pop_frame().is_none(), "the guest is not reset meanwhile");

    let later = now + Duration::from_secs(3);
    assert!(gateway.next_deadline().is_some_and(|deadline| deadline <= later));
    gateway.on_deadline(later, &mut host);
    assert_eq!(host.open[&flow], upstreams[2], "a silent upstream gives way too");
    assert_eq!(gateway.next_deadline(), None, "the last candidate gets the kernel's own timeout");

    gateway.on_tcp_connected(flow, later, &mut host);
    let (control, _, ack, _, _) = tcp_of(&gateway.pop_frame().expect("SYN-ACK"));
    assert_eq!((control, ack), (TcpControl::Syn, Some(2)));
}

#[test]
fn a_hostfwd_client_for_a_silent_guest_waits_for_its_arp_reply() {
    use smoltcp::wire::TcpControl;
    let (mut gateway, mut host, now) =
        gateway_forwarding(ForwardProtocol::Tcp, "127.0.0.1:2222", SocketAddrV4::new(GUEST_IP, 22));
    let flow = gateway.allocate_flow();
    gateway.on_inbound_tcp(0, flow, now, &mut host);
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
    gateway.receive(&frame, Offload::NONE, now, &mut host);
    let (control, _, _, _, _) = tcp_of(&gateway.pop_frame().expect("the SYN, once the guest is known"));
    assert_eq!(control, TcpControl::Syn);

    // A guest that never answers: the client is closed after the ARP timeout.
    let other = gateway.allocate_flow();
    let (mut gateway, mut host, now) = gateway_forwarding(
        ForwardProtocol::Tcp,
        "127.0.0.1:2223",
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 99), 22),
    );
    gateway.on_inbound_tcp(0, other, now, &mut host);
    let later = now + Duration::from_secs(4);
    assert!(gateway.next_deadline().is_some_and(|deadline| deadline <= later));
    gateway.on_deadline(later, &mut host);
    assert_eq!(host.closed, vec![(other, true)]);
}

#[test]
fn host_data_waits_in_the_socket_while_the_guests_port_is_full() {
    let (mut gateway, mut host, now) = gateway_with(GatewayConfig::default());
    let dst = SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 8080);
    let (flow, _) = established(&mut gateway, &mut host, now, dst);
    host.tcp_incoming = vec![3u8; 10_000];
    // Room for two full segments (MSS 1460) and no more.
    host.guest_room = Some(EgressRoom { frames: 2, bytes: 2 * (1460 + 54), takes_offloads: false });
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
    host.tcp_incoming = vec![5u8; 4 * 1460];
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
        gateway.receive(&ack_nothing, Offload::NONE, now, &mut host);
        let extra = gateway.pop_frame().map(|f| tcp_of(&f));
        assert!(extra.is_none(), "no resend before the third duplicate: {extra:?}");
    }
    gateway.receive(&ack_nothing, Offload::NONE, now, &mut host);
    let (_, seq, _, _, payload) = tcp_of(&gateway.pop_frame().expect("the lost data again"));
    assert_eq!((seq, payload.len()), (isn + 1, 1460), "from the first unacknowledged byte");
}
