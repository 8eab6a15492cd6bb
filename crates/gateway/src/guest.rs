//! Who a guest is ([`Guest`]), what a frame from it is once its IP header is read
//! ([`GuestPacket`]), a UDP
//! datagram the gateway wrote for a guest ([`GuestDatagram`]), the addresses of one it
//! relays ([`RelayedDatagram`]) and a guest's echo request of either family
//! ([`EchoRequest`]): the shapes the protocol files pass between them. No parsing here.

use std::net::{IpAddr, SocketAddr};

use vnet_wire::MacAddress;

/// A guest as the gateway tells guests apart: the switch port its frames enter by, and
/// its MAC address on that port. A guest cannot pass for another guest on another port
/// by claiming its MAC, so budgets and leases are kept per guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Guest {
    /// The number of the switch port (see `vnet_wire::Frame::ingress_port`).
    pub port: u32,
    /// The frame's source address.
    pub mac: MacAddress,
}

/// Addressing of one frame from a guest, as the protocol handlers need it: of either
/// family (UDP and TCP), or of IPv4 only (`GuestPacket<std::net::Ipv4Addr>`, for ICMP).
#[derive(Debug, Clone, Copy)]
pub(crate) struct GuestPacket<A = IpAddr> {
    pub mac: MacAddress,
    /// The switch port the frame entered by.
    pub port: u32,
    pub src: A,
    pub dst: A,
    /// The TTL, or the IPv6 hop limit.
    pub ttl: u8,
    /// The guest left its UDP or TCP checksum for the NIC to fill (a partial checksum
    /// offload): there is nothing to verify.
    pub checksum_offloaded: bool,
}

impl<A: Copy + Into<IpAddr>> GuestPacket<A> {
    /// The guest that sent the packet.
    pub fn guest(&self) -> Guest {
        Guest { port: self.port, mac: self.mac }
    }

    /// The same packet, its addresses of either family.
    pub fn of_either_family(&self) -> GuestPacket {
        GuestPacket {
            mac: self.mac,
            port: self.port,
            src: self.src.into(),
            dst: self.dst.into(),
            ttl: self.ttl,
            checksum_offloaded: self.checksum_offloaded,
        }
    }
}

/// Where a datagram from the host goes on the segment: the address it appears to come
/// from, and the guest it is for. Its payload stays where the host socket put it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RelayedDatagram {
    pub from: SocketAddr,
    pub to: SocketAddr,
}

/// A UDP datagram the gateway wrote for a guest, with the addresses it appears to come
/// from and go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GuestDatagram {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub payload: Vec<u8>,
}

/// The fields of a guest's echo request (ICMP or ICMPv6).
#[derive(Debug, Clone)]
pub(crate) struct EchoRequest {
    pub ident: u16,
    pub seq_no: u16,
    pub data: Vec<u8>,
}
