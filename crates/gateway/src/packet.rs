//! Building the frames the gateway sends: Ethernet + IPv4 or IPv6 + UDP/TCP, Ethernet +
//! IPv4 + ICMP, Ethernet + IPv6 + ICMPv6, and ARP, with
//! checksums filled in (or, for TCP toward a port that offloads it, left partial), in
//! pooled frame buffers. Built on `smoltcp::wire`'s representations. A packet too large
//! for one IP packet is refused as [`FrameError::Oversize`].
//!
//! This module knows byte layouts only, not what the gateway decides to say.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv4Packet,
    Icmpv4Repr, Icmpv6Packet, IpAddress, IpProtocol, Ipv4Packet, Ipv4Repr, Ipv6Packet, Ipv6Repr, TcpPacket,
    TcpRepr, UdpPacket, ETHERNET_HEADER_LEN,
};
use vnet_wire::offload::PartialChecksum;
use vnet_wire::{Frame, FrameBuffer, FrameError, MacAddress, Offload};

/// A frame the gateway built, or why it could not be one frame.
pub type BuiltFrame = Result<Frame, FrameError>;

/// Time to live (hop limit) of the packets the gateway originates, but for neighbour
/// discovery's.
const HOP_LIMIT: u8 = 64;
const IPV4_HEADER_LEN: usize = 20;
const IPV6_HEADER_LEN: usize = 40;
/// A TCP header without options.
pub const TCP_HEADER_LEN: usize = 20;

/// The length of the IP header (no options or extension headers) of a packet of `ip`'s
/// family.
pub fn ip_header_len(ip: IpAddr) -> usize {
    if ip.is_ipv4() {
        IPV4_HEADER_LEN
    } else {
        IPV6_HEADER_LEN
    }
}
const UDP_HEADER_LEN: usize = 8;

/// A frame in a pooled buffer: `headers_len` zero bytes (a pooled buffer holds what its
/// last frame left there), then `data`, with the headers written over the zeros by
/// `write_headers`.
fn build(headers_len: usize, data: &[u8], write_headers: impl FnOnce(&mut [u8])) -> BuiltFrame {
    let mut buffer = FrameBuffer::for_len(headers_len + data.len());
    if headers_len + data.len() > buffer.spare_len() {
        return Err(FrameError::Oversize(headers_len + data.len()));
    }
    buffer.spare_mut()[..headers_len].fill(0);
    buffer.commit(headers_len);
    buffer.extend_from_slice(data);
    write_headers(buffer.data_mut());
    buffer.freeze(Offload::NONE)
}

fn ethernet_header(frame: &mut [u8], src: MacAddress, dst: MacAddress, ethertype: EthernetProtocol) {
    EthernetRepr { src_addr: src, dst_addr: dst, ethertype }.emit(&mut EthernetFrame::new_unchecked(frame));
}

/// The source and destination of an IP packet, of one family. A pair of mixed families
/// is carried as IPv6, the IPv4 address mapped into it, as dual-stack sockets do.
#[derive(Clone, Copy)]
enum IpPair {
    V4 { src: Ipv4Addr, dst: Ipv4Addr },
    V6 { src: Ipv6Addr, dst: Ipv6Addr },
}

impl IpPair {
    fn new(src: IpAddr, dst: IpAddr) -> Self {
        let v6 = |ip: IpAddr| match ip {
            IpAddr::V4(ip) => ip.to_ipv6_mapped(),
            IpAddr::V6(ip) => ip,
        };
        match (src, dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => IpPair::V4 { src, dst },
            _ => IpPair::V6 { src: v6(src), dst: v6(dst) },
        }
    }

    /// The length of the IP header (no extension headers).
    fn header_len(self) -> usize {
        match self {
            IpPair::V4 { .. } => IPV4_HEADER_LEN,
            IpPair::V6 { .. } => IPV6_HEADER_LEN,
        }
    }

    /// The largest payload one packet of this family carries.
    fn max_payload(self) -> usize {
        match self {
            IpPair::V4 { .. } => usize::from(u16::MAX) - IPV4_HEADER_LEN,
            IpPair::V6 { .. } => usize::from(u16::MAX),
        }
    }

    fn src(self) -> IpAddress {
        match self {
            IpPair::V4 { src, .. } => src.into(),
            IpPair::V6 { src, .. } => src.into(),
        }
    }

    fn dst(self) -> IpAddress {
        match self {
            IpPair::V4 { dst, .. } => dst.into(),
            IpPair::V6 { dst, .. } => dst.into(),
        }
    }

    /// The folded (not complemented) one's-complement sum of the pseudo-header of a
    /// `length`-byte `protocol` payload.
    fn pseudo_header_sum(self, protocol: IpProtocol, length: usize) -> u16 {
        let mut sum: u32 = 0;
        let mut add = |octets: &[u8]| {
            for pair in octets.chunks_exact(2) {
                sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
            }
        };
        match self {
            IpPair::V4 { src, dst } => {
                add(&src.octets());
                add(&dst.octets());
            }
            IpPair::V6 { src, dst } => {
                add(&src.octets());
                add(&dst.octets());
            }
        }
        sum += u32::from(u8::from(protocol)) + length as u32;
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }
}

/// Who an IP frame is from and to, and what it carries.
#[derive(Clone, Copy)]
struct IpAddressing {
    src_mac: MacAddress,
    dst_mac: MacAddress,
    ips: IpPair,
    protocol: IpProtocol,
    hop_limit: u8,
}

/// Writes the Ethernet and IP headers of `frame`, whose IP payload (the protocol header
/// and data) is everything after them.
fn ip_headers(frame: &mut [u8], to: IpAddressing) {
    let payload_len = frame.len() - ETHERNET_HEADER_LEN - to.ips.header_len();
    ip_headers_before(frame, payload_len, to);
}

/// Writes the Ethernet and IP headers at the start of `frame`, for an IP payload of
/// `payload_len` bytes however much of it `frame` holds.
fn ip_headers_before(frame: &mut [u8], payload_len: usize, to: IpAddressing) {
    let packet = &mut frame[ETHERNET_HEADER_LEN..];
    let ethertype = match to.ips {
        IpPair::V4 { src, dst } => {
            let repr = Ipv4Repr {
                src_addr: src,
                dst_addr: dst,
                next_header: to.protocol,
                payload_len,
                hop_limit: to.hop_limit,
            };
            repr.emit(&mut Ipv4Packet::new_unchecked(packet), &ChecksumCapabilities::default());
            EthernetProtocol::Ipv4
        }
        IpPair::V6 { src, dst } => {
            let repr = Ipv6Repr {
                src_addr: src,
                dst_addr: dst,
                next_header: to.protocol,
                payload_len,
                hop_limit: to.hop_limit,
            };
            repr.emit(&mut Ipv6Packet::new_unchecked(packet));
            EthernetProtocol::Ipv6
        }
    };
    ethernet_header(frame, to.src_mac, to.dst_mac, ethertype);
}

/// An IP frame whose payload is `header_len` bytes of the caller's protocol header,
/// written by `write_header` (given the IP payload), followed by `data`. The data is
/// copied once, straight into a pooled buffer.
fn ip_with_data(
    to: IpAddressing,
    header_len: usize,
    data: &[u8],
    write_header: impl FnOnce(&mut [u8]),
) -> BuiltFrame {
    let ip_header_len = to.ips.header_len();
    if header_len + data.len() > to.ips.max_payload() {
        return Err(FrameError::Oversize(ETHERNET_HEADER_LEN + ip_header_len + header_len + data.len()));
    }
    let headers_len = ETHERNET_HEADER_LEN + ip_header_len + header_len;
    build(headers_len, data, |frame| {
        ip_headers(frame, to);
        write_header(&mut frame[ETHERNET_HEADER_LEN + ip_header_len..]);
    })
}

/// A UDP datagram from `src` to `dst` carrying `payload`.
pub fn udp(
    src_mac: MacAddress,
    dst_mac: MacAddress,
    src: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
) -> BuiltFrame {
    udp_around(FrameBuffer::copy_of(payload), src_mac, dst_mac, src, dst)
}

/// A UDP datagram from `src` to `dst` around `payload`: a pooled buffer whose data is the
/// datagram's payload, already in place (received there from a host socket), with the
/// headers written into its headroom, so the payload is never copied.
pub fn udp_around(
    mut payload: FrameBuffer,
    src_mac: MacAddress,
    dst_mac: MacAddress,
    src: SocketAddr,
    dst: SocketAddr,
) -> BuiltFrame {
    let ips = IpPair::new(src.ip(), dst.ip());
    let udp_len = UDP_HEADER_LEN + payload.len();
    let headers_len = ETHERNET_HEADER_LEN + ips.header_len() + UDP_HEADER_LEN;
    if udp_len > ips.max_payload() || headers_len > payload.headroom() {
        return Err(FrameError::Oversize(ETHERNET_HEADER_LEN + ips.header_len() + udp_len));
    }
    payload.prepend(headers_len).fill(0);
    let frame = payload.data_mut();
    ip_headers(
        frame,
        IpAddressing { src_mac, dst_mac, ips, protocol: IpProtocol::Udp, hop_limit: HOP_LIMIT },
    );
    let mut packet = UdpPacket::new_unchecked(&mut frame[ETHERNET_HEADER_LEN + ips.header_len()..]);
    packet.set_src_port(src.port());
    packet.set_dst_port(dst.port());
    packet.set_len(udp_len as u16);
    packet.fill_checksum(&ips.src(), &ips.dst());
    payload.freeze(Offload::NONE)
}

/// A TCP segment from `src` to `dst`, its payload copied from `repr`.
pub fn tcp(
    src_mac: MacAddress,
    dst_mac: MacAddress,
    src: SocketAddr,
    dst: SocketAddr,
    repr: &TcpRepr<'_>,
) -> BuiltFrame {
    let header = TcpRepr { payload: &[], ..*repr };
    tcp_around(FrameBuffer::copy_of(repr.payload), src_mac, dst_mac, src, dst, &header, false)
}

/// A TCP segment from `src` to `dst` around `payload`: a pooled buffer whose data is the
/// segment's payload, already in place (peeked there from a host socket), with headroom
/// in front. The headers (from `header`, whose own payload is ignored) are written into
/// that headroom, so the payload is never copied. With `partial`, the checksum is left
/// as the pseudo-header sum for the port to complete (at [`tcp_partial_checksum`]); else
/// it is computed.
pub fn tcp_around(
    mut payload: FrameBuffer,
    src_mac: MacAddress,
    dst_mac: MacAddress,
    src: SocketAddr,
    dst: SocketAddr,
    header: &TcpRepr<'_>,
    partial: bool,
) -> BuiltFrame {
    let ips = IpPair::new(src.ip(), dst.ip());
    let header = TcpRepr { payload: &[], ..*header };
    let segment_len = header.header_len() + payload.len();
    let ip_header_len = ips.header_len();
    let headers_len = ETHERNET_HEADER_LEN + ip_header_len + header.header_len();
    if segment_len > ips.max_payload() || headers_len > payload.headroom() {
        return Err(FrameError::Oversize(ETHERNET_HEADER_LEN + ip_header_len + segment_len));
    }
    payload.prepend(headers_len).fill(0);
    let to = IpAddressing { src_mac, dst_mac, ips, protocol: IpProtocol::Tcp, hop_limit: HOP_LIMIT };
    tcp_headers(payload.data_mut(), segment_len, to, &header, partial);
    payload.freeze(Offload::NONE)
}

/// Writes the Ethernet, IP and TCP headers of a segment of `segment_len` bytes (TCP
/// header and payload) at the start of `frame`. The checksum is left as the
/// pseudo-header sum with `partial`; else it is computed over the payload, which must
/// then follow in `frame`.
fn tcp_headers(frame: &mut [u8], segment_len: usize, to: IpAddressing, header: &TcpRepr<'_>, partial: bool) {
    ip_headers_before(frame, segment_len, to);
    let ips = to.ips;
    let packet = &mut TcpPacket::new_unchecked(&mut frame[ETHERNET_HEADER_LEN + ips.header_len()..]);
    let checksums = if partial { ChecksumCapabilities::ignored() } else { ChecksumCapabilities::default() };
    header.emit(packet, &ips.src(), &ips.dst(), &checksums);
    if partial {
        packet.set_checksum(ips.pseudo_header_sum(IpProtocol::Tcp, segment_len));
    }
}

/// The Ethernet, IP and TCP headers of a segment whose `payload_len` bytes of payload
/// lie elsewhere (in a guest's receive buffers), in a pooled buffer; the checksum is
/// left partial, as [`tcp_around`] leaves it.
pub fn tcp_headers_before(
    payload_len: usize,
    src_mac: MacAddress,
    dst_mac: MacAddress,
    src: SocketAddr,
    dst: SocketAddr,
    header: &TcpRepr<'_>,
) -> Result<FrameBuffer, FrameError> {
    let ips = IpPair::new(src.ip(), dst.ip());
    let header = TcpRepr { payload: &[], ..*header };
    let segment_len = header.header_len() + payload_len;
    let ip_header_len = ips.header_len();
    let headers_len = ETHERNET_HEADER_LEN + ip_header_len + header.header_len();
    if segment_len > ips.max_payload() {
        return Err(FrameError::Oversize(ETHERNET_HEADER_LEN + ip_header_len + segment_len));
    }
    let mut buffer = FrameBuffer::small();
    buffer.spare_mut()[..headers_len].fill(0);
    buffer.commit(headers_len);
    let to = IpAddressing { src_mac, dst_mac, ips, protocol: IpProtocol::Tcp, hop_limit: HOP_LIMIT };
    tcp_headers(buffer.data_mut(), segment_len, to, &header, true);
    Ok(buffer)
}

/// Where a TCP checksum left partial by [`tcp_around`] starts and lies, in a segment to
/// or from `ip`'s family.
pub fn tcp_partial_checksum(ip: IpAddr) -> PartialChecksum {
    PartialChecksum { start: (ETHERNET_HEADER_LEN + ip_header_len(ip)) as u16, offset: 16 }
}

/// An ICMP message from `src` to `dst`.
pub fn icmp(
    src_mac: MacAddress,
    dst_mac: MacAddress,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    message: &Icmpv4Repr<'_>,
) -> BuiltFrame {
    let len = message.buffer_len();
    let to = IpAddressing {
        src_mac,
        dst_mac,
        ips: IpPair::V4 { src, dst },
        protocol: IpProtocol::Icmp,
        hop_limit: HOP_LIMIT,
    };
    ip_with_data(to, len, &[], |icmp| {
        message.emit(&mut Icmpv4Packet::new_unchecked(icmp), &ChecksumCapabilities::default());
    })
}

/// An ICMPv6 message from `src` to `dst` sent with `hop_limit` (255 for neighbour
/// discovery, which receivers check): `message` is its bytes, whose checksum is filled
/// in here.
pub fn icmpv6(
    src_mac: MacAddress,
    dst_mac: MacAddress,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop_limit: u8,
    message: &[u8],
) -> BuiltFrame {
    let to = IpAddressing {
        src_mac,
        dst_mac,
        ips: IpPair::V6 { src, dst },
        protocol: IpProtocol::Icmpv6,
        hop_limit,
    };
    ip_with_data(to, 0, message, |icmp| {
        let mut packet = Icmpv6Packet::new_unchecked(icmp);
        packet.set_checksum(0);
        packet.fill_checksum(&src, &dst);
    })
}

/// An ARP message from `mac` to `dst_mac`.
fn arp(mac: MacAddress, dst_mac: MacAddress, repr: &ArpRepr) -> BuiltFrame {
    build(ETHERNET_HEADER_LEN + repr.buffer_len(), &[], |frame| {
        ethernet_header(frame, mac, dst_mac, EthernetProtocol::Arp);
        repr.emit(&mut ArpPacket::new_unchecked(&mut frame[ETHERNET_HEADER_LEN..]));
    })
}

/// An ARP reply telling `requester` that `ip` is at `mac`.
pub fn arp_reply(
    mac: MacAddress,
    ip: Ipv4Addr,
    requester_mac: MacAddress,
    requester_ip: Ipv4Addr,
) -> BuiltFrame {
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: mac,
        source_protocol_addr: ip,
        target_hardware_addr: requester_mac,
        target_protocol_addr: requester_ip,
    };
    arp(mac, requester_mac, &repr)
}

/// A broadcast ARP request from `mac` at `ip` asking where `target` is.
pub fn arp_request(mac: MacAddress, ip: Ipv4Addr, target: Ipv4Addr) -> BuiltFrame {
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: mac,
        source_protocol_addr: ip,
        target_hardware_addr: MacAddress([0; 6]),
        target_protocol_addr: target,
    };
    arp(mac, MacAddress::BROADCAST, &repr)
}
