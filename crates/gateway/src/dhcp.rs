//! DHCP server: DISCOVER/OFFER/REQUEST/ACK/NAK, RELEASE, DECLINE, INFORM and rapid
//! commit.
//!
//! Addresses are handed out from `dhcpstart` up to the end of the subnet (at most
//! [`MAX_POOL`] of them), only to a client whose hardware address is the frame's source.
//! A MAC keeps its
//! address for the life of the gateway, across reconnects and releases, and static leases
//! (`dhcp-host=`) always win. Replies carry subnet, router, DNS, host name, domain, MTU,
//! lease time, server id and the domain search list; `restrict=on` leaves out router and
//! DNS. This file knows DHCP and addresses, nothing of sockets or NAT.

use foldhash::{HashMap, HashMapExt};
use std::net::{Ipv4Addr, SocketAddr};

use smoltcp::wire::{DhcpMessageType, DhcpOption, DhcpPacket, DhcpRepr};
use tracing::{info, warn};
use vnet_wire::MacAddress;

use crate::config::GatewayConfig;
use crate::counters::GatewayDropReason;
use crate::inspect::Lease;
use crate::packet::{self, BuiltFrame};

/// Most addresses one pool hands out, however large the network.
const MAX_POOL: usize = 4096;

/// The port a DHCP server listens on.
pub const SERVER_PORT: u16 = 67;
const CLIENT_PORT: u16 = 68;

const OPTION_HOSTNAME: u8 = 12;
const OPTION_DOMAIN_NAME: u8 = 15;
const OPTION_INTERFACE_MTU: u8 = 26;
const OPTION_DNS_SERVERS: u8 = 6;
const OPTION_RAPID_COMMIT: u8 = 80;
const OPTION_DOMAIN_SEARCH: u8 = 119;

/// The leases of one network.
#[derive(Debug)]
pub struct Server {
    leases: HashMap<MacAddress, Ipv4Addr>,
    /// Who holds each leased address, pooled and static alike: the same leases by
    /// address, for checking where frames from an address may come from.
    holders: HashMap<Ipv4Addr, MacAddress>,
    pool: Vec<Ipv4Addr>,
}

impl Server {
    /// A server with every pool address free.
    pub fn new(config: &GatewayConfig) -> Self {
        let reserved: Vec<Ipv4Addr> =
            [config.host, config.dns].into_iter().chain(config.static_leases.iter().map(|l| l.ip)).collect();
        let pool = (u32::from(config.dhcp_start)..u32::from(config.broadcast()))
            .map(Ipv4Addr::from)
            .filter(|ip| !reserved.contains(ip))
            .take(MAX_POOL)
            .collect();
        let holders = config.static_leases.iter().map(|lease| (lease.ip, lease.mac)).collect();
        Self { leases: HashMap::new(), holders, pool }
    }

    /// The station that holds a lease of `ip`, if any.
    pub fn holder_of(&self, ip: Ipv4Addr) -> Option<MacAddress> {
        self.holders.get(&ip).copied()
    }

    /// Handles one DHCP message from `mac`'s port and returns the reply frame, if the
    /// message asks for one (RELEASE and DECLINE do not).
    pub fn handle(
        &mut self,
        mac: MacAddress,
        payload: &[u8],
        config: &GatewayConfig,
    ) -> Result<Option<BuiltFrame>, GatewayDropReason> {
        let packet = DhcpPacket::new_checked(payload).map_err(|_| GatewayDropReason::Malformed)?;
        let request = DhcpRepr::parse(&packet).map_err(|_| GatewayDropReason::Malformed)?;
        let rapid_commit = packet.options().any(|option| option.kind == OPTION_RAPID_COMMIT);
        let client = request.client_hardware_address;
        if client != mac {
            return Err(GatewayDropReason::DhcpRefused);
        }
        let (message_type, your_ip) = match request.message_type {
            DhcpMessageType::Discover => match self.lease_for(client, request.requested_ip, config) {
                Some(ip) if rapid_commit => (DhcpMessageType::Ack, ip),
                Some(ip) => (DhcpMessageType::Offer, ip),
                None => return self.refuse(client, &request, config, mac),
            },
            DhcpMessageType::Request => {
                if request.server_identifier.is_some_and(|id| id != config.host) {
                    return Err(GatewayDropReason::NotForGateway);
                }
                let wanted = request.requested_ip.unwrap_or(request.client_ip);
                match self.lease_for(client, Some(wanted), config) {
                    Some(ip) if ip == wanted => (DhcpMessageType::Ack, ip),
                    _ => return self.refuse(client, &request, config, mac),
                }
            }
            DhcpMessageType::Inform => (DhcpMessageType::Ack, Ipv4Addr::UNSPECIFIED),
            DhcpMessageType::Release => {
                info!(%client, "DHCP release; the address stays reserved for this MAC");
                return Ok(None);
            }
            DhcpMessageType::Decline => {
                if let Some(ip) = self.leases.remove(&client) {
                    self.holders.remove(&ip);
                    warn!(%client, %ip, "DHCP decline: another station uses the address; taking it out of the pool");
                    self.pool.retain(|free| *free != ip);
                }
                return Ok(None);
            }
            _ => return Err(GatewayDropReason::Unsupported),
        };
        let lease = (message_type != DhcpMessageType::Ack || your_ip != Ipv4Addr::UNSPECIFIED)
            .then_some(config.lease_time.as_secs().min(u64::from(u32::MAX)) as u32);
        if message_type == DhcpMessageType::Ack && your_ip != Ipv4Addr::UNSPECIFIED {
            info!(%client, ip = %your_ip, "DHCP lease");
        }
        Ok(Some(reply(config, mac, &request, message_type, your_ip, lease, rapid_commit)))
    }

    /// The pool's leases and the static ones, sorted by address.
    pub fn leases(&self, config: &GatewayConfig) -> Vec<Lease> {
        let fixed =
            config.static_leases.iter().map(|lease| Lease { mac: lease.mac, ip: lease.ip, fixed: true });
        let pooled = self.leases.iter().map(|(mac, ip)| Lease { mac: *mac, ip: *ip, fixed: false });
        let mut leases: Vec<Lease> = fixed.chain(pooled).collect();
        leases.sort_by_key(|lease| lease.ip);
        leases
    }

    /// The address `client` holds, if any, so the gateway can reach it before it sends
    /// anything from that address (hostfwd to a guest that only did DHCP).
    pub fn lease_of(&self, client: MacAddress, config: &GatewayConfig) -> Option<Ipv4Addr> {
        config
            .static_leases
            .iter()
            .find(|lease| lease.mac == client)
            .map(|lease| lease.ip)
            .or_else(|| self.leases.get(&client).copied())
    }

    /// The address for `client`: its static lease, the one it already has, the one it
    /// asks for if free, or the next free one.
    fn lease_for(
        &mut self,
        client: MacAddress,
        wanted: Option<Ipv4Addr>,
        config: &GatewayConfig,
    ) -> Option<Ipv4Addr> {
        if let Some(lease) = config.static_leases.iter().find(|lease| lease.mac == client) {
            return Some(lease.ip);
        }
        if let Some(ip) = self.leases.get(&client) {
            return Some(*ip);
        }
        let taken: Vec<Ipv4Addr> = self.leases.values().copied().collect();
        let free = |ip: &Ipv4Addr| self.pool.contains(ip) && !taken.contains(ip);
        let ip = wanted.filter(free).or_else(|| self.pool.iter().copied().find(|ip| free(ip)))?;
        self.leases.insert(client, ip);
        self.holders.insert(ip, client);
        Some(ip)
    }

    fn refuse(
        &self,
        client: MacAddress,
        request: &DhcpRepr<'_>,
        config: &GatewayConfig,
        mac: MacAddress,
    ) -> Result<Option<BuiltFrame>, GatewayDropReason> {
        if self.leases.len() >= self.pool.len() {
            warn!(%client, leases = self.leases.len(), "DHCP pool is full; sending NAK");
        } else {
            info!(%client, requested = ?request.requested_ip, "DHCP request for an address this client cannot have; sending NAK");
        }
        Ok(Some(reply(config, mac, request, DhcpMessageType::Nak, Ipv4Addr::UNSPECIFIED, None, false)))
    }
}

/// Encodes a domain search list as RFC 3397 names (without compression), keeping the
/// names that fit in one option.
fn encode_search_list(domains: &[String]) -> Vec<u8> {
    let mut out = Vec::new();
    for domain in domains {
        let mut name = Vec::new();
        for label in domain.trim_end_matches('.').split('.').filter(|l| !l.is_empty()) {
            name.push(label.len().min(63) as u8);
            name.extend_from_slice(&label.as_bytes()[..label.len().min(63)]);
        }
        name.push(0);
        if out.len() + name.len() > usize::from(u8::MAX) {
            break;
        }
        out.extend_from_slice(&name);
    }
    out
}

fn reply(
    config: &GatewayConfig,
    mac: MacAddress,
    request: &DhcpRepr<'_>,
    message_type: DhcpMessageType,
    your_ip: Ipv4Addr,
    lease_duration: Option<u32>,
    rapid_commit: bool,
) -> BuiltFrame {
    let full = message_type != DhcpMessageType::Nak;
    let mtu = config.mtu.to_be_bytes();
    let dns = config.dns.octets();
    let search = encode_search_list(&config.dns_search);
    let mut options = Vec::new();
    if full {
        options.push(DhcpOption { kind: OPTION_INTERFACE_MTU, data: &mtu });
        if !config.restrict {
            options.push(DhcpOption { kind: OPTION_DNS_SERVERS, data: &dns });
        }
        if let Some(hostname) = &config.hostname {
            options.push(DhcpOption { kind: OPTION_HOSTNAME, data: hostname.as_bytes() });
        }
        if let Some(domain) = &config.domain {
            options.push(DhcpOption { kind: OPTION_DOMAIN_NAME, data: domain.as_bytes() });
        }
        if !search.is_empty() {
            options.push(DhcpOption { kind: OPTION_DOMAIN_SEARCH, data: &search });
        }
        if rapid_commit && message_type == DhcpMessageType::Ack {
            options.push(DhcpOption { kind: OPTION_RAPID_COMMIT, data: &[] });
        }
    }
    let repr = DhcpRepr {
        message_type,
        transaction_id: request.transaction_id,
        secs: 0,
        client_hardware_address: request.client_hardware_address,
        client_ip: if message_type == DhcpMessageType::Ack && your_ip.is_unspecified() {
            request.client_ip
        } else {
            Ipv4Addr::UNSPECIFIED
        },
        your_ip,
        server_ip: Ipv4Addr::UNSPECIFIED,
        router: (full && !config.restrict).then_some(config.host),
        subnet_mask: full.then(|| config.netmask()),
        relay_agent_ip: Ipv4Addr::UNSPECIFIED,
        broadcast: request.broadcast,
        requested_ip: None,
        client_identifier: None,
        server_identifier: Some(config.host),
        parameter_request_list: None,
        dns_servers: None,
        max_size: None,
        lease_duration,
        renew_duration: lease_duration.map(|lease| lease / 2),
        rebind_duration: lease_duration.map(|lease| lease / 8 * 7),
        additional_options: &options,
    };
    let mut payload = vec![0u8; repr.buffer_len()];
    repr.emit(&mut DhcpPacket::new_unchecked(&mut payload)).expect("buffer sized by buffer_len");
    let from = SocketAddr::from((config.host, SERVER_PORT));
    let to = SocketAddr::from((Ipv4Addr::BROADCAST, CLIENT_PORT));
    packet::udp(config.mac(), mac, from, to, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_lists_are_encoded_as_dns_names() {
        let encoded = encode_search_list(&["example.com".into(), "lab.".into()]);
        assert_eq!(encoded, b"\x07example\x03com\x00\x03lab\x00");
    }

    #[test]
    fn search_lists_stop_before_overflowing_one_option() {
        let long: Vec<String> = (0..40).map(|i| format!("domain{i}.example")).collect();
        assert!(encode_search_list(&long).len() <= 255);
    }
}
