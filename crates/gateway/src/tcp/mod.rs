//! TCP NAT that mirrors the host socket instead of keeping a second copy of the data
//! (REFERENCE §4).
//!
//! Guest to host: an in-order segment's payload is written to the host socket and the
//! guest's ACK covers only what the socket took; the window offered to the guest is the
//! socket's free send space. Host to guest: data stays in the socket's receive queue; it
//! is peeked at the offset of the first unsent byte, cut into segments of the guest's MSS
//! within its window, and consumed only once the guest acknowledges it. A peek lands
//! straight in the payload room of the pooled frames that carry the data, with the
//! headers written in front afterwards, so the bytes are copied once, by the kernel. A
//! timeout sends again from the last acknowledged byte, peeking again. vnet therefore
//! holds no payload beyond the frames in flight.
//!
//! Connections from the guest are connected on the host first; the SYN-ACK goes to the
//! guest only when the host's connect completes. A refusal becomes RST; an unreachable
//! or time exceeded error becomes that ICMP error, quoting the guest's SYN. A connect
//! with more than one candidate (DNS over TCP to the upstreams) moves on to the next when
//! one fails or stays silent for a while. FIN maps to `shutdown(SHUT_WR)` and RST to an
//! abortive close, both ways.
//!
//! This file holds the table of connections, its timers and the calls the gateway makes;
//! one connection's state and what the guest's segments do to it are in `connection.rs`,
//! sending toward the guest in `send.rs` within the congestion window of `congestion.rs`,
//! building segments in `segment.rs`, and opening
//! connections both ways in `connect.rs`. Every handler works with one [`Context`]
//! (`context.rs`). The files below this one import only files below them, never this
//! one. The module knows TCP and the [`crate::HostSockets`] calls, nothing of epoll or
//! the switch; addresses are of either IP family.

mod congestion;
mod connect;
mod connection;
mod context;
mod segment;
mod send;

use foldhash::{HashMap, HashMapExt};
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{TcpControl, TcpPacket, TcpRepr};
use tracing::info;
use vnet_wire::MacAddress;

use crate::counters::GatewayDropReason;
use crate::flows::{FlowId, FlowMap};
use crate::guest::GuestPacket;
use crate::icmp::HostIcmpError;
use crate::inspect::{FlowProtocol, FlowSummary};
use crate::timers::Deadlines;

pub use connect::ConnectTarget;
use connect::NewConnection;
use connection::{Connection, State, CLOSING_TIMEOUT, MAX_HANDSHAKE_RETRANSMITS, MAX_RETRANSMITS, MAX_RTO};
pub(crate) use context::Context;
use send::Sender;

/// Ports of the gateway's address that inbound (hostfwd) connections come from.
const INBOUND_PORTS: std::ops::RangeInclusive<u16> = 49152..=65534;

/// The TCP connections of one gateway.
pub struct Nat {
    by_tuple: HashMap<(SocketAddr, SocketAddr), FlowId>,
    connections: FlowMap<Box<Connection>>,
    timers: Deadlines<FlowId>,
    sender: Sender,
    /// A per-gateway random key, so initial sequence numbers cannot be guessed.
    isn_key: RandomState,
    connections_made: u64,
    next_inbound_port: u16,
}

impl Nat {
    /// An empty table.
    pub fn new() -> Self {
        Self {
            by_tuple: HashMap::new(),
            connections: FlowMap::default(),
            timers: Deadlines::default(),
            sender: Sender::default(),
            isn_key: RandomState::new(),
            connections_made: 0,
            next_inbound_port: 0,
        }
    }

    /// How many connections exist.
    pub fn len(&self) -> usize {
        self.connections.len()
    }

    /// One line per connection, for inspection.
    pub fn summaries(&self) -> Vec<FlowSummary> {
        self.connections
            .values()
            .map(|connection| FlowSummary {
                protocol: FlowProtocol::Tcp,
                guest: connection.guest,
                destination: connection.remote,
                host_side: connection.host_connect.as_ref().map(|connect| connect.remote),
                state: connection.state_name(),
                idle: None,
            })
            .collect()
    }

    /// Handles a TCP segment (`bytes`) in `packet` from a guest, whose checksum is not
    /// verified if the guest left it to be offloaded, then arms the connection's timer.
    /// `target` is where the host side connects for a new connection (already mapped and
    /// allowed by the caller), or why new connections are refused (restrict, flow limit),
    /// which the guest then learns by RST.
    pub fn on_guest_segment(
        &mut self,
        cx: &mut Context<'_>,
        packet: &GuestPacket,
        bytes: &[u8],
        target: impl FnOnce() -> Result<ConnectTarget, GatewayDropReason>,
    ) -> Result<(), GatewayDropReason> {
        let segment = TcpPacket::new_checked(bytes).map_err(|_| GatewayDropReason::Malformed)?;
        let checksums = if packet.checksum_offloaded {
            ChecksumCapabilities::ignored()
        } else {
            ChecksumCapabilities::default()
        };
        let (src, dst) = (packet.src, packet.dst);
        let repr = TcpRepr::parse(&segment, &src.into(), &dst.into(), &checksums)
            .map_err(|_| GatewayDropReason::Malformed)?;
        let guest = SocketAddr::new(src, repr.src_port);
        let dst = SocketAddr::new(dst, repr.dst_port);
        let Some(&flow) = self.by_tuple.get(&(guest, dst)) else {
            let new = NewConnection { sender: packet.guest(), guest_mac: packet.mac, guest, dst };
            let isn = self.next_isn(guest, dst);
            if let Some(connection) = new.open(cx, &repr, target, isn)? {
                self.insert(connection, cx.now);
            }
            return Ok(());
        };
        let result = self.on_connection_segment(cx, flow, &repr);
        self.settle(flow, cx);
        result
    }

    /// A segment from the guest on connection `flow`.
    fn on_connection_segment(
        &mut self,
        cx: &mut Context<'_>,
        flow: FlowId,
        repr: &TcpRepr<'_>,
    ) -> Result<(), GatewayDropReason> {
        let Some(connection) = self.connections.get_mut(flow) else {
            return Err(GatewayDropReason::UnknownFlow);
        };
        if repr.control == TcpControl::Rst {
            // Only a reset at the expected sequence number counts (RFC 5961), so a
            // guest cannot kill another's connection by guessing its ports.
            let in_handshake = matches!(connection.state, State::SynSent | State::Connecting);
            if !in_handshake && repr.seq_number.0 as u32 != connection.rcv_nxt {
                return Err(GatewayDropReason::Malformed);
            }
            info!(guest = %connection.guest, remote = %connection.remote, reason = "guest reset", "connection dropped");
            connection.failed = true;
            return Ok(());
        }
        if connection.state == State::SynSent && repr.control != TcpControl::Syn {
            return Ok(()); // nothing but a SYN-ACK makes sense before the handshake
        }
        if repr.control == TcpControl::Syn {
            return connection.on_syn(cx, repr, &mut self.sender);
        }
        if connection.state != State::Established && connection.state != State::SynAckSent {
            return Ok(()); // no data before the host side is connected
        }
        if repr.ack_number.is_some() {
            if let Err(reason) = connection.on_ack(cx, repr) {
                cx.out.extend(connection.reset(cx.config));
                connection.failed = true;
                return Err(reason);
            }
        }
        if connection.is_probe(repr) {
            connection.send_ack(cx);
        } else if !repr.payload.is_empty() || repr.control == TcpControl::Fin {
            connection.on_guest_data(cx, repr);
            connection.acknowledge_guest_data(cx, repr);
        }
        connection.send_pending(cx, &mut self.sender);
        Ok(())
    }

    /// A host client connected to a hostfwd port, and its socket is `flow`: connect to
    /// `guest` from `client` (the client's own address, when the guest may see it and
    /// no connection uses it), else from the gateway's address and a port of its own.
    /// False if no port is free for that guest.
    pub fn on_inbound(
        &mut self,
        cx: &mut Context<'_>,
        flow: FlowId,
        guest_mac: MacAddress,
        guest: SocketAddr,
        client: Option<SocketAddr>,
    ) -> bool {
        let client = client.filter(|client| !self.by_tuple.contains_key(&(guest, *client)));
        let Some(apparent) =
            client.or_else(|| self.free_apparent_address(cx.config.host_address_for(guest.ip()), guest))
        else {
            return false;
        };
        let isn = self.next_isn(guest, apparent);
        let connection = Connection::inbound(cx, flow, guest_mac, guest, apparent, isn);
        self.insert(connection, cx.now);
        true
    }

    /// The host connect of `flow` completed: answer the guest's SYN.
    pub fn on_connected(&mut self, cx: &mut Context<'_>, flow: FlowId) {
        if let Some(connection) = self.connections.get_mut(flow) {
            connection.on_connected(cx);
            self.arm(flow, cx.now);
        }
    }

    /// `flow`'s host socket failed (connect refused, unreachable or timed out; reset):
    /// a connect moves on to its next candidate, or the guest learns and the flow goes.
    pub fn on_host_error(
        &mut self,
        cx: &mut Context<'_>,
        flow: FlowId,
        error: &io::Error,
        icmp: Option<HostIcmpError>,
    ) {
        if let Some(connection) = self.connections.get_mut(flow) {
            connection.on_host_error(cx, error, icmp);
            self.settle(flow, cx);
        }
    }

    /// `flow`'s host socket has data (or EOF): send what the guest's window allows.
    pub fn on_host_readable(&mut self, cx: &mut Context<'_>, flow: FlowId) {
        if let Some(connection) = self.connections.get_mut(flow) {
            connection.host_unpeeked = true;
            connection.send_pending(cx, &mut self.sender);
            self.settle(flow, cx);
        }
    }

    /// `flow`'s host socket can take data again: if the guest was told the window is
    /// closed, tell it that it opened; if the socket refused part of a segment, ask the
    /// guest for it again.
    pub fn on_host_writable(&mut self, cx: &mut Context<'_>, flow: FlowId) {
        let Some(connection) = self.connections.get_mut(flow) else {
            return;
        };
        connection.reopen_window(cx);
        self.arm(flow, cx.now);
    }

    /// Whether data waits for room toward a guest.
    pub fn waits_for_guest_room(&self) -> bool {
        self.sender.waits_for_room()
    }

    /// Frames toward guests were delivered: go on sending what waited for room.
    pub fn on_guest_room(&mut self, cx: &mut Context<'_>) {
        let mut resuming = self.sender.take_blocked();
        for flow in resuming.drain(..) {
            if let Some(connection) = self.connections.get_mut(flow) {
                connection.waits_for_room = false;
                connection.send_pending(cx, &mut self.sender);
                self.settle(flow, cx);
            }
        }
        self.sender.give_back(resuming);
    }

    /// When a connection may want a retransmission, a connect fail-over or to be given
    /// up while closing.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// Makes sure `flow` comes out of the timer heap no later than its deadline, and that
    /// a window told closed is looked at again soon.
    fn arm(&mut self, flow: FlowId, now: Instant) {
        let Some(connection) = self.connections.get_mut(flow) else {
            return;
        };
        if let Some(deadline) = connection.arm(now) {
            self.timers.schedule(deadline, flow);
        }
        // An entry the connection moved away from (an ACK that an answer carried, a
        // retransmission timer pushed back) would wake the loop for nothing.
        let connections = &self.connections;
        self.timers.drop_stale(|at, flow| connections.get(flow).is_some_and(|c| c.timer_armed == Some(at)));
    }

    /// Retransmits from the last acknowledged byte where the guest has been silent too
    /// long, and drops connections stuck closing.
    pub fn expire(&mut self, cx: &mut Context<'_>) {
        while let Some((armed, flow)) = self.timers.pop_due(cx.now) {
            let Some(connection) = self.connections.get_mut(flow) else {
                continue;
            };
            if connection.timer_armed != Some(armed) {
                continue; // an entry the connection moved away from
            }
            connection.timer_armed = None;
            Self::on_timer(connection, cx, &mut self.sender);
            self.settle(flow, cx);
        }
    }

    /// `connection`'s timer went off: give it up if it is stuck closing or silent, look
    /// again at a window told closed, probe the guest's shut window, fail a slow connect
    /// over, or retransmit.
    fn on_timer(connection: &mut Connection, cx: &mut Context<'_>, sender: &mut Sender) {
        let now = cx.now;
        if connection.closing_since.is_some_and(|since| now >= since + CLOSING_TIMEOUT) {
            connection.failed = true;
            return;
        }
        connection.on_delayed_ack(cx);
        if connection.window_check_at.is_some_and(|at| at <= now) {
            connection.window_check_at = None;
            connection.reopen_window(cx);
            connection.back_off_window_recheck();
        }
        if connection.probe_at.is_some_and(|at| at <= now) {
            connection.probe_window(cx);
        }
        if connection.retransmit_at.is_none_or(|at| at > now) {
            return;
        }
        if connection.state == State::Connecting {
            // Only a connect with candidates left has a deadline: it took too long.
            if !connection.fail_over(cx) {
                cx.out.extend(connection.reset(cx.config));
                connection.failed = true;
            }
            return;
        }
        connection.retransmits += 1;
        let handshake = matches!(connection.state, State::SynSent | State::SynAckSent);
        let most = if handshake { MAX_HANDSHAKE_RETRANSMITS } else { MAX_RETRANSMITS };
        if connection.retransmits > most {
            info!(guest = %connection.guest, remote = %connection.remote, reason = "guest stopped answering", "connection dropped");
            cx.out.extend(connection.reset(cx.config));
            connection.failed = true;
            return;
        }
        connection.rto = (connection.rto * 2).min(MAX_RTO);
        connection.retransmit_at = Some(now + connection.rto);
        match connection.state {
            State::SynSent => cx.out.extend(connection.syn(cx.config, cx.host)),
            State::SynAckSent => cx.out.extend(connection.syn_ack(cx.config, cx.host)),
            State::Established => {
                connection.congestion.on_timeout(connection.in_flight());
                connection.rewind();
                connection.send_pending(cx, sender);
            }
            State::Connecting => {}
        }
    }

    /// Closes and forgets `flow` if it failed (abortively) or both sides finished; arms
    /// its timer otherwise.
    fn settle(&mut self, flow: FlowId, cx: &mut Context<'_>) {
        let Some(connection) = self.connections.get(flow) else {
            return;
        };
        if connection.failed || connection.finished() {
            cx.host.tcp_close(flow, connection.failed);
            self.remove(flow);
            cx.flows.release(flow);
        } else {
            self.arm(flow, cx.now);
        }
    }

    /// Adds `connection` to the table and arms its timer.
    fn insert(&mut self, connection: Connection, now: Instant) {
        let flow = connection.flow;
        self.by_tuple.insert((connection.guest, connection.remote), flow);
        self.connections.insert(flow, Box::new(connection));
        self.arm(flow, now);
    }

    /// An initial sequence number for a connection between `guest` and `remote`.
    fn next_isn(&mut self, guest: SocketAddr, remote: SocketAddr) -> u32 {
        self.connections_made += 1;
        self.isn_key.hash_one((guest, remote, self.connections_made)) as u32
    }

    /// An address of the gateway at `gateway_ip` with a port that no connection to
    /// `guest` uses, from the ephemeral range.
    fn free_apparent_address(&mut self, gateway_ip: IpAddr, guest: SocketAddr) -> Option<SocketAddr> {
        for _ in INBOUND_PORTS {
            let (first, last) = (*INBOUND_PORTS.start(), *INBOUND_PORTS.end());
            self.next_inbound_port = match self.next_inbound_port {
                port if port >= first && port < last => port + 1,
                _ => first,
            };
            let apparent = SocketAddr::new(gateway_ip, self.next_inbound_port);
            if !self.by_tuple.contains_key(&(guest, apparent)) {
                return Some(apparent);
            }
        }
        None
    }

    /// Ends connection `flow` at once, its host socket reset: its guest is gone, so
    /// nothing is sent to it.
    pub fn abort(&mut self, cx: &mut Context<'_>, flow: FlowId) {
        if self.connections.contains(flow) {
            cx.host.tcp_close(flow, true);
            self.remove(flow);
            cx.flows.release(flow);
        }
    }

    /// Forgets `flow`, whose host socket is closed.
    fn remove(&mut self, flow: FlowId) {
        if let Some(connection) = self.connections.remove(flow) {
            self.by_tuple.remove(&(connection.guest, connection.remote));
        }
    }
}
