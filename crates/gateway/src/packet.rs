//! Building the frames the gateway sends: Ethernet + IPv4 + UDP/TCP/ICMP, and ARP, with
//! checksums filled in (or, for TCP toward a port that offloads it, left partial). Built
//! on `smoltcp::wire`'s representations.
//!
//! This module knows byte layouts only, not what the gateway decides to say.

use std::net::{Ipv4Addr, SocketAddrV4};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv4Packet,
    Icmpv4Repr, IpProtocol, Ipv4Packet, Ipv4Repr, TcpPacket, TcpRepr, UdpPacket, UdpRepr,
    ETHERNET_HEADER_LEN,
};
use vnet_wire::offload::PartialChecksum;
use vnet_wire::MacAddress;

/// Time to live of every IPv4 packet the gateway originates.
const HOP_LIMIT: u8 = 64;
const IPV4_HEADER_LEN: usize = 20;
const UDP_HEADER_LEN: usize = 8;

fn ethernet(src: MacAddress, dst: MacAddress, ethertype: EthernetProtocol, payload_len: usize) -> Vec<u8> {
    let mut frame = vec![0u8; ETHERNET_HEADER_LEN + payload_len];
    EthernetRepr { src_addr: src, dst_addr: dst, ethertype }
        .emit(&mut EthernetFrame::new_unchecked(&mut frame));
    frame
}

fn ipv4(
    src_mac: MacAddress,
    dst_mac: MacAddress,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: IpProtocol,
    payload_len: usize,
) -> Vec<u8> {
    ipv4_with_data(src_mac, dst_mac, src, dst, protocol, payload_len, &[])
}

/// An IPv4 frame whose payload is `header_len` zero bytes, for the caller's protocol
/// header, followed by `data`. The data is copied once and never zero-filled first,
/// which matters for 64 KiB TCP segments.
fn ipv4_with_data(
    src_mac: MacAddress,
    dst_mac: MacAddress,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    protocol: IpProtocol,
    header_len: usize,
    data: &[u8],
) -> Vec<u8> {
    let headers_len = ETHERNET_HEADER_LEN + IPV4_HEADER_LEN + header_len;
    let mut frame = Vec::with_capacity(headers_len + data.len());
    frame.resize(headers_len, 0);
    frame.extend_from_slice(data);
    EthernetRepr { src_addr: src_mac, dst_addr: dst_mac, ethertype: EthernetProtocol::Ipv4 }
        .emit(&mut EthernetFrame::new_unchecked(&mut frame));
    let payload_len = header_len + data.len();
    let repr =
        Ipv4Repr { src_addr: src, dst_addr: dst, next_header: protocol, payload_len, hop_limit: HOP_LIMIT };
    repr.emit(
        &mut Ipv4Packet::new_unchecked(&mut frame[ETHERNET_HEADER_LEN..]),
        &ChecksumCapabilities::default(),
    );
    frame
}

/// A UDP datagram from `src` to `dst` carrying `payload`.
pub fn udp(
    src_mac: MacAddress,
    dst_mac: MacAddress,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload: &[u8],
) -> Vec<u8> {
    let udp_len = UDP_HEADER_LEN + payload.len();
    let mut frame = ipv4(src_mac, dst_mac, *src.ip(), *dst.ip(), IpProtocol::Udp, udp_len);
    let repr = UdpRepr { src_port: src.port(), dst_port: dst.port() };
    let offset = ETHERNET_HEADER_LEN + IPV4_HEADER_LEN;
    repr.emit(
        &mut UdpPacket::new_unchecked(&mut frame[offset..]),
        &(*src.ip()).into(),
        &(*dst.ip()).into(),
        payload.len(),
        |buffer| buffer.copy_from_slice(payload),
        &ChecksumCapabilities::default(),
    );
    frame
}

/// A TCP segment from `src` to `dst`.
pub fn tcp(
    src_mac: MacAddress,
    dst_mac: MacAddress,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    repr: &TcpRepr<'_>,
) -> Vec<u8> {
    tcp_frame(src_mac, dst_mac, src, dst, repr, &ChecksumCapabilities::default())
}

/// A TCP segment from `src` to `dst` whose checksum is left for the port to complete:
/// the checksum field holds the pseudo-header sum, as a NIC offload expects.
pub fn tcp_partial_checksum(
    src_mac: MacAddress,
    dst_mac: MacAddress,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    repr: &TcpRepr<'_>,
) -> Vec<u8> {
    let mut frame = tcp_frame(src_mac, dst_mac, src, dst, repr, &ChecksumCapabilities::ignored());
    let mut tcp = TcpPacket::new_unchecked(&mut frame[ETHERNET_HEADER_LEN + IPV4_HEADER_LEN..]);
    tcp.set_checksum(pseudo_header_sum(*src.ip(), *dst.ip(), IpProtocol::Tcp, repr.buffer_len()));
    frame
}

/// A TCP segment with its checksum computed as `checksums` says.
fn tcp_frame(
    src_mac: MacAddress,
    dst_mac: MacAddress,
    src: SocketAddrV4,
    dst: SocketAddrV4,
    repr: &TcpRepr<'_>,
    checksums: &ChecksumCapabilities,
) -> Vec<u8> {
    let mut frame = ipv4_with_data(
        src_mac,
        dst_mac,
        *src.ip(),
        *dst.ip(),
        IpProtocol::Tcp,
        repr.header_len(),
        repr.payload,
    );
    let tcp = &mut TcpPacket::new_unchecked(&mut frame[ETHERNET_HEADER_LEN + IPV4_HEADER_LEN..]);
    // The payload is in place already: emit only the header (and the checksum over all).
    let header = TcpRepr { payload: &[], ..*repr };
    header.emit(tcp, &(*src.ip()).into(), &(*dst.ip()).into(), checksums);
    frame
}

/// Where a TCP checksum left partial by [`tcp_partial_checksum`] starts and lies.
pub const TCP_PARTIAL_CHECKSUM: PartialChecksum =
    PartialChecksum { start: (ETHERNET_HEADER_LEN + IPV4_HEADER_LEN) as u16, offset: 16 };

/// The folded (not complemented) one's-complement sum of an IPv4 pseudo-header.
fn pseudo_header_sum(src: Ipv4Addr, dst: Ipv4Addr, protocol: IpProtocol, length: usize) -> u16 {
    let mut sum: u32 = 0;
    for pair in [src.octets(), dst.octets()].concat().chunks_exact(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    sum += u32::from(u8::from(protocol)) + length as u32;
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// An ICMP message from `src` to `dst`.
pub fn icmp(
    src_mac: MacAddress,
    dst_mac: MacAddress,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    message: &Icmpv4Repr<'_>,
) -> Vec<u8> {
    let mut frame = ipv4(src_mac, dst_mac, src, dst, IpProtocol::Icmp, message.buffer_len());
    let offset = ETHERNET_HEADER_LEN + IPV4_HEADER_LEN;
    message.emit(&mut Icmpv4Packet::new_unchecked(&mut frame[offset..]), &ChecksumCapabilities::default());
    frame
}

/// An ARP reply telling `requester` that `ip` is at `mac`.
pub fn arp_reply(
    mac: MacAddress,
    ip: Ipv4Addr,
    requester_mac: MacAddress,
    requester_ip: Ipv4Addr,
) -> Vec<u8> {
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: mac,
        source_protocol_addr: ip,
        target_hardware_addr: requester_mac,
        target_protocol_addr: requester_ip,
    };
    let mut frame = ethernet(mac, requester_mac, EthernetProtocol::Arp, repr.buffer_len());
    repr.emit(&mut ArpPacket::new_unchecked(&mut frame[ETHERNET_HEADER_LEN..]));
    frame
}

/// A broadcast ARP request from `mac` at `ip` asking where `target` is.
pub fn arp_request(mac: MacAddress, ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: mac,
        source_protocol_addr: ip,
        target_hardware_addr: MacAddress([0; 6]),
        target_protocol_addr: target,
    };
    let mut frame = ethernet(mac, MacAddress::BROADCAST, EthernetProtocol::Arp, repr.buffer_len());
    repr.emit(&mut ArpPacket::new_unchecked(&mut frame[ETHERNET_HEADER_LEN..]));
    frame
}
