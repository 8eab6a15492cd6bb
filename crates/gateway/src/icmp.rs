//! ICMP: echo requests to the gateway's own addresses are answered here; echo requests
//! to anywhere else, of either family, go out through one unprivileged ping socket per
//! (guest, identifier, destination), whose replies come back with the guest's identifier
//! restored; and the
//! unreachable and time exceeded errors the host got about a guest's UDP or TCP packets
//! are turned into the same errors for the guest.
//!
//! Where the host allows no ping sockets (net.ipv4.ping_group_range), a raw ICMP socket
//! is used if vnet may open one; if neither is possible there is one log line, and the
//! requests are dropped and counted. This file knows the [`HostSockets`] calls,
//! nothing of real sockets.

use foldhash::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    Icmpv4DstUnreachable, Icmpv4Message, Icmpv4Packet, Icmpv4Repr, Icmpv4TimeExceeded, IpProtocol, Ipv4Repr,
};
use tracing::warn;
use vnet_wire::MacAddress;

use crate::budget::FlowKind;
use crate::config::GatewayConfig;
use crate::counters::GatewayDropReason;
use crate::flows::{FlowId, FlowIds, FlowMap};
use crate::guest::{EchoRequest, GuestPacket};
use crate::host::{HostSockets, IcmpSocketKind};
use crate::inspect::{FlowProtocol, FlowSummary};
use crate::packet;
use crate::packet::BuiltFrame;
use crate::timers::Deadlines;

/// How long an echo flow lives without requests or replies.
const ECHO_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Parses an ICMP message from a guest, which must be a well-formed echo request.
pub fn parse_echo_request(bytes: &[u8]) -> Result<EchoRequest, GatewayDropReason> {
    let icmp = Icmpv4Packet::new_checked(bytes).map_err(|_| GatewayDropReason::Malformed)?;
    if !icmp.verify_checksum() {
        return Err(GatewayDropReason::BadChecksum);
    }
    match Icmpv4Repr::parse(&icmp, &ChecksumCapabilities::default())
        .map_err(|_| GatewayDropReason::Unsupported)?
    {
        Icmpv4Repr::EchoRequest { ident, seq_no, data } => {
            Ok(EchoRequest { ident, seq_no, data: data.to_vec() })
        }
        _ => Err(GatewayDropReason::Unsupported),
    }
}

/// The gateway's own answer to an echo request to one of its addresses.
pub fn echo_reply(config: &GatewayConfig, guest: GuestPacket<Ipv4Addr>, echo: &EchoRequest) -> BuiltFrame {
    let reply = Icmpv4Repr::EchoReply { ident: echo.ident, seq_no: echo.seq_no, data: &echo.data };
    packet::icmp(config.mac(), guest.mac, guest.dst, guest.src, &reply)
}

#[derive(Debug)]
struct EchoFlow {
    guest_mac: MacAddress,
    guest: IpAddr,
    ident: u16,
    /// The address the guest pinged (the host address for host loopback).
    dst: IpAddr,
    kind: IcmpSocketKind,
    last_used: Instant,
}

/// Echo flows through ping sockets.
#[derive(Debug, Default)]
pub struct EchoFlows {
    by_key: HashMap<(IpAddr, u16, IpAddr), FlowId>,
    flows: FlowMap<EchoFlow>,
    idle_checks: Deadlines<FlowId>,
    reported_denied: bool,
}

impl EchoFlows {
    /// How many flows exist.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// One line per flow, for inspection.
    pub fn summaries(&self, now: Instant) -> impl Iterator<Item = FlowSummary> + '_ {
        self.flows.values().map(move |flow| FlowSummary {
            protocol: FlowProtocol::Icmp,
            guest: SocketAddr::from((flow.guest, flow.ident)),
            destination: SocketAddr::from((flow.dst, 0)),
            host_side: None,
            state: "open",
            idle: Some(now.saturating_duration_since(flow.last_used)),
        })
    }

    /// Sends a guest's echo request (`bytes`, already parsed as `echo`) to `remote`, of
    /// the same family.
    #[allow(clippy::too_many_arguments)]
    pub fn send(
        &mut self,
        guest: GuestPacket,
        remote: IpAddr,
        echo: &EchoRequest,
        bytes: &[u8],
        room_for_new: bool,
        now: Instant,
        host: &mut dyn HostSockets,
        flows: &mut FlowIds,
    ) -> Result<(), GatewayDropReason> {
        let key = (guest.src, echo.ident, guest.dst);
        let flow = match self.by_key.get(&key) {
            Some(flow) => *flow,
            None => {
                if !room_for_new {
                    return Err(GatewayDropReason::FlowLimit);
                }
                let flow =
                    flows.open(guest.guest(), FlowKind::Icmp).map_err(|_| GatewayDropReason::GuestBudget)?;
                let kind = match host.icmp_open(flow, remote) {
                    Ok(kind) => kind,
                    Err(e) => {
                        flows.release(flow);
                        if !self.reported_denied {
                            self.reported_denied = true;
                            warn!(error = %e, "neither a ping socket nor a raw socket can be opened; guests' pings beyond the gateway are dropped (see net.ipv4.ping_group_range)");
                        }
                        return Err(GatewayDropReason::HostSocket);
                    }
                };
                self.by_key.insert(key, flow);
                let entry = EchoFlow {
                    guest_mac: guest.mac,
                    guest: guest.src,
                    ident: echo.ident,
                    dst: guest.dst,
                    kind,
                    last_used: now,
                };
                self.flows.insert(flow, entry);
                self.idle_checks.schedule(now + ECHO_IDLE_TIMEOUT, flow);
                flow
            }
        };
        if let Some(entry) = self.flows.get_mut(flow) {
            entry.last_used = now;
        }
        host.datagram_send(flow, bytes).map_err(|_| GatewayDropReason::HostSocket)
    }

    /// An echo reply arrived on `flow`'s ping socket: the frame for the guest, with the
    /// guest's identifier back in place.
    pub fn on_reply(
        &mut self,
        config: &GatewayConfig,
        flow: FlowId,
        bytes: &[u8],
        now: Instant,
    ) -> Option<BuiltFrame> {
        let entry = self.flows.get_mut(flow)?;
        entry.last_used = now;
        let (ident, reply) = match (entry.guest, entry.dst) {
            (IpAddr::V4(guest), IpAddr::V4(dst)) => {
                let icmp = Icmpv4Packet::new_checked(bytes).ok()?;
                let Icmpv4Repr::EchoReply { ident, seq_no, data } =
                    Icmpv4Repr::parse(&icmp, &ChecksumCapabilities::ignored()).ok()?
                else {
                    return None;
                };
                let reply = Icmpv4Repr::EchoReply { ident: entry.ident, seq_no, data };
                (ident, packet::icmp(config.mac(), entry.guest_mac, dst, guest, &reply))
            }
            (IpAddr::V6(guest), IpAddr::V6(dst)) => {
                let ident = crate::icmpv6::echo_reply_ident(bytes)?;
                (
                    ident,
                    crate::icmpv6::relayed_echo_reply(
                        config,
                        bytes,
                        entry.ident,
                        entry.guest_mac,
                        dst,
                        guest,
                    ),
                )
            }
            _ => return None,
        };
        if entry.kind == IcmpSocketKind::Raw && ident != entry.ident {
            return None; // a raw socket sees every reply from the remote, not only ours
        }
        Some(reply)
    }

    /// When an echo flow may have been idle too long.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.idle_checks.next()
    }

    /// Closes idle echo flows; a flow used since it was scheduled is looked at again
    /// later.
    pub fn expire(&mut self, now: Instant, host: &mut dyn HostSockets, ids: &mut FlowIds) {
        loop {
            let flows = &self.flows;
            let Some(id) =
                self.idle_checks.pop_idle(now, ECHO_IDLE_TIMEOUT, |id| flows.get(id).map(|f| f.last_used))
            else {
                break;
            };
            self.close(id, host, ids);
        }
    }

    /// Closes echo flow `id` and its host socket, if it is one of this table's.
    pub fn close(&mut self, id: FlowId, host: &mut dyn HostSockets, ids: &mut FlowIds) {
        if let Some(flow) = self.flows.remove(id) {
            self.by_key.remove(&(flow.guest, flow.ident, flow.dst));
            host.datagram_close(id);
            ids.release(id);
        }
    }
}

/// What an ICMP or ICMPv6 error says about a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcmpErrorKind {
    /// Destination unreachable, with its reason (net, host, port, ...).
    Unreachable(Icmpv4DstUnreachable),
    /// ICMPv6 destination unreachable, with its code (no route, address, port, ...).
    Unreachable6(u8),
    /// Time exceeded in transit: a router on the way used up the packet's TTL or hop
    /// limit.
    TimeExceeded,
}

/// ICMPv6 destination unreachable codes.
const NO_ROUTE: u8 = 0;
const ADDRESS_UNREACHABLE: u8 = 3;
const PORT_UNREACHABLE: u8 = 4;

/// Most bytes of a datagram's payload that an error about it quotes to the guest:
/// enough for traceroute, which matches its probes by the identifier and sequence
/// number at the start of the payload.
const QUOTED_PAYLOAD: usize = 32;

/// The start of the packet an ICMP error is about, as the guest sent it: its transport
/// header's first eight bytes, and up to [`QUOTED_PAYLOAD`] bytes after them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quoted {
    bytes: [u8; 8 + QUOTED_PAYLOAD],
    len: usize,
}

impl Quoted {
    /// The first bytes of `transport`, as many as are quoted.
    pub fn of(transport: &[u8]) -> Self {
        let mut quoted = Self { bytes: [0; 8 + QUOTED_PAYLOAD], len: 0 };
        quoted.extend(transport);
        quoted
    }

    /// Appends as much of `bytes` as there is room for.
    fn extend(&mut self, bytes: &[u8]) {
        let len = bytes.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + len].copy_from_slice(&bytes[..len]);
        self.len += len;
    }

    /// The quoted bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// An ICMP error the host received about one of a flow's packets (from the socket's
/// error queue): who sent it, what it says, and the start of the payload it is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostIcmpError {
    /// The router or destination that sent the error.
    pub from: IpAddr,
    /// What it says.
    pub kind: IcmpErrorKind,
    /// The start of the datagram's payload, as the error queue gave it back.
    pub payload: Quoted,
}

impl HostIcmpError {
    /// The error an ICMP message of `icmp_type` and `code` from `from` stands for, if it
    /// is a destination unreachable or a time exceeded message.
    pub fn from_message(from: Ipv4Addr, icmp_type: u8, code: u8) -> Option<Self> {
        let kind = match Icmpv4Message::from(icmp_type) {
            Icmpv4Message::DstUnreachable => IcmpErrorKind::Unreachable(Icmpv4DstUnreachable::from(code)),
            Icmpv4Message::TimeExceeded => IcmpErrorKind::TimeExceeded,
            _ => return None,
        };
        Some(Self { from: IpAddr::V4(from), kind, payload: Quoted::of(&[]) })
    }

    /// The error an ICMPv6 message of `icmp_type` and `code` from `from` stands for, if
    /// it is a destination unreachable or a time exceeded message.
    pub fn from_icmpv6_message(from: Ipv6Addr, icmp_type: u8, code: u8) -> Option<Self> {
        let kind = match icmp_type {
            1 => IcmpErrorKind::Unreachable6(code),
            3 => IcmpErrorKind::TimeExceeded,
            _ => return None,
        };
        Some(Self { from: IpAddr::V6(from), kind, payload: Quoted::of(&[]) })
    }

    /// The same error, quoting the start of `payload`, the datagram it is about.
    pub fn quoting(mut self, payload: &[u8]) -> Self {
        self.payload = Quoted::of(payload);
        self
    }
}

/// The unreachable an errno from a connected host socket of `ipv6`'s family stands for,
/// if it stands for one: without the error queue, the kernel reports ICMP errors this
/// way.
pub fn unreachable_from_errno(error: &io::Error, ipv6: bool) -> Option<IcmpErrorKind> {
    let (reason, code) = match error.kind() {
        io::ErrorKind::ConnectionRefused => (Icmpv4DstUnreachable::PortUnreachable, PORT_UNREACHABLE),
        io::ErrorKind::HostUnreachable => (Icmpv4DstUnreachable::HostUnreachable, ADDRESS_UNREACHABLE),
        io::ErrorKind::NetworkUnreachable => (Icmpv4DstUnreachable::NetUnreachable, NO_ROUTE),
        _ => return None,
    };
    Some(if ipv6 { IcmpErrorKind::Unreachable6(code) } else { IcmpErrorKind::Unreachable(reason) })
}

/// An ICMP error to tell a guest about one of its packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestError {
    /// The guest's address, which the packet came from.
    pub guest: IpAddr,
    /// The address the guest sent the packet to.
    pub dst: IpAddr,
    /// The packet's transport protocol.
    pub protocol: IpProtocol,
    /// The start of the packet's transport header and payload, as the guest sent them.
    pub quoted: Quoted,
    /// Who reports the error as the guest sees it: a router on the way, or `dst`.
    pub from: IpAddr,
    /// What the error says.
    pub kind: IcmpErrorKind,
}

impl GuestError {
    /// The error for a guest's packet to `dst` that went to `remote` on the host, from
    /// what the host socket reported: the ICMP error the host received if it read one
    /// (a report from `remote` itself is shown as coming from `dst`), else the
    /// unreachable the errno stands for, as if from `dst`.
    pub fn from_host(
        guest: IpAddr,
        dst: IpAddr,
        remote: IpAddr,
        protocol: IpProtocol,
        transport_header: [u8; 8],
        icmp: Option<HostIcmpError>,
        errno: &io::Error,
    ) -> Option<Self> {
        let mut quoted = Quoted::of(&transport_header);
        if let Some(icmp) = icmp {
            quoted.extend(icmp.payload.as_slice());
        }
        let (from, kind) = match icmp {
            Some(icmp) if icmp.from == remote => (dst, icmp.kind),
            Some(icmp) => (icmp.from, icmp.kind),
            None => (dst, unreachable_from_errno(errno, dst.is_ipv6())?),
        };
        Some(Self { guest, dst, protocol, quoted, from, kind })
    }

    /// The gateway's refusal of a guest's packet from `guest` to `dst` that would open a
    /// flow its budget has no room for: communication administratively prohibited, from
    /// the gateway at `gateway`, quoting the first eight bytes of `transport`.
    pub fn prohibited(
        gateway: Ipv4Addr,
        guest: Ipv4Addr,
        dst: Ipv4Addr,
        protocol: IpProtocol,
        transport: &[u8],
    ) -> Self {
        let kind = IcmpErrorKind::Unreachable(Icmpv4DstUnreachable::CommProhibited);
        let quoted = Quoted::of(transport);
        Self { guest: guest.into(), dst: dst.into(), protocol, quoted, from: gateway.into(), kind }
    }
}

/// The ICMP or ICMPv6 message that tells the guest at `guest_mac` about `error`,
/// quoting the packet's IP header and the first eight bytes of its transport header.
pub fn error_for_guest(
    config: &GatewayConfig,
    guest_mac: MacAddress,
    error: &GuestError,
) -> Option<BuiltFrame> {
    match (error.guest, error.dst, error.from) {
        (IpAddr::V4(guest), IpAddr::V4(dst), IpAddr::V4(from)) => {
            Some(ipv4_error_for_guest(config, guest_mac, error, guest, dst, from))
        }
        (IpAddr::V6(guest), IpAddr::V6(dst), IpAddr::V6(from)) => {
            let (icmp_type, code) = match error.kind {
                IcmpErrorKind::Unreachable6(code) => (1, code),
                IcmpErrorKind::TimeExceeded => (3, 0),
                IcmpErrorKind::Unreachable(_) => return None,
            };
            let offending = crate::icmpv6::Offending {
                guest,
                dst,
                hop_limit: 64,
                protocol: error.protocol,
                transport: error.quoted.as_slice(),
            };
            Some(crate::icmpv6::error_from(config, guest_mac, from, icmp_type, code, offending))
        }
        _ => None,
    }
}

fn ipv4_error_for_guest(
    config: &GatewayConfig,
    guest_mac: MacAddress,
    error: &GuestError,
    guest: Ipv4Addr,
    dst: Ipv4Addr,
    from: Ipv4Addr,
) -> BuiltFrame {
    let header = Ipv4Repr {
        src_addr: guest,
        dst_addr: dst,
        next_header: error.protocol,
        payload_len: error.quoted.as_slice().len(),
        hop_limit: 64,
    };
    let data = error.quoted.as_slice();
    let message = match error.kind {
        IcmpErrorKind::Unreachable(reason) => Icmpv4Repr::DstUnreachable { reason, header, data },
        IcmpErrorKind::Unreachable6(_) | IcmpErrorKind::TimeExceeded => {
            Icmpv4Repr::TimeExceeded { reason: Icmpv4TimeExceeded::TtlExpired, header, data }
        }
    };
    packet::icmp(config.mac(), guest_mac, from, guest, &message)
}

/// A time exceeded message from the gateway, as the router whose hop the guest's packet
/// used up: its IPv4 header and the first eight bytes of its payload.
pub fn time_exceeded(
    config: &GatewayConfig,
    guest: GuestPacket<Ipv4Addr>,
    header: &Ipv4Repr,
    payload: &[u8],
) -> BuiltFrame {
    let quoted = &payload[..payload.len().min(8)];
    let header = Ipv4Repr { payload_len: quoted.len(), ..*header };
    let message = Icmpv4Repr::TimeExceeded { reason: Icmpv4TimeExceeded::TtlExpired, header, data: quoted };
    packet::icmp(config.mac(), guest.mac, config.host, guest.src, &message)
}
