//! IPv6 neighbour discovery (RFC 4861) on the gateway's side: advertisements for the
//! gateway's own addresses (its link-local fe80::2, its address and the DNS address in
//! the prefix), router advertisements (answers to solicitations, and unsolicited ones at
//! intervals) that give guests the prefix to make their addresses from (SLAAC), the MTU,
//! the DNS server (RDNSS, RFC 8106) and the search list (DNSSL), and the table of where
//! guests' IPv6 addresses are, learned from what they send and aged out.
//!
//! A guest cannot claim the gateway's addresses, nor an address another guest on a live
//! port used within the last [`REACHABLE_FOR`]. This file knows addresses, not flows or
//! sockets; the IPv6 header has been checked before it is called.

use foldhash::HashMap;
use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use smoltcp::wire::{Icmpv6Packet, NdiscNeighborFlags, NdiscRepr, RawHardwareAddress};
use vnet_wire::MacAddress;

use crate::config::GatewayConfig;
use crate::counters::GatewayDropReason;
use crate::egress::GuestEgress;
use crate::guest::Guest;
use crate::packet::{self, BuiltFrame};

/// The hop limit every neighbour discovery message is sent and must arrive with.
pub const NDP_HOP_LIMIT: u8 = 255;
/// How often the gateway advertises itself unasked (RFC 4861's MinRtrAdvInterval
/// default).
pub const UNSOLICITED_INTERVAL: Duration = Duration::from_secs(200);
/// How long a guest's address is remembered without the guest sending from it.
pub const REACHABLE_FOR: Duration = Duration::from_secs(600);
/// Most guest addresses remembered, as for ARP: more than a segment of VMs needs, and a
/// bound on what a guest inventing addresses can make vnet hold.
const MAX_NEIGHBORS: usize = 4096;
/// How long guests may use the gateway as their default router after an advertisement.
const ROUTER_LIFETIME: Duration = Duration::from_secs(1800);
/// The prefix's valid and preferred lifetimes.
const PREFIX_VALID: Duration = Duration::from_secs(86_400);
const PREFIX_PREFERRED: Duration = Duration::from_secs(14_400);
/// How long the DNS server and search list hold: three unsolicited intervals.
const DNS_LIFETIME: Duration = Duration::from_secs(600);

/// ICMPv6 message types of neighbour discovery.
const ROUTER_ADVERTISEMENT: u8 = 134;
/// The router advertisement flag that says DHCPv6 has other configuration (DNS).
const OTHER_CONFIGURATION: u8 = 0x40;
/// Neighbour discovery option types.
const SOURCE_LINK_LAYER: u8 = 1;
const PREFIX_INFORMATION: u8 = 3;
const MTU: u8 = 5;
const RDNSS: u8 = 25;
const DNSSL: u8 = 31;

/// The all-nodes multicast address, and its Ethernet address.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_NODES_MAC: MacAddress = MacAddress([0x33, 0x33, 0, 0, 0, 1]);

/// One guest address: whose it is, when that guest was first and last seen sending
/// from it.
#[derive(Debug, Clone, Copy)]
struct Neighbor {
    guest: Guest,
    since: Instant,
    seen: Instant,
}

/// Guest IPv6 address to the guest (port and MAC) that uses it.
#[derive(Debug, Default)]
pub struct Neighbors {
    by_ip: HashMap<Ipv6Addr, Neighbor>,
}

impl Neighbors {
    /// Records that `guest` sends from `ip` at `now`, unless `ip` is not the guest's to
    /// use: one of the gateway's addresses, outside both the link-local range and the
    /// prefix, or used within [`REACHABLE_FOR`] by another guest whose port is still
    /// there.
    pub fn learn(
        &mut self,
        ip: Ipv6Addr,
        guest: Guest,
        config: &GatewayConfig,
        now: Instant,
        segment: &dyn GuestEgress,
    ) -> Result<(), GatewayDropReason> {
        if config.is_own_ipv6(ip)
            || !(is_link_local(ip) || config.contains_ipv6(ip))
            || !guest.mac.is_unicast()
        {
            return Err(GatewayDropReason::Spoofed);
        }
        if let Some(held) = self.by_ip.get(&ip) {
            let live = now.saturating_duration_since(held.seen) < REACHABLE_FOR;
            if held.guest != guest && live && segment.port_exists(held.guest.port) {
                return Err(GatewayDropReason::Spoofed);
            }
        }
        if self.by_ip.len() >= MAX_NEIGHBORS && !self.by_ip.contains_key(&ip) {
            self.by_ip.retain(|_, held| now.saturating_duration_since(held.seen) < REACHABLE_FOR);
            if self.by_ip.len() >= MAX_NEIGHBORS {
                return Ok(());
            }
        }
        let since = self.by_ip.get(&ip).filter(|held| held.guest == guest).map_or(now, |held| held.since);
        self.by_ip.insert(ip, Neighbor { guest, since, seen: now });
        Ok(())
    }

    /// The guest address in the prefix learned first among those still in use at `now`
    /// (ties go to the lower address): where a hostfwd with an empty guest address leads
    /// when there is no IPv4.
    pub fn first_learned_global(&self, now: Instant) -> Option<Ipv6Addr> {
        self.by_ip
            .iter()
            .filter(|(ip, held)| {
                !is_link_local(**ip) && now.saturating_duration_since(held.seen) < REACHABLE_FOR
            })
            .min_by_key(|(ip, held)| (held.since, **ip))
            .map(|(ip, _)| *ip)
    }

    /// The addresses in the prefix that the guest at `mac` uses now.
    pub fn globals_of(&self, mac: MacAddress, now: Instant) -> impl Iterator<Item = Ipv6Addr> + '_ {
        self.by_ip
            .iter()
            .filter(move |(ip, held)| {
                held.guest.mac == mac
                    && !is_link_local(**ip)
                    && now.saturating_duration_since(held.seen) < REACHABLE_FOR
            })
            .map(|(ip, _)| *ip)
    }

    /// The MAC address `ip` was last seen at.
    pub fn lookup(&self, ip: Ipv6Addr) -> Option<MacAddress> {
        self.by_ip.get(&ip).map(|held| held.guest.mac)
    }
}

/// Whether `ip` is in fe80::/10.
fn is_link_local(ip: Ipv6Addr) -> bool {
    ip.segments()[0] & 0xffc0 == 0xfe80
}

/// A neighbour discovery message from a guest, taken apart: the address and MAC it
/// tells the gateway about (to be learned by the caller), and the gateway's answer.
pub struct Handled {
    pub learned: Option<(Ipv6Addr, MacAddress)>,
    pub reply: Option<BuiltFrame>,
}

/// Handles one neighbour discovery message (`icmp`, whose checksum the caller has
/// checked) from `src` at `src_mac` to `dst`: a router solicitation gets an
/// advertisement, a neighbour solicitation for one of the gateway's addresses gets a
/// neighbour advertisement, and an advertisement tells where a guest is.
pub fn handle(
    icmp: &Icmpv6Packet<&[u8]>,
    src: Ipv6Addr,
    src_mac: MacAddress,
    config: &GatewayConfig,
) -> Result<Handled, GatewayDropReason> {
    let repr = NdiscRepr::parse(icmp).map_err(|_| GatewayDropReason::Malformed)?;
    let from_unspecified = src.is_unspecified();
    let learned = |lladdr: Option<RawHardwareAddress>| {
        let mac = lladdr.and_then(|raw| raw.as_bytes().try_into().ok()).map(MacAddress);
        (!from_unspecified).then_some((src, mac.unwrap_or(src_mac)))
    };
    match repr {
        NdiscRepr::RouterSolicit { lladdr } => {
            let (dst, dst_mac) = if from_unspecified { (ALL_NODES, src_mac) } else { (src, src_mac) };
            Ok(Handled { learned: learned(lladdr), reply: Some(router_advertisement(config, dst, dst_mac)) })
        }
        NdiscRepr::NeighborSolicit { target_addr, lladdr } => {
            let reply = config.is_own_ipv6(target_addr).then(|| {
                // A solicitation from :: is a guest's duplicate address detection: the
                // answer goes to all nodes, and tells it the address is taken.
                let (dst, solicited) = if from_unspecified { (ALL_NODES, false) } else { (src, true) };
                neighbor_advertisement(config, target_addr, dst, src_mac, solicited)
            });
            Ok(Handled { learned: learned(lladdr), reply })
        }
        NdiscRepr::NeighborAdvert { target_addr, lladdr, .. } => {
            let mac = lladdr.and_then(|raw| raw.as_bytes().try_into().ok()).map(MacAddress);
            Ok(Handled { learned: Some((target_addr, mac.unwrap_or(src_mac))), reply: None })
        }
        NdiscRepr::RouterAdvert { .. } | NdiscRepr::Redirect { .. } => Err(GatewayDropReason::Unsupported),
    }
}

/// A neighbour solicitation from the gateway asking where `target` (a guest that has
/// not spoken yet) is, to its solicited-node multicast address.
pub fn solicitation(config: &GatewayConfig, target: Ipv6Addr) -> BuiltFrame {
    let repr = NdiscRepr::NeighborSolicit {
        target_addr: target,
        lladdr: Some(RawHardwareAddress::from(config.mac())),
    };
    let mut message = vec![0u8; repr.buffer_len()];
    repr.emit(&mut Icmpv6Packet::new_unchecked(&mut message[..]));
    let [.., a, b, c] = target.octets();
    let dst = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00 | u16::from(a), u16::from_be_bytes([b, c]));
    let dst_mac = MacAddress([0x33, 0x33, 0xff, a, b, c]);
    packet::icmpv6(config.mac(), dst_mac, config.ipv6_link_local(), dst, NDP_HOP_LIMIT, &message)
}

/// A neighbour advertisement that `target`, one of the gateway's addresses, is at the
/// gateway's MAC, sent to `dst` at `dst_mac`.
fn neighbor_advertisement(
    config: &GatewayConfig,
    target: Ipv6Addr,
    dst: Ipv6Addr,
    dst_mac: MacAddress,
    solicited: bool,
) -> BuiltFrame {
    let mut flags = NdiscNeighborFlags::ROUTER | NdiscNeighborFlags::OVERRIDE;
    if solicited {
        flags |= NdiscNeighborFlags::SOLICITED;
    }
    let repr = NdiscRepr::NeighborAdvert {
        flags,
        target_addr: target,
        lladdr: Some(RawHardwareAddress::from(config.mac())),
    };
    let mut message = vec![0u8; repr.buffer_len()];
    repr.emit(&mut Icmpv6Packet::new_unchecked(&mut message[..]));
    let dst_mac = if dst == ALL_NODES { ALL_NODES_MAC } else { dst_mac };
    packet::icmpv6(config.mac(), dst_mac, target, dst, NDP_HOP_LIMIT, &message)
}

/// A router advertisement to `dst` at `dst_mac` (all nodes for an unsolicited one): the
/// gateway as default router, the prefix (autonomous when it is a /64, so guests make
/// their own addresses in it), the MTU, the DNS server and the search list. With
/// `restrict=on`, as DHCP then gives no router and no DNS, the gateway is no default
/// router and names no DNS server.
pub fn router_advertisement(config: &GatewayConfig, dst: Ipv6Addr, dst_mac: MacAddress) -> BuiltFrame {
    let (lifetime, flags) =
        if config.restrict { (0, 0) } else { (seconds16(ROUTER_LIFETIME), OTHER_CONFIGURATION) };
    let mut message = vec![ROUTER_ADVERTISEMENT, 0, 0, 0, 64, flags];
    message.extend_from_slice(&lifetime.to_be_bytes());
    message.extend_from_slice(&[0; 8]);
    message.extend_from_slice(&[SOURCE_LINK_LAYER, 1]);
    message.extend_from_slice(config.mac().as_bytes());
    message.extend_from_slice(&[MTU, 1, 0, 0]);
    message.extend_from_slice(&u32::from(config.mtu).to_be_bytes());
    let autonomous = if config.ipv6_prefix_len == 64 { 0x40 } else { 0 };
    message.extend_from_slice(&[PREFIX_INFORMATION, 4, config.ipv6_prefix_len, 0x80 | autonomous]);
    message.extend_from_slice(&seconds32(PREFIX_VALID).to_be_bytes());
    message.extend_from_slice(&seconds32(PREFIX_PREFERRED).to_be_bytes());
    message.extend_from_slice(&[0; 4]);
    message.extend_from_slice(&config.ipv6_prefix.octets());
    if !config.restrict {
        message.extend_from_slice(&[RDNSS, 3, 0, 0]);
        message.extend_from_slice(&seconds32(DNS_LIFETIME).to_be_bytes());
        message.extend_from_slice(&config.ipv6_dns.octets());
        message.extend(search_list_option(config));
    }
    let dst_mac = if dst == ALL_NODES { ALL_NODES_MAC } else { dst_mac };
    packet::icmpv6(config.mac(), dst_mac, config.ipv6_link_local(), dst, NDP_HOP_LIMIT, &message)
}

/// The DNSSL option for the domain and the search list, or nothing if both are empty.
fn search_list_option(config: &GatewayConfig) -> Vec<u8> {
    let names = crate::dns::search_list_wire(config.domain.iter().chain(&config.dns_search));
    if names.is_empty() {
        return Vec::new();
    }
    let len = (8 + names.len()).div_ceil(8) * 8;
    if len / 8 > usize::from(u8::MAX) {
        return Vec::new();
    }
    let mut option = vec![DNSSL, (len / 8) as u8, 0, 0];
    option.extend_from_slice(&seconds32(DNS_LIFETIME).to_be_bytes());
    option.extend_from_slice(&names);
    option.resize(len, 0);
    option
}

fn seconds16(duration: Duration) -> u16 {
    u16::try_from(duration.as_secs()).unwrap_or(u16::MAX)
}

fn seconds32(duration: Duration) -> u32 {
    u32::try_from(duration.as_secs()).unwrap_or(u32::MAX)
}
