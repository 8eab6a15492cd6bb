//! Where a guest's packet goes on the host: the address it maps to (the host's loopback
//! for the gateway's address in either family, nothing for addresses that must never
//! leave), the target of
//! a TCP connection (a guestfwd, the DNS upstreams, or the mapped address), and the TTL
//! its host socket sends with. Decisions only; no sockets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::config::{GatewayConfig, GuestForwardTarget};
use crate::counters::GatewayDropReason;
use crate::dns;
use crate::tcp::ConnectTarget;

/// The TTL guests and hosts normally send with. A guest packet with a lower TTL (a
/// traceroute probe, say) leaves the host with that TTL less one; at this or above, the
/// host's default applies.
pub const NORMAL_TTL: u8 = 64;

/// The TTL a host socket should send a guest packet of TTL `guest_ttl` with: None for the
/// host's default.
pub fn host_ttl(guest_ttl: u8) -> Option<u8> {
    (guest_ttl < NORMAL_TTL).then(|| guest_ttl.saturating_sub(1).max(1))
}

/// Where a guest's TCP connection to `dst`, whose SYN had TTL `guest_ttl`, goes: a
/// guestfwd target, the DNS upstreams in order for DNS over TCP, or the mapped
/// destination.
pub fn tcp_target(
    config: &GatewayConfig,
    dst: SocketAddr,
    guest_ttl: u8,
) -> Result<ConnectTarget, GatewayDropReason> {
    let ttl = host_ttl(guest_ttl);
    if let Some(forward) = config.guest_forwards.iter().find(|f| f.virtual_addr == dst) {
        return Ok(match &forward.target {
            GuestForwardTarget::Connect(target) => {
                ConnectTarget { remotes: vec![*target], ttl, command: None }
            }
            GuestForwardTarget::Command(command) => {
                ConnectTarget { remotes: Vec::new(), ttl, command: Some(command.clone()) }
            }
        });
    }
    if is_dns_address(config, dst.ip()) && dst.port() == dns::PORT {
        if config.restrict {
            return Err(GatewayDropReason::Restricted);
        }
        if config.dns_upstreams.is_empty() {
            return Err(GatewayDropReason::HostSocket);
        }
        return Ok(ConnectTarget { remotes: config.dns_upstreams.clone(), ttl, command: None });
    }
    let ip = host_side_address(config, dst.ip())?;
    Ok(ConnectTarget { remotes: vec![SocketAddr::new(ip, dst.port())], ttl, command: None })
}

/// Whether `ip` is the gateway's DNS address in its family.
pub fn is_dns_address(config: &GatewayConfig, ip: IpAddr) -> bool {
    ip == IpAddr::V4(config.dns) || ip == IpAddr::V6(config.ipv6_dns)
}

/// Where a guest's packet to `dst` goes on the host, if it may go anywhere.
pub fn host_side_address(config: &GatewayConfig, dst: IpAddr) -> Result<IpAddr, GatewayDropReason> {
    match dst {
        IpAddr::V4(dst) => host_side_ipv4(config, dst).map(IpAddr::V4),
        IpAddr::V6(dst) => host_side_ipv6(config, dst).map(IpAddr::V6),
    }
}

/// Where a guest's IPv4 packet to `dst` goes on the host, if it may go anywhere. The
/// egress policy (and `restrict=on`, its default) is the caller's to apply first.
pub fn host_side_ipv4(config: &GatewayConfig, dst: Ipv4Addr) -> Result<Ipv4Addr, GatewayDropReason> {
    if dst == config.host {
        return if config.host_loopback {
            Ok(Ipv4Addr::LOCALHOST)
        } else {
            Err(GatewayDropReason::Restricted)
        };
    }
    if config.contains(dst) {
        return Err(GatewayDropReason::NotForGateway);
    }
    // The host's own loopback is reachable only as the host address (and only with
    // host-loopback=on); "this network", broadcast and multicast never leave.
    if dst.is_loopback()
        || dst.is_unspecified()
        || dst.octets()[0] == 0
        || dst.is_broadcast()
        || dst.is_multicast()
    {
        return Err(GatewayDropReason::Restricted);
    }
    Ok(dst)
}

/// Where a guest's IPv6 packet to `dst` goes on the host, if it may go anywhere: the
/// gateway's address is the host's ::1 (with host-loopback=on); loopback, link-local,
/// multicast and IPv4-mapped addresses (which would reach the host's IPv4 loopback)
/// never leave.
fn host_side_ipv6(config: &GatewayConfig, dst: Ipv6Addr) -> Result<Ipv6Addr, GatewayDropReason> {
    if dst == config.ipv6_host {
        return if config.host_loopback {
            Ok(Ipv6Addr::LOCALHOST)
        } else {
            Err(GatewayDropReason::Restricted)
        };
    }
    if config.contains_ipv6(dst) {
        return Err(GatewayDropReason::NotForGateway);
    }
    let link_local = dst.segments()[0] & 0xffc0 == 0xfe80;
    if dst.is_loopback()
        || dst.is_unspecified()
        || dst.is_multicast()
        || link_local
        || dst.to_ipv4_mapped().is_some()
    {
        return Err(GatewayDropReason::Restricted);
    }
    Ok(dst)
}
