//! Why the gateway dropped what it dropped: one typed reason per drop, each counted.
//!
//! Nothing here knows how a packet was parsed; handlers report a reason and this file
//! keeps the tally.

use std::fmt;

/// Why the gateway did not act on a frame or a host datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayDropReason {
    /// Truncated header, wrong length field, or an option running past the packet.
    Malformed,
    /// An IPv4, UDP or ICMP checksum did not match.
    BadChecksum,
    /// Addressed to another station (the switch floods unknown unicast here too).
    NotForGateway,
    /// An IPv4 fragment or an IPv6 packet with a fragment header; the gateway does not
    /// reassemble.
    Fragment,
    /// A protocol or message the gateway does not serve.
    Unsupported,
    /// UDP to a broadcast or multicast address other than DHCP; never leaked out.
    Broadcast,
    /// Refused by `restrict=on` or `host-loopback=off`.
    Restricted,
    /// Refused by an egress policy rule (`deny=`); TCP got RST, UDP and ICMP
    /// "administratively prohibited".
    PolicyDenied,
    /// The flow table is full (`max-flows`).
    FlowLimit,
    /// The guest, or its port, holds as many flows of the kind as its budget allows
    /// (`guest-max-*`, `port-max-flows`); it was refused with RST, ICMP or SERVFAIL.
    GuestBudget,
    /// A host socket could not be opened or written.
    HostSocket,
    /// A TCP connection's host socket failed while it was open (reset, timed out, out of
    /// descriptors or buffers): the connection ended, and its guest got RST or the ICMP
    /// error the host received.
    HostError,
    /// A reply for a guest whose MAC address is not known.
    UnknownGuest,
    /// A host datagram for a flow that no longer exists, or a guest TCP segment that
    /// belongs to no connection (answered with RST).
    UnknownFlow,
    /// A DHCP message whose client hardware address is not the frame's source.
    DhcpRefused,
    /// A source address the guest may not use: outside the network (other than a DHCP
    /// client's 0.0.0.0), one of the gateway's, or one another guest holds.
    Spoofed,
    /// Too large: a reply above what one IP packet carries, or a guest's IPv6 packet
    /// above the MTU (answered with Packet Too Big).
    TooLarge,
    /// IPv4 with `ipv4=off`, or IPv6 with `ipv6=off`.
    FamilyOff,
    /// IPv6 extension headers the gateway will not act on: more than it walks, a
    /// hop-by-hop header not first, padding longer than an option area needs, or an
    /// unknown option whose type says to discard the packet.
    ExtensionHeader,
    /// An IPv6 routing header with segments left: the guest asks the gateway to pass the
    /// packet on to another address it names (source routing), which it never does.
    SourceRoute,
    /// An IPv6 jumbogram (a jumbo payload option, or a payload length of 0 before a
    /// hop-by-hop header): larger than any link here carries.
    Jumbogram,
}

impl GatewayDropReason {
    /// Every reason, in counter order.
    pub const ALL: [GatewayDropReason; 21] = [
        GatewayDropReason::Malformed,
        GatewayDropReason::BadChecksum,
        GatewayDropReason::NotForGateway,
        GatewayDropReason::Fragment,
        GatewayDropReason::Unsupported,
        GatewayDropReason::Broadcast,
        GatewayDropReason::Restricted,
        GatewayDropReason::PolicyDenied,
        GatewayDropReason::FlowLimit,
        GatewayDropReason::GuestBudget,
        GatewayDropReason::HostSocket,
        GatewayDropReason::HostError,
        GatewayDropReason::UnknownGuest,
        GatewayDropReason::UnknownFlow,
        GatewayDropReason::DhcpRefused,
        GatewayDropReason::Spoofed,
        GatewayDropReason::TooLarge,
        GatewayDropReason::FamilyOff,
        GatewayDropReason::ExtensionHeader,
        GatewayDropReason::SourceRoute,
        GatewayDropReason::Jumbogram,
    ];

    /// A short name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            GatewayDropReason::Malformed => "malformed",
            GatewayDropReason::BadChecksum => "bad_checksum",
            GatewayDropReason::NotForGateway => "not_for_gateway",
            GatewayDropReason::Fragment => "fragment",
            GatewayDropReason::Unsupported => "unsupported",
            GatewayDropReason::Broadcast => "broadcast",
            GatewayDropReason::Restricted => "restricted",
            GatewayDropReason::PolicyDenied => "policy_denied",
            GatewayDropReason::FlowLimit => "flow_limit",
            GatewayDropReason::GuestBudget => "guest_budget",
            GatewayDropReason::HostSocket => "host_socket",
            GatewayDropReason::HostError => "host_error",
            GatewayDropReason::UnknownGuest => "unknown_guest",
            GatewayDropReason::UnknownFlow => "unknown_flow",
            GatewayDropReason::DhcpRefused => "dhcp_refused",
            GatewayDropReason::Spoofed => "spoofed",
            GatewayDropReason::TooLarge => "too_large",
            GatewayDropReason::FamilyOff => "family_off",
            GatewayDropReason::ExtensionHeader => "extension_header",
            GatewayDropReason::SourceRoute => "source_route",
            GatewayDropReason::Jumbogram => "jumbogram",
        }
    }
}

/// Drops by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewayCounters {
    drops: [u64; GatewayDropReason::ALL.len()],
}

impl GatewayCounters {
    /// How many drops had `reason`.
    pub fn drops(&self, reason: GatewayDropReason) -> u64 {
        self.drops[reason as usize]
    }

    pub(crate) fn record(&mut self, reason: GatewayDropReason) {
        self.drops[reason as usize] += 1;
    }
}

impl fmt::Display for GatewayCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for reason in GatewayDropReason::ALL {
            let count = self.drops(reason);
            if count > 0 {
                write!(f, "{}drop.{}={count}", if first { "" } else { " " }, reason.name())?;
                first = false;
            }
        }
        if first {
            write!(f, "no drops")?;
        }
        Ok(())
    }
}
