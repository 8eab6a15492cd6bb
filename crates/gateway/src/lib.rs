//! vnet's user-mode gateway: a host on the segment that gives every guest what QEMU's
//! `-netdev user` gives one guest: ARP, DHCP, DNS, ICMP echo and NAT to the host and
//! beyond through ordinary host sockets.
//!
//! The core is sans-IO. Frames from the segment go in with [`Gateway::receive`]; frames
//! for the segment come out of [`Gateway::pop_frame`]; host sockets sit behind the narrow
//! [`HostSockets`] interface (room toward guests behind [`GuestEgress`]), and what they deliver comes back in through the `on_*`
//! calls (datagrams, errors, TCP readiness, hostfwd clients); timers run in
//! [`Gateway::on_deadline`]. Time is passed in. Each
//! protocol has a file of its own. Nothing here knows about the switch, epoll or how
//! frames reach the segment.
//!
//! A guest's TTL below [`NORMAL_TTL`] is carried to its host socket, less the gateway's own
//! hop, and the unreachable and time exceeded errors the host gets back reach the guest
//! from the router that sent them, so traceroute works through the gateway.
//!
//! IPv6 beside IPv4: neighbour discovery, router advertisements (SLAAC, MTU, DNS),
//! DHCPv6, echo, and UDP, DNS and TCP NAT. Not served yet: ICMP errors about echo
//! requests, ICMPv6 errors from the host, and fragments (dropped and counted).

mod arp;
mod budget;
mod config;
mod counters;
mod dhcp;
mod dhcpv6;
mod dispatch;
mod dns;
mod egress;
pub mod extension_headers;
mod flows;
mod gateway;
mod guest;
mod host;
mod icmp;
mod icmpv6;
mod inspect;
mod lent;
mod names;
mod ndp;
mod packet;
pub mod policy;
mod resolved;
mod route;
mod tcp;
mod tftp;
mod timers;
mod udp;

pub use budget::{Budgets, FlowKind, GuestUsage};
pub use config::{
    resolv_conf_nameservers, ForwardProtocol, GatewayConfig, GuestForward, GuestForwardTarget, GuestLimits,
    HostForward, StaticLease,
};
pub use counters::{GatewayCounters, GatewayDropReason};
pub use egress::{EgressRoom, GatewayIo, GuestEgress};
pub use flows::{FlowId, FlowMap};
pub use gateway::Gateway;
pub use guest::Guest;
pub use host::{ForwardId, HostSockets, IcmpSocketKind};
pub use icmp::{HostIcmpError, IcmpErrorKind};
pub use inspect::{FlowCounts, FlowProtocol, FlowSummary, Lease};
pub use names::is_valid_label;
pub use route::NORMAL_TTL;

#[cfg(test)]
mod tests;
