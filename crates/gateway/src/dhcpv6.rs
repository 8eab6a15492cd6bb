//! DHCPv6 (RFC 8415) on the gateway: stateless answers (an information request gets the
//! DNS server and the search list) and stateful ones (an IA_NA in a solicit, request,
//! renew or rebind gets an address from the prefix, held for the lease time, released on
//! request, and shown among the leases). Router advertisements leave addresses to SLAAC
//! and say that the other configuration is here; a guest that asks for an address gets
//! one too.
//!
//! A guest is known by its port and MAC as for DHCP over IPv4: one port holds at most
//! `port-max-leases` addresses, and a release counts only from the holder. This file
//! knows DHCPv6 messages and bindings, not UDP or sockets.

use foldhash::HashMap;
use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use vnet_wire::MacAddress;

use crate::config::GatewayConfig;
use crate::counters::GatewayDropReason;
use crate::egress::GuestEgress;
use crate::guest::Guest;

/// The port servers listen on.
pub const SERVER_PORT: u16 = 547;
/// All_DHCP_Relay_Agents_and_Servers, where clients send.
pub const ALL_SERVERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);

/// Message types.
const SOLICIT: u8 = 1;
const ADVERTISE: u8 = 2;
const REQUEST: u8 = 3;
const RENEW: u8 = 5;
const REBIND: u8 = 6;
const REPLY: u8 = 7;
const RELEASE: u8 = 8;
const INFORMATION_REQUEST: u8 = 11;

/// Option codes.
const CLIENT_ID: u16 = 1;
const SERVER_ID: u16 = 2;
const IA_NA: u16 = 3;
const IA_ADDRESS: u16 = 5;
const STATUS_CODE: u16 = 13;
const RAPID_COMMIT: u16 = 14;
const DNS_SERVERS: u16 = 23;
const DOMAIN_LIST: u16 = 24;
/// The boot file as a URL (RFC 5970), for PXE over IPv6.
const BOOTFILE_URL: u16 = 59;

/// Status code: no address is left for the client.
const NO_ADDRESSES_AVAILABLE: u16 = 2;
/// The first address handed out, as an offset into the prefix (below it lie the
/// gateway's own).
const FIRST_ADDRESS: u128 = 0x100;
/// Most addresses handed out in all, as a bound on what made-up clients can make vnet
/// hold.
const MAX_BINDINGS: usize = 4096;

/// One address bound to a client's IA_NA.
#[derive(Debug, Clone)]
struct Binding {
    holder: Guest,
    duid: Vec<u8>,
    iaid: u32,
    expires: Instant,
}

/// The DHCPv6 server's bindings, by address.
#[derive(Debug, Default)]
pub struct Server {
    bindings: HashMap<Ipv6Addr, Binding>,
}

/// A client message, taken apart.
struct ClientMessage<'a> {
    kind: u8,
    transaction: [u8; 3],
    client_id: Option<&'a [u8]>,
    server_id: Option<&'a [u8]>,
    ia_na: Option<u32>,
    rapid_commit: bool,
}

impl Server {
    /// Handles one client message from `guest`: the reply's payload, or None for a
    /// message that asks for none (one meant for another server).
    pub fn handle(
        &mut self,
        guest: Guest,
        bytes: &[u8],
        config: &GatewayConfig,
        now: Instant,
        segment: &dyn GuestEgress,
    ) -> Result<Option<Vec<u8>>, GatewayDropReason> {
        let message = parse(bytes)?;
        let server_id = server_duid(config.mac());
        if message.server_id.is_some_and(|id| id != server_id.as_slice()) {
            return Ok(None);
        }
        let needs_server_id = matches!(message.kind, REQUEST | RENEW | RELEASE);
        if needs_server_id && message.server_id.is_none() {
            return Err(GatewayDropReason::Malformed);
        }
        let (reply_kind, ia_na) = match message.kind {
            INFORMATION_REQUEST => (REPLY, None),
            SOLICIT | REQUEST | RENEW | REBIND => {
                let client_id = message.client_id.ok_or(GatewayDropReason::Malformed)?;
                let ia_na =
                    message.ia_na.map(|iaid| (iaid, self.bind(guest, client_id, iaid, config, now, segment)));
                let kind = if message.kind == SOLICIT && !message.rapid_commit { ADVERTISE } else { REPLY };
                (kind, ia_na)
            }
            RELEASE => {
                let client_id = message.client_id.ok_or(GatewayDropReason::Malformed)?;
                self.bindings.retain(|_, binding| !(binding.holder == guest && binding.duid == client_id));
                (REPLY, None)
            }
            _ => return Err(GatewayDropReason::Unsupported),
        };
        let mut reply = vec![reply_kind];
        reply.extend_from_slice(&message.transaction);
        put_option(&mut reply, SERVER_ID, &server_id);
        if let Some(client_id) = message.client_id {
            put_option(&mut reply, CLIENT_ID, client_id);
        }
        if let Some((iaid, address)) = ia_na {
            put_option(&mut reply, IA_NA, &ia_na_option(iaid, address, config.lease_time));
        }
        if message.rapid_commit && message.kind == SOLICIT {
            put_option(&mut reply, RAPID_COMMIT, &[]);
        }
        put_option(&mut reply, DNS_SERVERS, &config.ipv6_dns.octets());
        let domains = crate::dns::search_list_wire(config.domain.iter().chain(&config.dns_search));
        if !domains.is_empty() {
            put_option(&mut reply, DOMAIN_LIST, &domains);
        }
        if let Some(bootfile) = config.bootfile.as_deref().filter(|_| config.tftp_root.is_some()) {
            let url = format!("tftp://[{}]/{bootfile}", config.ipv6_host);
            put_option(&mut reply, BOOTFILE_URL, url.as_bytes());
        }
        Ok(Some(reply))
    }

    /// The address bound to `client_id`'s `iaid` at `guest`, renewed; else a free one
    /// from the prefix, unless the guest's port holds all it may or none is left.
    fn bind(
        &mut self,
        guest: Guest,
        client_id: &[u8],
        iaid: u32,
        config: &GatewayConfig,
        now: Instant,
        segment: &dyn GuestEgress,
    ) -> Option<Ipv6Addr> {
        self.bindings.retain(|_, binding| binding.expires > now && segment.port_exists(binding.holder.port));
        let expires = now + config.lease_time;
        let held = self.bindings.iter_mut().find(|(_, binding)| {
            binding.holder == guest && binding.duid == client_id && binding.iaid == iaid
        });
        if let Some((address, binding)) = held {
            binding.expires = expires;
            return Some(*address);
        }
        let port_holds = self.bindings.values().filter(|binding| binding.holder.port == guest.port).count();
        if port_holds >= config.port_max_leases || self.bindings.len() >= MAX_BINDINGS {
            return None;
        }
        let prefix = u128::from(config.ipv6_prefix);
        let room = u128::MAX.checked_shr(u32::from(config.ipv6_prefix_len)).unwrap_or(0);
        let address = (FIRST_ADDRESS..room)
            .take(MAX_BINDINGS + 1)
            .map(|offset| Ipv6Addr::from(prefix | offset))
            .find(|address| !self.bindings.contains_key(address) && !config.is_own_ipv6(*address))?;
        let binding = Binding { holder: guest, duid: client_id.to_vec(), iaid, expires };
        self.bindings.insert(address, binding);
        Some(address)
    }

    /// The addresses bound at `now`, with the MAC of each holder.
    pub fn leases(&self, now: Instant) -> impl Iterator<Item = (MacAddress, Ipv6Addr)> + '_ {
        self.bindings
            .iter()
            .filter(move |(_, binding)| binding.expires > now)
            .map(|(address, binding)| (binding.holder.mac, *address))
    }
}

/// Takes a client message apart; an option that runs past the message is malformed.
fn parse(bytes: &[u8]) -> Result<ClientMessage<'_>, GatewayDropReason> {
    let (&kind, rest) = bytes.split_first().ok_or(GatewayDropReason::Malformed)?;
    let transaction: [u8; 3] =
        rest.get(..3).and_then(|id| id.try_into().ok()).ok_or(GatewayDropReason::Malformed)?;
    let mut message = ClientMessage {
        kind,
        transaction,
        client_id: None,
        server_id: None,
        ia_na: None,
        rapid_commit: false,
    };
    let mut options = &rest[3..];
    while !options.is_empty() {
        let header = options.get(..4).ok_or(GatewayDropReason::Malformed)?;
        let code = u16::from_be_bytes([header[0], header[1]]);
        let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
        let value = options.get(4..4 + len).ok_or(GatewayDropReason::Malformed)?;
        match code {
            CLIENT_ID => message.client_id = Some(value),
            SERVER_ID => message.server_id = Some(value),
            IA_NA if value.len() >= 12 => {
                message.ia_na = Some(u32::from_be_bytes([value[0], value[1], value[2], value[3]]));
            }
            RAPID_COMMIT => message.rapid_commit = true,
            _ => {}
        }
        options = &options[4 + len..];
    }
    Ok(message)
}

/// The server's DUID: type 3 (link-layer address), hardware type 1 (Ethernet), the
/// gateway's MAC.
fn server_duid(mac: MacAddress) -> Vec<u8> {
    let mut duid = vec![0, 3, 0, 1];
    duid.extend_from_slice(mac.as_bytes());
    duid
}

fn put_option(message: &mut Vec<u8>, code: u16, value: &[u8]) {
    message.extend_from_slice(&code.to_be_bytes());
    message.extend_from_slice(&(value.len() as u16).to_be_bytes());
    message.extend_from_slice(value);
}

/// An IA_NA option's value: `address` with its lifetimes, or the status that none is
/// left.
fn ia_na_option(iaid: u32, address: Option<Ipv6Addr>, lease_time: Duration) -> Vec<u8> {
    let seconds = u32::try_from(lease_time.as_secs()).unwrap_or(u32::MAX);
    let mut value = iaid.to_be_bytes().to_vec();
    value.extend_from_slice(&(seconds / 2).to_be_bytes());
    value.extend_from_slice(&(seconds / 5 * 4).to_be_bytes());
    match address {
        Some(address) => {
            let mut ia_address = address.octets().to_vec();
            ia_address.extend_from_slice(&seconds.to_be_bytes());
            ia_address.extend_from_slice(&seconds.to_be_bytes());
            put_option(&mut value, IA_ADDRESS, &ia_address);
        }
        None => {
            let mut status = NO_ADDRESSES_AVAILABLE.to_be_bytes().to_vec();
            status.extend_from_slice(b"no address left for this port");
            put_option(&mut value, STATUS_CODE, &status);
        }
    }
    value
}
