//! ARP: answering for the gateway's addresses (host, DNS and guestfwd's virtual
//! addresses), learning where guests are from ARP (gratuitous ARP included) and from the
//! source of their IPv4 packets, and asking for a guest that has not spoken yet (a
//! statically configured guest that a hostfwd client wants to reach).
//!
//! This file knows addresses, not flows or sockets.

use foldhash::HashMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use smoltcp::wire::{ArpOperation, ArpPacket, ArpRepr};
use vnet_wire::MacAddress;

use crate::config::GatewayConfig;
use crate::counters::GatewayDropReason;
use crate::packet::{self, BuiltFrame};

/// Most guests remembered; more than any segment of VMs needs, and a bound on what a
/// guest sending from random addresses can make vnet hold.
const MAX_NEIGHBORS: usize = 4096;

/// How long a connection waits for a guest to answer ARP before it is given up.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often an unanswered ARP request for one address is repeated.
const REQUEST_INTERVAL: Duration = Duration::from_secs(1);

/// Guest IPv4 address to MAC address.
#[derive(Debug, Default)]
pub struct Neighbors {
    by_ip: HashMap<Ipv4Addr, MacAddress>,
    /// When an ARP request for each unresolved address last went out.
    asked: HashMap<Ipv4Addr, Instant>,
}

impl Neighbors {
    /// Records that `ip` is at `mac`.
    pub fn learn(&mut self, ip: Ipv4Addr, mac: MacAddress) {
        if ip.is_unspecified() || !mac.is_unicast() {
            return;
        }
        if self.by_ip.len() >= MAX_NEIGHBORS && !self.by_ip.contains_key(&ip) {
            return;
        }
        self.by_ip.insert(ip, mac);
        self.asked.remove(&ip);
    }

    /// An ARP request for `ip`, unless one went out less than a second ago.
    pub fn request(&mut self, config: &GatewayConfig, ip: Ipv4Addr, now: Instant) -> Option<BuiltFrame> {
        if self.asked.get(&ip).is_some_and(|at| now.saturating_duration_since(*at) < REQUEST_INTERVAL) {
            return None;
        }
        if self.asked.len() >= MAX_NEIGHBORS {
            self.asked.retain(|_, at| now.saturating_duration_since(*at) < RESOLVE_TIMEOUT);
        }
        self.asked.insert(ip, now);
        Some(packet::arp_request(config.mac(), config.host, ip))
    }

    /// Where `ip` was last seen.
    pub fn lookup(&self, ip: Ipv4Addr) -> Option<MacAddress> {
        self.by_ip.get(&ip).copied()
    }
}

/// An ARP packet taken apart: who sent it (to be learned if the network's), and the reply
/// it asks for, if any.
pub struct Handled {
    pub sender: (Ipv4Addr, MacAddress),
    pub reply: Option<BuiltFrame>,
}

/// Handles one ARP packet: for a request for one of the gateway's addresses, builds the
/// reply. Learning the sender is the caller's, which checks it against the leases.
pub fn handle(bytes: &[u8], config: &GatewayConfig) -> Result<Handled, GatewayDropReason> {
    let packet = ArpPacket::new_checked(bytes).map_err(|_| GatewayDropReason::Malformed)?;
    let ArpRepr::EthernetIpv4 {
        operation,
        source_hardware_addr,
        source_protocol_addr,
        target_protocol_addr,
        ..
    } = ArpRepr::parse(&packet).map_err(|_| GatewayDropReason::Malformed)?
    else {
        return Err(GatewayDropReason::Unsupported);
    };
    let sender = (source_protocol_addr, source_hardware_addr);
    let ours = target_protocol_addr == config.host
        || target_protocol_addr == config.dns
        || config.guest_forwards.iter().any(|forward| forward.virtual_addr.ip() == target_protocol_addr);
    match operation {
        ArpOperation::Request if ours && source_protocol_addr != target_protocol_addr => Ok(Handled {
            sender,
            reply: Some(packet::arp_reply(
                config.mac(),
                target_protocol_addr,
                source_hardware_addr,
                source_protocol_addr,
            )),
        }),
        ArpOperation::Request | ArpOperation::Reply => Ok(Handled { sender, reply: None }),
        _ => Err(GatewayDropReason::Unsupported),
    }
}
