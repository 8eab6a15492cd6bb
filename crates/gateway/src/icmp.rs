//! ICMP: echo requests to the gateway's own addresses are answered here, and port
//! unreachable messages are built for guests whose UDP flows the host refused.
//!
//! Echo to other destinations (through ping sockets) is not served yet and is counted
//! as unsupported. This file knows nothing of sockets.

use std::net::Ipv4Addr;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{Icmpv4DstUnreachable, Icmpv4Packet, Icmpv4Repr, IpProtocol, Ipv4Repr};
use vnet_wire::MacAddress;

use crate::udp::Unreachable;
use crate::{packet, DropReason, GatewayConfig, GuestPacket};

/// Answers an echo request to the host or DNS address.
pub fn handle(guest: GuestPacket, bytes: &[u8], config: &GatewayConfig) -> Result<Vec<u8>, DropReason> {
    let icmp = Icmpv4Packet::new_checked(bytes).map_err(|_| DropReason::Malformed)?;
    if !icmp.verify_checksum() {
        return Err(DropReason::BadChecksum);
    }
    let repr =
        Icmpv4Repr::parse(&icmp, &ChecksumCapabilities::default()).map_err(|_| DropReason::Unsupported)?;
    let Icmpv4Repr::EchoRequest { ident, seq_no, data } = repr else {
        return Err(DropReason::Unsupported);
    };
    if guest.dst != config.host && guest.dst != config.dns {
        return Err(DropReason::Unsupported);
    }
    let reply = Icmpv4Repr::EchoReply { ident, seq_no, data };
    Ok(packet::icmp(config.mac(), guest.mac, guest.dst, guest.src, &reply))
}

/// A port unreachable message telling a guest that its datagram to `unreachable.dst`
/// was refused.
pub fn port_unreachable(config: &GatewayConfig, guest_mac: MacAddress, unreachable: &Unreachable) -> Vec<u8> {
    let header = Ipv4Repr {
        src_addr: *unreachable.guest.ip(),
        dst_addr: *unreachable.dst.ip(),
        next_header: IpProtocol::Udp,
        payload_len: 8,
        hop_limit: 64,
    };
    let mut udp_header = [0u8; 8];
    udp_header[..2].copy_from_slice(&unreachable.guest.port().to_be_bytes());
    udp_header[2..4].copy_from_slice(&unreachable.dst.port().to_be_bytes());
    udp_header[4..6].copy_from_slice(&8u16.to_be_bytes());
    let message = Icmpv4Repr::DstUnreachable {
        reason: Icmpv4DstUnreachable::PortUnreachable,
        header,
        data: &udp_header,
    };
    let from: Ipv4Addr = *unreachable.dst.ip();
    packet::icmp(config.mac(), guest_mac, from, *unreachable.guest.ip(), &message)
}
