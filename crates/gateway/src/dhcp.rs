//! DHCP server: DISCOVER/OFFER/REQUEST/ACK/NAK, RELEASE, DECLINE, INFORM and rapid
//! commit.
//!
//! Addresses are handed out from `dhcpstart` up to the end of the subnet (at most
//! [`MAX_POOL`] of them), only to a client whose hardware address is the frame's source.
//! A lease belongs to a [`Guest`]: the port and MAC it was asked from. An offer holds its
//! address for [`OFFER_HOLD`] only, a refused request holds nothing, and a lease ends
//! after the lease time unless renewed; an address whose hold ended is free again, and
//! goes back to the same MAC while nobody else took it. One port holds at most
//! `port-max-leases` addresses (offers and declined addresses included), so no port can
//! empty the pool. RELEASE and DECLINE count only from the guest that holds the lease.
//! A lease moves to another port only once its port is gone (a guest that reconnected).
//! Static leases (`dhcp-host=`) always win.
//!
//! Replies carry subnet, router, DNS, host name, domain, MTU, lease time, server id and
//! the domain search list; `restrict=on` leaves out router and DNS. This file knows DHCP
//! and addresses, nothing of sockets or NAT.

use foldhash::{HashMap, HashMapExt};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use smoltcp::wire::{DhcpMessageType, DhcpOption, DhcpPacket, DhcpRepr};
use tracing::{info, warn};
use vnet_wire::MacAddress;

use crate::config::GatewayConfig;
use crate::counters::GatewayDropReason;
use crate::egress::GuestEgress;
use crate::guest::Guest;
use crate::inspect::Lease;
use crate::names;
use crate::packet::{self, BuiltFrame};

/// Most addresses one pool hands out, however large the network.
const MAX_POOL: usize = 4096;
/// How long an offer holds its address for a REQUEST.
pub const OFFER_HOLD: Duration = Duration::from_secs(60);
/// How long an address a guest declined (another station uses it) stays out of the pool.
const DECLINE_HOLD: Duration = Duration::from_secs(600);

/// The port a DHCP server listens on.
pub const SERVER_PORT: u16 = 67;
const CLIENT_PORT: u16 = 68;

const OPTION_HOSTNAME: u8 = 12;
const OPTION_CLIENT_FQDN: u8 = 81;
const OPTION_DOMAIN_NAME: u8 = 15;
const OPTION_INTERFACE_MTU: u8 = 26;
const OPTION_DNS_SERVERS: u8 = 6;
const OPTION_RAPID_COMMIT: u8 = 80;
const OPTION_DOMAIN_SEARCH: u8 = 119;
const OPTION_VENDOR_CLASS: u8 = 60;
const OPTION_TFTP_SERVER_NAME: u8 = 66;
const OPTION_BOOTFILE_NAME: u8 = 67;
/// Where the BOOTP "file" field (the boot file name) starts in a DHCP message, and its
/// length.
const FILE_FIELD: std::ops::Range<usize> = 108..236;

/// What holds a pool address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// Offered, waiting for the REQUEST.
    Offered,
    /// Leased.
    Bound,
    /// Declined by its guest: another station uses it.
    Declined,
}

/// One pool address in use, by whom, and until when.
#[derive(Debug, Clone, Copy)]
struct Binding {
    holder: Guest,
    hold: Hold,
    until: Instant,
}

impl Binding {
    fn is_live(&self, now: Instant) -> bool {
        self.until > now
    }
}

/// The leases of one network.
#[derive(Debug)]
pub struct Server {
    /// Pool addresses held now or before, by address; one whose hold ended is free.
    bindings: HashMap<Ipv4Addr, Binding>,
    /// The address each MAC was last given, while its binding is there.
    by_mac: HashMap<MacAddress, Ipv4Addr>,
    pool: Vec<Ipv4Addr>,
    /// The host name each guest gave (option 12 or 81), while it holds a lease.
    names: HashMap<MacAddress, String>,
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
        Self { bindings: HashMap::new(), by_mac: HashMap::new(), pool, names: HashMap::new() }
    }

    /// Whether `guest` may send from `ip`: an address leased (statically, or from the
    /// pool) to another guest is not its to use. A lease whose port is gone passes to
    /// the guest with its MAC on a new port.
    pub fn may_use(
        &mut self,
        ip: Ipv4Addr,
        guest: Guest,
        config: &GatewayConfig,
        now: Instant,
        segment: &dyn GuestEgress,
    ) -> bool {
        if let Some(fixed) = config.static_leases.iter().find(|lease| lease.ip == ip) {
            return fixed.mac == guest.mac;
        }
        match self.bindings.get_mut(&ip) {
            Some(binding) if binding.is_live(now) && binding.hold == Hold::Bound => {
                let moved = binding.holder.mac == guest.mac && !segment.port_exists(binding.holder.port);
                if moved {
                    binding.holder = guest;
                }
                binding.holder == guest
            }
            _ => true,
        }
    }

    /// Handles one DHCP message from `guest` and returns the reply frame, if the message
    /// asks for one (RELEASE and DECLINE do not).
    pub fn handle(
        &mut self,
        guest: Guest,
        payload: &[u8],
        config: &GatewayConfig,
        now: Instant,
        segment: &dyn GuestEgress,
    ) -> Result<Option<BuiltFrame>, GatewayDropReason> {
        let packet = DhcpPacket::new_checked(payload).map_err(|_| GatewayDropReason::Malformed)?;
        let request = DhcpRepr::parse(&packet).map_err(|_| GatewayDropReason::Malformed)?;
        let rapid_commit = packet.options().any(|option| option.kind == OPTION_RAPID_COMMIT);
        if request.client_hardware_address != guest.mac {
            return Err(GatewayDropReason::DhcpRefused);
        }
        let (message_type, your_ip) = match request.message_type {
            DhcpMessageType::Discover => {
                let hold = if rapid_commit { Hold::Bound } else { Hold::Offered };
                match self.address_for(guest, request.requested_ip, config, now, segment)? {
                    Some(ip) => {
                        self.hold(ip, guest, hold, config, now);
                        let reply = if rapid_commit { DhcpMessageType::Ack } else { DhcpMessageType::Offer };
                        (reply, ip)
                    }
                    None => return Ok(Some(self.refuse(guest, &request, config))),
                }
            }
            DhcpMessageType::Request => {
                if request.server_identifier.is_some_and(|id| id != config.host) {
                    return Err(GatewayDropReason::NotForGateway);
                }
                let wanted = request.requested_ip.unwrap_or(request.client_ip);
                match self.address_for(guest, Some(wanted), config, now, segment)? {
                    Some(ip) if ip == wanted => {
                        self.hold(ip, guest, Hold::Bound, config, now);
                        (DhcpMessageType::Ack, ip)
                    }
                    _ => return Ok(Some(self.refuse(guest, &request, config))),
                }
            }
            DhcpMessageType::Inform => (DhcpMessageType::Ack, Ipv4Addr::UNSPECIFIED),
            DhcpMessageType::Release => {
                self.release(guest, request.client_ip, now)?;
                return Ok(None);
            }
            DhcpMessageType::Decline => {
                self.decline(guest, request.requested_ip, now)?;
                return Ok(None);
            }
            _ => return Err(GatewayDropReason::Unsupported),
        };
        let lease = (message_type != DhcpMessageType::Ack || your_ip != Ipv4Addr::UNSPECIFIED)
            .then_some(config.lease_time.as_secs().min(u64::from(u32::MAX)) as u32);
        if message_type == DhcpMessageType::Ack && your_ip != Ipv4Addr::UNSPECIFIED {
            info!(client = %guest.mac, port = guest.port, ip = %your_ip, "DHCP lease");
            if let Some(name) = client_name(&packet) {
                self.name(guest.mac, name, config, now);
            }
        }
        let boot = asks_for_boot_options(&packet, &request);
        Ok(Some(reply(config, guest.mac, &request, message_type, your_ip, lease, rapid_commit, boot)))
    }

    /// Records `name` as the name of the guest at `mac`, unless it is not a DNS label
    /// or a guest with a lease holds it; each refusal is logged.
    fn name(&mut self, mac: MacAddress, name: String, config: &GatewayConfig, now: Instant) {
        if !names::is_valid_label(&name) {
            return warn!(client = %mac, name, "DHCP host name refused: not a DNS label");
        }
        if self.names.get(&mac) == Some(&name) {
            return;
        }
        let held = self.holder_of(&name, config, now).is_some_and(|holder| holder != mac);
        let reserved =
            name == names::HOST_LABEL || config.dns_records.iter().any(|(record, _)| *record == name);
        if held || reserved {
            return warn!(client = %mac, name, "DHCP host name refused: another guest or the host has it");
        }
        if self.names.len() >= self.pool.len() + config.static_leases.len() {
            self.names.retain(|mac, _| {
                self.by_mac.contains_key(mac) || config.static_leases.iter().any(|l| l.mac == *mac)
            });
        }
        info!(client = %mac, name, "guest name");
        self.names.insert(mac, name);
    }

    /// The guest with a lease that gave `name`, and its address.
    fn holder_of(&self, name: &str, config: &GatewayConfig, now: Instant) -> Option<MacAddress> {
        self.names
            .iter()
            .find(|(mac, held)| held.as_str() == name && self.lease_of(**mac, config, now).is_some())
            .map(|(mac, _)| *mac)
    }

    /// The address of the guest named `name`, and its MAC, while its lease lasts.
    pub fn address_of_name(
        &self,
        name: &str,
        config: &GatewayConfig,
        now: Instant,
    ) -> Option<(MacAddress, Ipv4Addr)> {
        let mac = self.holder_of(name, config, now)?;
        Some((mac, self.lease_of(mac, config, now)?))
    }

    /// The name of the guest at `mac`, while it holds a lease.
    pub fn name_of(&self, mac: MacAddress, config: &GatewayConfig, now: Instant) -> Option<&str> {
        self.lease_of(mac, config, now)?;
        self.names.get(&mac).map(String::as_str)
    }

    /// The guest leased `ip` now.
    pub fn holder_of_address(
        &self,
        ip: Ipv4Addr,
        config: &GatewayConfig,
        now: Instant,
    ) -> Option<MacAddress> {
        if let Some(fixed) = config.static_leases.iter().find(|lease| lease.ip == ip) {
            return Some(fixed.mac);
        }
        let binding = self.bindings.get(&ip).filter(|b| b.hold == Hold::Bound && b.is_live(now))?;
        Some(binding.holder.mac)
    }

    /// The pool's live leases and the static ones, sorted by address.
    pub fn leases(&self, config: &GatewayConfig, now: Instant) -> Vec<Lease> {
        let fixed = config.static_leases.iter().map(|lease| Lease {
            mac: lease.mac,
            ip: IpAddr::V4(lease.ip),
            fixed: true,
        });
        let pooled = self
            .bindings
            .iter()
            .filter(|(_, binding)| binding.hold == Hold::Bound && binding.is_live(now))
            .map(|(ip, binding)| Lease { mac: binding.holder.mac, ip: IpAddr::V4(*ip), fixed: false });
        let mut leases: Vec<Lease> = fixed.chain(pooled).collect();
        leases.sort_by_key(|lease| lease.ip);
        leases
    }

    /// The address `client` holds, if any, so the gateway can reach it before it sends
    /// anything from that address (hostfwd to a guest that only did DHCP).
    pub fn lease_of(&self, client: MacAddress, config: &GatewayConfig, now: Instant) -> Option<Ipv4Addr> {
        if let Some(fixed) = config.static_leases.iter().find(|lease| lease.mac == client) {
            return Some(fixed.ip);
        }
        let ip = self.by_mac.get(&client)?;
        let binding = self.bindings.get(ip)?;
        (binding.hold == Hold::Bound && binding.is_live(now)).then_some(*ip)
    }

    /// The address for `guest`: its static lease, the one it has or last had if still
    /// free, the one it asks for if free, or the next free one; None if there is none.
    /// Its port's lease budget spent, or its address held by a live guest on another
    /// port, it is refused. Nothing is held yet.
    fn address_for(
        &self,
        guest: Guest,
        wanted: Option<Ipv4Addr>,
        config: &GatewayConfig,
        now: Instant,
        segment: &dyn GuestEgress,
    ) -> Result<Option<Ipv4Addr>, GatewayDropReason> {
        if let Some(lease) = config.static_leases.iter().find(|lease| lease.mac == guest.mac) {
            return Ok(Some(lease.ip));
        }
        if let Some((ip, binding)) =
            self.by_mac.get(&guest.mac).and_then(|ip| Some((*ip, self.bindings.get(ip)?)))
        {
            let held_elsewhere =
                binding.holder != guest && binding.is_live(now) && segment.port_exists(binding.holder.port);
            if held_elsewhere {
                return Err(GatewayDropReason::DhcpRefused);
            }
            return Ok(Some(ip));
        }
        let port_holds =
            self.bindings.values().filter(|b| b.holder.port == guest.port && b.is_live(now)).count();
        if port_holds >= config.port_max_leases {
            return Err(GatewayDropReason::GuestBudget);
        }
        let free = |ip: &Ipv4Addr| self.bindings.get(ip).is_none_or(|binding| !binding.is_live(now));
        let from_pool = |ip: &Ipv4Addr| self.pool.contains(ip) && free(ip);
        Ok(wanted.filter(from_pool).or_else(|| self.pool.iter().copied().find(free)))
    }

    /// Holds pool address `ip` for `guest` (a static lease needs no holding).
    fn hold(&mut self, ip: Ipv4Addr, guest: Guest, hold: Hold, config: &GatewayConfig, now: Instant) {
        if config.static_leases.iter().any(|lease| lease.ip == ip) {
            return;
        }
        let until = now + if hold == Hold::Bound { config.lease_time } else { OFFER_HOLD };
        if let Some(previous) = self.bindings.insert(ip, Binding { holder: guest, hold, until }) {
            if previous.holder.mac != guest.mac && self.by_mac.get(&previous.holder.mac) == Some(&ip) {
                self.by_mac.remove(&previous.holder.mac);
            }
        }
        if let Some(old) = self.by_mac.insert(guest.mac, ip).filter(|old| *old != ip) {
            self.bindings.remove(&old);
        }
    }

    /// `guest` gives `ip` back: free now, though it goes back to the same MAC while
    /// nobody else takes it. Only the holder may.
    fn release(&mut self, guest: Guest, ip: Ipv4Addr, now: Instant) -> Result<(), GatewayDropReason> {
        match self.bindings.get_mut(&ip) {
            Some(binding) if binding.holder == guest => {
                info!(client = %guest.mac, %ip, "DHCP release");
                binding.until = now;
                Ok(())
            }
            _ => Err(GatewayDropReason::DhcpRefused),
        }
    }

    /// `guest` found another station on `ip`, the address it was offered or leased: the
    /// address stays out of the pool for [`DECLINE_HOLD`], counted against the guest's
    /// port. Only the holder may.
    fn decline(&mut self, guest: Guest, ip: Option<Ipv4Addr>, now: Instant) -> Result<(), GatewayDropReason> {
        let ip = ip.ok_or(GatewayDropReason::Malformed)?;
        match self.bindings.get_mut(&ip) {
            Some(binding) if binding.holder == guest && binding.is_live(now) => {
                warn!(client = %guest.mac, %ip, "DHCP decline: another station uses the address; keeping it out of the pool for a while");
                *binding = Binding { holder: guest, hold: Hold::Declined, until: now + DECLINE_HOLD };
                self.by_mac.remove(&guest.mac);
                Ok(())
            }
            _ => Err(GatewayDropReason::DhcpRefused),
        }
    }

    fn refuse(&self, guest: Guest, request: &DhcpRepr<'_>, config: &GatewayConfig) -> BuiltFrame {
        info!(client = %guest.mac, requested = ?request.requested_ip, "DHCP: no address for this client; sending NAK");
        reply(config, guest.mac, request, DhcpMessageType::Nak, Ipv4Addr::UNSPECIFIED, None, false, false)
    }
}

/// The host name a DHCP client gave, in lower case: the first label of its FQDN
/// (option 81, in ASCII or DNS wire format), else its host name (option 12).
fn client_name(packet: &DhcpPacket<&[u8]>) -> Option<String> {
    let fqdn = packet.options().find(|option| option.kind == OPTION_CLIENT_FQDN);
    let from_fqdn = fqdn.and_then(|option| {
        let (flags, name) = (*option.data.first()?, option.data.get(3..)?);
        let first = if flags & 0x04 != 0 {
            let len = usize::from(*name.first()?);
            name.get(1..1 + len)?
        } else {
            name.split(|b| *b == b'.').next()?
        };
        Some(first.to_vec())
    });
    let name = from_fqdn.or_else(|| {
        let option = packet.options().find(|option| option.kind == OPTION_HOSTNAME)?;
        option.data.split(|b| *b == b'.').next().map(<[u8]>::to_vec)
    })?;
    let name = String::from_utf8(name).ok()?.trim_end_matches('\0').to_ascii_lowercase();
    (!name.is_empty()).then_some(name)
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

/// Whether a client asks for the boot options 66 and 67: in its parameter list, or as a
/// PXE client by its vendor class.
fn asks_for_boot_options(packet: &DhcpPacket<&[u8]>, request: &DhcpRepr<'_>) -> bool {
    let listed = request
        .parameter_request_list
        .is_some_and(|list| list.contains(&OPTION_TFTP_SERVER_NAME) || list.contains(&OPTION_BOOTFILE_NAME));
    let pxe = packet
        .options()
        .any(|option| option.kind == OPTION_VENDOR_CLASS && option.data.starts_with(b"PXEClient"));
    listed || pxe
}

/// The reply to `request`. With `boot` (the client asked for them), options 66 and 67
/// name the TFTP server and boot file; the boot file is in the BOOTP file field and
/// the gateway is the next server (siaddr) whenever `bootfile=` is set.
#[allow(clippy::too_many_arguments)]
fn reply(
    config: &GatewayConfig,
    mac: MacAddress,
    request: &DhcpRepr<'_>,
    message_type: DhcpMessageType,
    your_ip: Ipv4Addr,
    lease_duration: Option<u32>,
    rapid_commit: bool,
    boot: bool,
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
        options.push(DhcpOption { kind: OPTION_DOMAIN_NAME, data: config.domain().as_bytes() });
        if !search.is_empty() {
            options.push(DhcpOption { kind: OPTION_DOMAIN_SEARCH, data: &search });
        }
        if rapid_commit && message_type == DhcpMessageType::Ack {
            options.push(DhcpOption { kind: OPTION_RAPID_COMMIT, data: &[] });
        }
        if boot {
            if let Some(server) = &config.tftp_server_name {
                options.push(DhcpOption { kind: OPTION_TFTP_SERVER_NAME, data: server.as_bytes() });
            }
            if let Some(bootfile) = &config.bootfile {
                options.push(DhcpOption { kind: OPTION_BOOTFILE_NAME, data: bootfile.as_bytes() });
            }
        }
    }
    let bootfile = config.bootfile.as_deref().filter(|_| full);
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
        server_ip: if bootfile.is_some() { config.host } else { Ipv4Addr::UNSPECIFIED },
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
    if let Some(name) = bootfile {
        let field = &mut payload[FILE_FIELD];
        let len = name.len().min(field.len() - 1);
        field[..len].copy_from_slice(&name.as_bytes()[..len]);
    }
    let from = SocketAddr::from((config.host, SERVER_PORT));
    let to = SocketAddr::from((Ipv4Addr::BROADCAST, CLIENT_PORT));
    packet::udp(config.mac(), mac, from, to, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name_from(options: &[DhcpOption<'_>]) -> Option<String> {
        let mac = MacAddress([2, 0, 0, 0, 0, 1]);
        let frame = crate::tests::dhcp_message_with_options(
            DhcpMessageType::Request,
            mac,
            None,
            Ipv4Addr::UNSPECIFIED,
            options,
        );
        let (_, _, payload) = crate::tests::udp_of(&frame);
        client_name(&DhcpPacket::new_checked(&payload[..]).unwrap())
    }

    #[test]
    fn a_client_names_itself_by_its_fqdn_or_its_host_name() {
        assert_eq!(
            name_from(&[DhcpOption { kind: OPTION_HOSTNAME, data: b"Alpha.lab" }]).as_deref(),
            Some("alpha")
        );
        let wire = DhcpOption { kind: OPTION_CLIENT_FQDN, data: b"\x05\0\0\x04beta\x03lab\0" };
        let ascii = DhcpOption { kind: OPTION_CLIENT_FQDN, data: b"\x01\0\0gamma.lab" };
        assert_eq!(
            name_from(&[wire, DhcpOption { kind: OPTION_HOSTNAME, data: b"x" }]).as_deref(),
            Some("beta")
        );
        assert_eq!(name_from(&[ascii]).as_deref(), Some("gamma"));
        assert_eq!(name_from(&[]), None);
        assert_eq!(name_from(&[DhcpOption { kind: OPTION_CLIENT_FQDN, data: b"\x04" }]), None, "truncated");
    }

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
