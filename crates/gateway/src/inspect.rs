//! What the gateway shows of itself to an operator: leases and flows, as plain values
//! that the control layer turns into tables and JSON. Nothing here changes the gateway
//! or knows how it is displayed.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use vnet_wire::MacAddress;

/// One DHCP or DHCPv6 lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The guest's MAC address.
    pub mac: MacAddress,
    /// The address it has.
    pub ip: IpAddr,
    /// Given by `dhcp-host=` rather than from the pool.
    pub fixed: bool,
}

/// The protocol of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FlowProtocol {
    /// A TCP connection.
    Tcp,
    /// A UDP flow.
    Udp,
    /// Pings with one identifier.
    Icmp,
}

impl FlowProtocol {
    /// Lower-case name, as in tables and metrics.
    pub fn name(self) -> &'static str {
        match self {
            FlowProtocol::Tcp => "tcp",
            FlowProtocol::Udp => "udp",
            FlowProtocol::Icmp => "icmp",
        }
    }
}

/// One flow through the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowSummary {
    /// TCP, UDP or ICMP.
    pub protocol: FlowProtocol,
    /// The guest's end (for ICMP, port is the echo identifier).
    pub guest: SocketAddr,
    /// The address the guest talks to, as the guest sees it (the gateway's own address
    /// for connections from the host).
    pub destination: SocketAddr,
    /// Where the traffic really goes on the host, when that differs or is known.
    pub host_side: Option<SocketAddr>,
    /// Connection state, such as `established`.
    pub state: &'static str,
    /// Time since the flow last carried traffic, where the gateway keeps it.
    pub idle: Option<Duration>,
}

/// How many flows of each kind exist.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowCounts {
    /// TCP connections.
    pub tcp: usize,
    /// UDP flows.
    pub udp: usize,
    /// Ping flows.
    pub icmp: usize,
    /// DNS queries waiting for an upstream.
    pub dns: usize,
}
