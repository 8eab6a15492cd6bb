//! The gateway driven frame by frame, with a fake host that records what it was asked,
//! keyed by flow; the tests themselves are split by protocol, one file each.

mod arp;
mod budget;
mod dhcp;
mod dhcpv6;
mod dispatch;
mod dns;
mod faults;
mod flows;
mod icmp;
mod ipv6;
mod ndp;
mod tcp;
mod udp;

use std::collections::HashMap;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, DhcpMessageType, DhcpOption, DhcpPacket, DhcpRepr, EthernetFrame,
    Icmpv4Packet, Icmpv4Repr, Ipv4Packet, UdpPacket,
};

use vnet_wire::{FrameBuffer, MacAddress, Offload};

use super::*;

use crate::packet;

const GUEST_MAC: MacAddress = MacAddress([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
const GUEST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
/// The switch port the tests' guests send from.
const GUEST_PORT: u32 = 1;

/// `bytes` as a frame that entered the switch by [`GUEST_PORT`].
fn from_guest(bytes: &[u8]) -> vnet_wire::Frame {
    from_port(GUEST_PORT, bytes)
}

/// Per-guest limits high enough that only `max-flows` binds.
fn roomy_limits() -> GuestLimits {
    let roomy = Some(1 << 20);
    GuestLimits { tcp: roomy, udp: roomy, icmp: roomy, dns: roomy, half_open: roomy, port_flows: roomy }
}

/// `bytes` as a frame that entered the switch by `port`.
fn from_port(port: u32, bytes: &[u8]) -> vnet_wire::Frame {
    vnet_wire::Frame::copy_from_slice(bytes, Offload::NONE)
        .expect("a test frame has a frame's length")
        .with_ingress_port(port)
}

/// A host that records opens and sends, and refuses what it is told to (`send_error`
/// makes every datagram send fail with that OS error). TCP sockets take at most
/// `tcp_accept` bytes per write; each holds its own `tcp_incoming` for peeking and counts
/// its own `tcp_consumed`, so a flow mixed up with another is caught.
#[derive(Default)]
struct FakeHost {
    open: HashMap<FlowId, SocketAddr>,
    sent: Vec<(FlowId, Vec<u8>)>,
    refuse_open: Vec<SocketAddr>,
    send_error: Option<i32>,
    tcp_accept: usize,
    tcp_incoming: HashMap<FlowId, Vec<u8>>,
    /// Flows whose peer closed: a peek past their data finds the end.
    tcp_eof: std::collections::HashSet<FlowId>,
    tcp_consumed: HashMap<FlowId, usize>,
    closed: Vec<(FlowId, bool)>,
    replies: Vec<(SocketAddr, Vec<u8>)>,
    ttls: Vec<(FlowId, Option<u8>)>,
    /// Room toward guests; unlimited unless a test sets it.
    guest_room: Option<EgressRoom>,
    /// Switch ports that went away.
    gone_ports: Vec<u32>,
    /// An OS error every TCP connect, write or peek fails with, where a test sets one.
    tcp_connect_error: Option<i32>,
    tcp_send_error: Option<i32>,
    tcp_peek_error: Option<i32>,
}

impl HostSockets for FakeHost {
    fn udp_open(&mut self, flow: FlowId, remote: SocketAddr) -> io::Result<()> {
        if self.refuse_open.contains(&remote) {
            return Err(io::ErrorKind::ConnectionRefused.into());
        }
        self.open.insert(flow, remote);
        Ok(())
    }
    fn icmp_open(&mut self, flow: FlowId, remote: IpAddr) -> io::Result<IcmpSocketKind> {
        self.udp_open(flow, SocketAddr::new(remote, 0)).map(|()| IcmpSocketKind::Ping)
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
        if let Some(errno) = self.tcp_connect_error {
            return Err(io::Error::from_raw_os_error(errno));
        }
        self.udp_open(flow, remote)?;
        self.ttls.push((flow, ttl));
        Ok(())
    }
    fn tcp_send(&mut self, flow: FlowId, data: &[u8]) -> io::Result<usize> {
        if let Some(errno) = self.tcp_send_error {
            return Err(io::Error::from_raw_os_error(errno));
        }
        let taken = data.len().min(self.tcp_accept);
        self.sent.push((flow, data[..taken].to_vec()));
        Ok(taken)
    }
    fn tcp_peek(&mut self, flow: FlowId, offset: usize, buffers: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        if let Some(errno) = self.tcp_peek_error {
            return Err(io::Error::from_raw_os_error(errno));
        }
        let incoming = self.tcp_incoming.get(&flow).map_or(&[][..], Vec::as_slice);
        let mut available = incoming.get(offset..).unwrap_or(&[]);
        if available.is_empty() && self.tcp_eof.contains(&flow) {
            return Ok(0);
        }
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
    fn tcp_consume(&mut self, flow: FlowId, len: usize) -> io::Result<()> {
        let incoming = self.tcp_incoming.get_mut(&flow).ok_or(io::ErrorKind::NotFound)?;
        if len > incoming.len() {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        incoming.drain(..len);
        *self.tcp_consumed.entry(flow).or_default() += len;
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
    fn udp_forward_reply(
        &mut self,
        _forward: ForwardId,
        client: SocketAddr,
        payload: &[u8],
    ) -> io::Result<()> {
        self.replies.push((client, payload.to_vec()));
        Ok(())
    }
}

impl GuestEgress for FakeHost {
    fn guest_room(&mut self, _guest: MacAddress) -> EgressRoom {
        self.guest_room.unwrap_or(EgressRoom::UNLIMITED)
    }

    fn port_exists(&self, port: u32) -> bool {
        !self.gone_ports.contains(&port)
    }
}

fn dhcp_message(
    message_type: DhcpMessageType,
    mac: MacAddress,
    requested: Option<Ipv4Addr>,
    rapid: bool,
) -> Vec<u8> {
    dhcp_message_with_ciaddr(message_type, mac, requested, rapid, Ipv4Addr::UNSPECIFIED)
}

/// A DHCP message whose client address field (ciaddr, which a RELEASE names its address
/// in) is `client_ip`.
fn dhcp_message_with_ciaddr(
    message_type: DhcpMessageType,
    mac: MacAddress,
    requested: Option<Ipv4Addr>,
    rapid: bool,
    client_ip: Ipv4Addr,
) -> Vec<u8> {
    let rapid_option = [DhcpOption { kind: 80, data: &[] }];
    let options: &[DhcpOption<'_>] = if rapid { &rapid_option } else { &[] };
    dhcp_message_with_options(message_type, mac, requested, client_ip, options)
}

/// A DHCP message carrying `options` besides the usual fields.
pub(crate) fn dhcp_message_with_options(
    message_type: DhcpMessageType,
    mac: MacAddress,
    requested: Option<Ipv4Addr>,
    client_ip: Ipv4Addr,
    options: &[DhcpOption<'_>],
) -> Vec<u8> {
    let repr = DhcpRepr {
        message_type,
        transaction_id: 0x1234,
        secs: 0,
        client_hardware_address: mac,
        client_ip,
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
        additional_options: options,
    };
    let mut payload = vec![0u8; repr.buffer_len()];
    repr.emit(&mut DhcpPacket::new_unchecked(&mut payload)).unwrap();
    packet::udp(
        mac,
        MacAddress::BROADCAST,
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, 68)),
        SocketAddr::from((Ipv4Addr::BROADCAST, 67)),
        &payload,
    )
    .unwrap()
    .to_vec()
}

/// The UDP payload of a frame the gateway sent, and its addresses.
pub(crate) fn udp_of(frame: &[u8]) -> (SocketAddrV4, SocketAddrV4, Vec<u8>) {
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

fn gateway_with(config: GatewayConfig) -> (Gateway, FakeHost, Instant) {
    config.validate().unwrap();
    (Gateway::new(config), FakeHost::default(), Instant::now())
}

fn lease(gateway: &mut Gateway, host: &mut FakeHost, mac: MacAddress, now: Instant) -> Ipv4Addr {
    gateway.receive(&from_guest(&dhcp_message(DhcpMessageType::Discover, mac, None, false)), now, host);
    let (kind, offered, _, _) = dhcp_reply(gateway);
    assert_eq!(kind, DhcpMessageType::Offer);
    gateway.receive(
        &from_guest(&dhcp_message(DhcpMessageType::Request, mac, Some(offered), false)),
        now,
        host,
    );
    let (kind, acked, _, _) = dhcp_reply(gateway);
    assert_eq!(kind, DhcpMessageType::Ack);
    assert_eq!(acked, offered);
    acked
}

fn guest_udp(dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    packet::udp(
        GUEST_MAC,
        MacAddress([0x52, 0x55, 10, 0, 2, 2]),
        SocketAddr::from((GUEST_IP, 40000)),
        dst.into(),
        payload,
    )
    .unwrap()
    .to_vec()
}

fn dns_query(id: u16) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    q.extend_from_slice(b"\x04vnet\x04test\x00\x00\x01\x00\x01");
    q
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
    guest_segment(src_port, dst, control, seq, ack, 1000, payload)
}

/// A segment from the guest's port `src_port` to `dst` that advertises `window`.
fn guest_segment(
    src_port: u16,
    dst: SocketAddrV4,
    control: smoltcp::wire::TcpControl,
    seq: u32,
    ack: Option<u32>,
    window: u16,
    payload: &[u8],
) -> Vec<u8> {
    use smoltcp::wire::{TcpRepr, TcpSeqNumber};
    let repr = TcpRepr {
        src_port,
        dst_port: dst.port(),
        control,
        seq_number: TcpSeqNumber(seq as i32),
        ack_number: ack.map(|a| TcpSeqNumber(a as i32)),
        window_len: window,
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
        SocketAddr::from((GUEST_IP, src_port)),
        dst.into(),
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

/// A guest TCP connection to `dst` through the handshake; returns its flow and the
/// gateway's initial sequence number.
fn established(gateway: &mut Gateway, host: &mut FakeHost, now: Instant, dst: SocketAddrV4) -> (FlowId, u32) {
    use smoltcp::wire::TcpControl;
    gateway.receive(&from_guest(&guest_tcp(dst, TcpControl::Syn, 100, None, &[])), now, host);
    let flow = host
        .open
        .iter()
        .find(|(_, remote)| remote.port() == dst.port())
        .map(|(flow, _)| *flow)
        .expect("a host connect");
    gateway.on_tcp_connected(flow, now, host);
    let (_, isn, _, _, _) = tcp_of(&gateway.pop_frame().expect("SYN-ACK"));
    gateway.receive(&from_guest(&guest_tcp(dst, TcpControl::None, 101, Some(isn + 1), &[])), now, host);
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
