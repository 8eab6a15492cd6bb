//! ICMPv6 messages the gateway reads and writes: an echo request to one of its own
//! addresses is answered here, a guest's echo request to anywhere else is taken apart
//! for a ping socket and the reply put back together for the guest, and a guest's
//! packet the gateway refuses, or whose hop limit runs out at the gateway, is answered
//! with the error that says so. Neighbour discovery, which is ICMPv6 too, is `ndp.rs`'s. This file knows
//! message layouts, not flows or sockets.

use std::net::Ipv6Addr;

use smoltcp::wire::{Icmpv6Message, Icmpv6Packet, IpProtocol, Ipv6Packet, Ipv6Repr};
use vnet_wire::MacAddress;

use crate::config::GatewayConfig;
use crate::counters::GatewayDropReason;
use crate::guest::EchoRequest;
use crate::packet::{self, BuiltFrame};

/// The hop limit of the ICMPv6 messages the gateway sends, but for neighbour discovery.
const HOP_LIMIT: u8 = 64;
/// Most bytes of an error message: it must fit the IPv6 minimum MTU (RFC 4443).
const MAX_ERROR_LEN: usize = 1280 - 40;
/// Destination unreachable, code "communication with destination administratively
/// prohibited".
const DST_UNREACHABLE: u8 = 1;
const ADMINISTRATIVELY_PROHIBITED: u8 = 1;
/// Packet Too Big, whose four bytes after the code carry the MTU.
const PACKET_TOO_BIG: u8 = 2;
/// Time exceeded, code "hop limit exceeded in transit".
const TIME_EXCEEDED: u8 = 3;
const HOP_LIMIT_EXCEEDED: u8 = 0;

/// The reply to `request`, an echo request from `guest` at `guest_mac` to `ours`, one of
/// the gateway's addresses: the same identifier, sequence number and data back.
pub fn echo_reply(
    config: &GatewayConfig,
    request: &Icmpv6Packet<&[u8]>,
    guest: Ipv6Addr,
    guest_mac: MacAddress,
    ours: Ipv6Addr,
) -> Result<BuiltFrame, GatewayDropReason> {
    if request.msg_type() != Icmpv6Message::EchoRequest || request.msg_code() != 0 {
        return Err(GatewayDropReason::Unsupported);
    }
    let mut reply = request.as_ref().to_vec();
    reply[0] = Icmpv6Message::EchoReply.into();
    Ok(packet::icmpv6(config.mac(), guest_mac, ours, guest, HOP_LIMIT, &reply))
}

/// A guest's packet that an ICMPv6 error is about: its addresses, hop limit and
/// transport, of which the error quotes as much as fits.
#[derive(Debug, Clone, Copy)]
pub struct Offending<'a> {
    pub guest: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub hop_limit: u8,
    pub protocol: IpProtocol,
    pub transport: &'a [u8],
}

/// The gateway's refusal of `packet`: destination unreachable, administratively
/// prohibited.
pub fn prohibited(config: &GatewayConfig, guest_mac: MacAddress, packet: Offending<'_>) -> BuiltFrame {
    error(config, guest_mac, DST_UNREACHABLE, ADMINISTRATIVELY_PROHIBITED, packet)
}

/// Time exceeded: `packet`'s hop limit ran out at the gateway, the first router on its
/// way out.
pub fn time_exceeded(config: &GatewayConfig, guest_mac: MacAddress, packet: Offending<'_>) -> BuiltFrame {
    error(config, guest_mac, TIME_EXCEEDED, HOP_LIMIT_EXCEEDED, packet)
}

/// Packet Too Big: `packet` is larger than the link's `mtu`.
pub fn packet_too_big(
    config: &GatewayConfig,
    guest_mac: MacAddress,
    mtu: u32,
    packet: Offending<'_>,
) -> BuiltFrame {
    let from = if config.contains_ipv6(packet.guest) { config.ipv6_host } else { config.ipv6_link_local() };
    build_error(config, guest_mac, from, [PACKET_TOO_BIG, 0], mtu.to_be_bytes(), packet)
}

/// An ICMPv6 error of `icmp_type` and `code` from the gateway about `packet`.
fn error(
    config: &GatewayConfig,
    guest_mac: MacAddress,
    icmp_type: u8,
    code: u8,
    packet: Offending<'_>,
) -> BuiltFrame {
    let from = if config.contains_ipv6(packet.guest) { config.ipv6_host } else { config.ipv6_link_local() };
    error_from(config, guest_mac, from, icmp_type, code, packet)
}

/// An ICMPv6 error of `icmp_type` and `code` about `packet`, from `from` as the guest
/// sees it (the gateway, a router on the way, or the destination).
pub fn error_from(
    config: &GatewayConfig,
    guest_mac: MacAddress,
    from: Ipv6Addr,
    icmp_type: u8,
    code: u8,
    packet: Offending<'_>,
) -> BuiltFrame {
    build_error(config, guest_mac, from, [icmp_type, code], [0; 4], packet)
}

/// An ICMPv6 error message of `kind` (type and code) with `field` (the four bytes after
/// the checksum: unused, or the MTU of Packet Too Big), quoting `packet`.
fn build_error(
    config: &GatewayConfig,
    guest_mac: MacAddress,
    from: Ipv6Addr,
    kind: [u8; 2],
    field: [u8; 4],
    packet: Offending<'_>,
) -> BuiltFrame {
    let quoted_transport = &packet.transport[..packet.transport.len().min(MAX_ERROR_LEN - 8 - 40)];
    let mut message = vec![kind[0], kind[1], 0, 0];
    message.extend_from_slice(&field);
    let header = Ipv6Repr {
        src_addr: packet.guest,
        dst_addr: packet.dst,
        next_header: packet.protocol,
        payload_len: packet.transport.len(),
        hop_limit: packet.hop_limit,
    };
    let at = message.len();
    message.resize(at + header.buffer_len(), 0);
    header.emit(&mut Ipv6Packet::new_unchecked(&mut message[at..]));
    message.extend_from_slice(quoted_transport);
    packet::icmpv6(config.mac(), guest_mac, from, packet.guest, HOP_LIMIT, &message)
}

/// The identifier, sequence number and data of `icmp`, a guest's echo request.
pub fn parse_echo_request(icmp: &Icmpv6Packet<&[u8]>) -> Result<EchoRequest, GatewayDropReason> {
    if icmp.msg_type() != Icmpv6Message::EchoRequest || icmp.msg_code() != 0 {
        return Err(GatewayDropReason::Unsupported);
    }
    let bytes = icmp.as_ref();
    let ident = u16::from_be_bytes([bytes[4], bytes[5]]);
    let seq_no = u16::from_be_bytes([bytes[6], bytes[7]]);
    Ok(EchoRequest { ident, seq_no, data: bytes[8..].to_vec() })
}

/// The identifier of `bytes`, an ICMPv6 message from a ping socket, if it is an echo
/// reply.
pub fn echo_reply_ident(bytes: &[u8]) -> Option<u16> {
    let icmp = Icmpv6Packet::new_checked(bytes).ok()?;
    (icmp.msg_type() == Icmpv6Message::EchoReply).then(|| u16::from_be_bytes([bytes[4], bytes[5]]))
}

/// The echo reply `bytes` (from a ping socket) relayed to `guest` at `guest_mac` from
/// `from`, the address it pinged, with the guest's identifier `ident` back in place.
pub fn relayed_echo_reply(
    config: &GatewayConfig,
    bytes: &[u8],
    ident: u16,
    guest_mac: MacAddress,
    from: Ipv6Addr,
    guest: Ipv6Addr,
) -> BuiltFrame {
    let mut reply = bytes.to_vec();
    reply[4..6].copy_from_slice(&ident.to_be_bytes());
    packet::icmpv6(config.mac(), guest_mac, from, guest, HOP_LIMIT, &reply)
}
