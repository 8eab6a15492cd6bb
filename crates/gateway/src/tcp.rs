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
//! one fails or stays silent for [`FAILOVER_TIMEOUT`]. FIN maps to
//! `shutdown(SHUT_WR)` and RST to an abortive close, both ways. This file knows TCP and
//! the [`HostSockets`] calls, nothing of epoll or the switch.

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::hash::{BuildHasher, RandomState};
use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{IpProtocol, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber};
use tracing::{debug, info};
use vnet_wire::offload::{SegmentKind, Segmentation};
use vnet_wire::{Frame, FrameBuffer, MacAddress, Offload};

use crate::config::GatewayConfig;
use crate::counters::GatewayDropReason;
use crate::egress::{EgressRoom, GatewayIo};
use crate::host::{FlowId, FlowIds};
use crate::icmp::{self, GuestError, HostIcmpError};
use crate::inspect::{FlowProtocol, FlowSummary};
use crate::packet;
use crate::packet::BuiltFrame;
use crate::timers::Deadlines;

/// Window scale vnet offers: windows up to 8 MiB.
const OUR_WINDOW_SCALE: u8 = 7;
/// First retransmission timeout, doubled on each timeout up to [`MAX_RTO`].
const INITIAL_RTO: Duration = Duration::from_millis(1000);
const MAX_RTO: Duration = Duration::from_secs(60);
/// Ports of the gateway's address that inbound (hostfwd) connections come from.
const INBOUND_PORTS: std::ops::RangeInclusive<u16> = 49152..=65534;
/// Timeouts in a row (SYN, SYN-ACK or data) before a connection is given up.
const MAX_RETRANSMITS: u32 = 8;
/// Most segments in flight towards a guest, whatever its MSS.
const MAX_SEGMENTS_IN_FLIGHT: usize = 1024;
/// The smallest MSS vnet uses, whatever the guest says.
const MIN_MSS: usize = 64;
/// How long a connection may linger once both sides sent FIN, before it is dropped.
const CLOSING_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest amount sent to the guest in one go before waiting for ACKs.
const MAX_IN_FLIGHT: usize = 4 << 20;
/// Ethernet, IPv4 and TCP headers of a data segment, as they count against egress room.
const SEGMENT_OVERHEAD: usize = 14 + 20 + 20;
/// ACKs for one sequence number that make a sender retransmit at once (RFC 5681).
const DUPLICATE_ACKS: usize = 3;
/// The most payload one offloaded segment carries: an IPv4 packet's worth less the IPv4
/// and TCP headers.
const MAX_OFFLOADED_PAYLOAD: usize = 65535 - 20 - 20;
/// How long a connect may take before the next candidate is tried, where there is one.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(2);
/// How soon a closed window toward the guest is looked at again.
const ZERO_WINDOW_RECHECK: Duration = Duration::from_millis(1);
/// Most frames filled by one peek of a host socket.
const MAX_FRAMES_PER_PEEK: usize = 64;
/// Frames the first peek of a connection fills at most, and the fewest any peek asks for.
const FIRST_PEEK_BATCH: usize = 2;

/// Where the host side of a new guest connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectTarget {
    /// The candidates, tried in order until one connects; never empty.
    pub remotes: Vec<SocketAddr>,
    /// The TTL the host's SYN carries; None for the host's default.
    pub ttl: Option<u8>,
}

/// A host connect under way for a guest's SYN.
#[derive(Debug)]
struct HostConnect {
    /// Where the host socket is connecting to.
    remote: SocketAddr,
    /// Candidates still to try if that connect fails.
    fallbacks: std::vec::IntoIter<SocketAddr>,
    /// The TTL the host's SYN carries.
    ttl: Option<u8>,
}

/// Who a new connection's first segment is from and to.
struct NewConnection {
    guest_mac: MacAddress,
    guest: SocketAddrV4,
    dst: SocketAddrV4,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Guest sent SYN; the host connect is in progress.
    Connecting,
    /// A host client connected to a hostfwd port; SYN sent to the guest.
    SynSent,
    /// SYN-ACK sent to the guest, waiting for its ACK.
    SynAckSent,
    /// Data flows both ways (until FINs).
    Established,
}

/// One guest TCP connection and its host socket.
#[derive(Debug)]
struct Connection {
    guest_mac: MacAddress,
    guest: SocketAddrV4,
    remote: SocketAddrV4,
    /// The host connect under way, while the state is [`State::Connecting`].
    host_connect: Option<HostConnect>,
    state: State,
    /// Next byte expected from the guest.
    rcv_nxt: u32,
    /// Oldest byte sent to the guest and not yet acknowledged.
    snd_una: u32,
    /// Next byte to send to the guest.
    snd_nxt: u32,
    /// The guest's receive window, in bytes.
    guest_window: usize,
    guest_window_scale: u8,
    /// The scale of the windows vnet advertises: [`OUR_WINDOW_SCALE`] if the guest
    /// offered scaling in its SYN, else 0 (scaling is used only if both offer it).
    our_window_scale: u8,
    /// The largest segment payload to send.
    mss: usize,
    /// The host closed its side and every byte before the FIN has been peeked.
    host_eof: bool,
    /// The host socket may hold bytes not yet peeked: false once a peek found nothing
    /// more, true again when the host says it is readable.
    host_unpeeked: bool,
    fin_sent: bool,
    guest_fin: bool,
    /// Window last advertised to the guest; a zero one needs an update later.
    advertised_zero: bool,
    /// ACKs in a row that acknowledged nothing new; at [`DUPLICATE_ACKS`] the data since
    /// the last acknowledged byte is sent again.
    duplicate_acks: u32,
    /// The host socket took only part of a guest segment: once it has room again, the
    /// guest is asked to send the rest at once (duplicate ACKs) instead of after its
    /// retransmission timeout.
    guest_data_refused: bool,
    rto: Duration,
    retransmit_at: Option<Instant>,
    closing_since: Option<Instant>,
    /// Timeouts in a row without progress.
    retransmits: u32,
    /// How many frames the next peek of the host socket fills at most.
    peek_batch: usize,
    /// When to look again whether the host socket has room, while the guest was told the
    /// window is closed: the socket signals writability only after a write it refused,
    /// and a closed window means no write was tried.
    window_check_at: Option<Instant>,
    /// The time the connection is in the timer heap for; a deadline that moves earlier
    /// is added again, one that moves later is found when the earlier one comes out.
    timer_armed: Option<Instant>,
    /// The host socket failed; the guest has been reset and the flow must go.
    failed: bool,
}

impl Connection {
    /// The state for an operator: the handshake step, or which side has closed.
    fn state_name(&self) -> &'static str {
        match (self.state, self.fin_sent, self.guest_fin) {
            (State::Connecting, ..) => "connecting",
            (State::SynSent, ..) => "syn-sent",
            (State::SynAckSent, ..) => "syn-received",
            (State::Established, false, false) => "established",
            (State::Established, true, false) => "host-closed",
            (State::Established, false, true) => "guest-closed",
            (State::Established, true, true) => "closing",
        }
    }

    /// A connection between `guest` and `remote` (the address the guest sees) in `state`,
    /// with our initial sequence number `isn` and segments of up to `mss` bytes, before
    /// anything was sent or received.
    fn new(
        guest_mac: MacAddress,
        guest: SocketAddrV4,
        remote: SocketAddrV4,
        state: State,
        isn: u32,
        mss: usize,
    ) -> Self {
        Self {
            guest_mac,
            guest,
            remote,
            host_connect: None,
            state,
            rcv_nxt: 0,
            snd_una: isn,
            snd_nxt: isn,
            guest_window: 0,
            guest_window_scale: 0,
            our_window_scale: OUR_WINDOW_SCALE,
            mss,
            host_eof: false,
            host_unpeeked: true,
            fin_sent: false,
            guest_fin: false,
            advertised_zero: false,
            guest_data_refused: false,
            duplicate_acks: 0,
            rto: INITIAL_RTO,
            retransmit_at: None,
            closing_since: None,
            retransmits: 0,
            peek_batch: FIRST_PEEK_BATCH,
            window_check_at: None,
            timer_armed: None,
            failed: false,
        }
    }
}

/// Whether `a` is before `b` in sequence space.
fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// The TCP connections of one gateway.
pub struct Nat {
    by_tuple: HashMap<(SocketAddrV4, SocketAddrV4), FlowId>,
    connections: HashMap<FlowId, Connection>,
    timers: Deadlines<FlowId>,
    sender: Sender,
    /// A per-gateway random key, so initial sequence numbers cannot be guessed.
    isn_key: RandomState,
    connections_made: u64,
    next_inbound_port: u16,
}

/// What sending to guests needs besides the connection: the frames being peeked into
/// (kept so that the list's room is reused), and the connections whose data waits for
/// room on the segment.
struct Sender {
    buffers: Vec<FrameBuffer>,
    blocked: HashSet<FlowId>,
}

/// A segment to send to the guest: who it is for and its fields.
struct Outgoing<'a> {
    control: TcpControl,
    seq: u32,
    ack: Option<u32>,
    window: usize,
    syn_options: bool,
    payload: &'a [u8],
}

impl Nat {
    /// An empty table.
    pub fn new() -> Self {
        Self {
            by_tuple: HashMap::new(),
            connections: HashMap::new(),
            timers: Deadlines::default(),
            sender: Sender { buffers: Vec::new(), blocked: HashSet::new() },
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
                guest: SocketAddr::V4(connection.guest),
                destination: SocketAddr::V4(connection.remote),
                host_side: connection.host_connect.as_ref().map(|connect| connect.remote),
                state: connection.state_name(),
                idle: None,
            })
            .collect()
    }

    /// Handles a segment from the guest, whose checksum is not verified if the guest left
    /// it to be offloaded. `target` is where the host side connects for a new connection
    /// (already mapped and allowed by the caller), or why new connections are refused
    /// (restrict, flow limit), which the guest then learns by RST.
    #[allow(clippy::too_many_arguments)]
    pub fn on_guest_segment(
        &mut self,
        config: &GatewayConfig,
        guest_mac: MacAddress,
        guest: SocketAddrV4,
        dst: SocketAddrV4,
        bytes: &[u8],
        checksum_offloaded: bool,
        target: impl FnOnce() -> Result<ConnectTarget, GatewayDropReason>,
        now: Instant,
        host: &mut dyn GatewayIo,
        flows: &mut FlowIds,
        out: &mut Vec<Frame>,
    ) -> Result<(), GatewayDropReason> {
        let packet = TcpPacket::new_checked(bytes).map_err(|_| GatewayDropReason::Malformed)?;
        let checksums = if checksum_offloaded {
            ChecksumCapabilities::ignored()
        } else {
            ChecksumCapabilities::default()
        };
        let repr = TcpRepr::parse(&packet, &(*guest.ip()).into(), &(*dst.ip()).into(), &checksums)
            .map_err(|_| GatewayDropReason::Malformed)?;
        let Some(&flow) = self.by_tuple.get(&(guest, dst)) else {
            let new = NewConnection { guest_mac, guest, dst };
            return self.on_new_segment(config, new, &repr, target, now, host, flows, out);
        };
        let Some(connection) = self.connections.get_mut(&flow) else {
            return Err(GatewayDropReason::UnknownFlow);
        };
        if repr.control == TcpControl::Rst {
            // Only a reset at the expected sequence number counts (RFC 5961), so a
            // guest cannot kill another's connection by guessing its ports.
            let in_handshake = matches!(connection.state, State::SynSent | State::Connecting);
            if !in_handshake && repr.seq_number.0 as u32 != connection.rcv_nxt {
                return Err(GatewayDropReason::Malformed);
            }
            info!(%guest, remote = %dst, reason = "guest reset", "connection dropped");
            host.tcp_close(flow, true);
            self.remove(flow);
            return Ok(());
        }
        if connection.state == State::SynSent && repr.control != TcpControl::Syn {
            return Ok(()); // nothing but a SYN-ACK makes sense before the handshake
        }
        if repr.control == TcpControl::Syn {
            match connection.state {
                State::SynSent => {
                    Self::on_syn_ack(config, connection, &repr, flow, now, host, &mut self.sender, out)?
                }
                // The guest did not get our SYN-ACK: send it again.
                State::SynAckSent => out.extend(Self::syn_ack(config, connection, flow, host)),
                // Our ACK of its SYN-ACK was lost: acknowledge again.
                State::Established => {
                    let window = Self::window_for_guest(connection, flow, host);
                    out.extend(Self::ack(config, connection, window));
                }
                // A retransmitted SYN while the host connect is under way.
                State::Connecting => {}
            }
            return Ok(());
        }
        if connection.state != State::Established && connection.state != State::SynAckSent {
            return Ok(()); // no data before the host side is connected
        }
        if let Some(ack) = repr.ack_number {
            if let Err(reason) = Self::on_ack(
                connection,
                ack.0 as u32,
                repr.window_len,
                !repr.payload.is_empty(),
                now,
                flow,
                host,
            ) {
                Self::reset(config, connection, out);
                host.tcp_close(flow, true);
                self.remove(flow);
                return Err(reason);
            }
        }
        let seq = repr.seq_number.0 as u32;
        if !repr.payload.is_empty() || repr.control == TcpControl::Fin {
            Self::on_guest_data(
                connection,
                seq,
                repr.payload,
                repr.control == TcpControl::Fin,
                now,
                flow,
                host,
            );
            let window = Self::window_for_guest(connection, flow, host);
            out.extend(Self::ack(config, connection, window));
        }
        Self::send_pending(config, connection, flow, now, host, &mut self.sender, out);
        self.settle(flow, now, host);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn on_new_segment(
        &mut self,
        config: &GatewayConfig,
        new: NewConnection,
        repr: &TcpRepr<'_>,
        target: impl FnOnce() -> Result<ConnectTarget, GatewayDropReason>,
        now: Instant,
        host: &mut dyn GatewayIo,
        flows: &mut FlowIds,
        out: &mut Vec<Frame>,
    ) -> Result<(), GatewayDropReason> {
        let NewConnection { guest_mac, guest, dst } = new;
        if repr.control == TcpControl::Rst {
            return Ok(());
        }
        if repr.control != TcpControl::Syn || repr.ack_number.is_some() {
            out.extend(reset_for(config, guest_mac, guest, dst, repr));
            return Err(GatewayDropReason::UnknownFlow);
        }
        let target = match target() {
            Ok(target) => target,
            Err(reason) => {
                out.extend(reset_for(config, guest_mac, guest, dst, repr));
                return Err(reason);
            }
        };
        let flow = flows.next();
        let mut candidates = target.remotes.into_iter();
        let Some(host_remote) = connect_first(host, flow, &mut candidates, target.ttl) else {
            out.extend(reset_for(config, guest_mac, guest, dst, repr));
            return Err(GatewayDropReason::HostSocket);
        };
        let isn = self.next_isn(guest, dst);
        let guest_mss = usize::from(repr.max_seg_size.unwrap_or(536));
        let failover_at = (candidates.len() > 0).then(|| now + FAILOVER_TIMEOUT);
        let mss = guest_mss.clamp(MIN_MSS, usize::from(config.mtu) - 40);
        let connection = Connection {
            host_connect: Some(HostConnect { remote: host_remote, fallbacks: candidates, ttl: target.ttl }),
            rcv_nxt: (repr.seq_number.0 as u32).wrapping_add(1),
            guest_window: usize::from(repr.window_len),
            guest_window_scale: repr.window_scale.unwrap_or(0),
            our_window_scale: if repr.window_scale.is_some() { OUR_WINDOW_SCALE } else { 0 },
            retransmit_at: failover_at,
            ..Connection::new(guest_mac, guest, dst, State::Connecting, isn, mss)
        };
        self.by_tuple.insert((guest, dst), flow);
        self.connections.insert(flow, connection);
        Ok(())
    }

    /// A host client connected to a hostfwd port, and its socket is `flow`: connect to
    /// `guest` from the gateway's address and a port of its own. False if no port is
    /// free for that guest.
    #[allow(clippy::too_many_arguments)]
    pub fn on_inbound(
        &mut self,
        config: &GatewayConfig,
        flow: FlowId,
        guest_mac: MacAddress,
        guest: SocketAddrV4,
        now: Instant,
        host: &mut dyn GatewayIo,
        out: &mut Vec<Frame>,
    ) -> bool {
        let Some(apparent) = self.free_apparent_address(config, guest) else {
            return false;
        };
        let isn = self.next_isn(guest, apparent);
        let connection = Connection {
            snd_nxt: isn.wrapping_add(1),
            retransmit_at: Some(now + INITIAL_RTO),
            ..Connection::new(guest_mac, guest, apparent, State::SynSent, isn, usize::from(config.mtu) - 40)
        };
        out.extend(Self::syn(config, &connection, flow, host));
        self.by_tuple.insert((guest, apparent), flow);
        self.connections.insert(flow, connection);
        self.arm(flow, now);
        true
    }

    /// An initial sequence number for a connection between `guest` and `remote`.
    fn next_isn(&mut self, guest: SocketAddrV4, remote: SocketAddrV4) -> u32 {
        self.connections_made += 1;
        self.isn_key.hash_one((guest, remote, self.connections_made)) as u32
    }

    /// A gateway address and port no connection to `guest` uses, from the ephemeral range.
    fn free_apparent_address(&mut self, config: &GatewayConfig, guest: SocketAddrV4) -> Option<SocketAddrV4> {
        for _ in INBOUND_PORTS {
            let (first, last) = (*INBOUND_PORTS.start(), *INBOUND_PORTS.end());
            self.next_inbound_port = match self.next_inbound_port {
                port if port >= first && port < last => port + 1,
                _ => first,
            };
            let apparent = SocketAddrV4::new(config.host, self.next_inbound_port);
            if !self.by_tuple.contains_key(&(guest, apparent)) {
                return Some(apparent);
            }
        }
        None
    }

    fn syn(
        config: &GatewayConfig,
        connection: &Connection,
        flow: FlowId,
        host: &mut dyn GatewayIo,
    ) -> BuiltFrame {
        let syn = Outgoing {
            control: TcpControl::Syn,
            seq: connection.snd_una,
            ack: None,
            window: host.tcp_send_space(flow),
            syn_options: true,
            payload: &[],
        };
        Self::segment(config, connection, &syn)
    }

    /// The guest answered an inbound SYN: acknowledge, and start relaying.
    #[allow(clippy::too_many_arguments)]
    fn on_syn_ack(
        config: &GatewayConfig,
        connection: &mut Connection,
        repr: &TcpRepr<'_>,
        flow: FlowId,
        now: Instant,
        host: &mut dyn GatewayIo,
        sender: &mut Sender,
        out: &mut Vec<Frame>,
    ) -> Result<(), GatewayDropReason> {
        if repr.ack_number.map(|ack| ack.0 as u32) != Some(connection.snd_nxt) {
            return Err(GatewayDropReason::Malformed);
        }
        connection.state = State::Established;
        connection.snd_una = connection.snd_nxt;
        connection.rcv_nxt = (repr.seq_number.0 as u32).wrapping_add(1);
        connection.guest_window_scale = repr.window_scale.unwrap_or(0);
        if repr.window_scale.is_none() {
            connection.our_window_scale = 0;
        }
        connection.guest_window = usize::from(repr.window_len);
        connection.mss = connection.mss.min(usize::from(repr.max_seg_size.unwrap_or(536))).max(MIN_MSS);
        connection.retransmit_at = None;
        connection.rto = INITIAL_RTO;
        let window = Self::window_for_guest(connection, flow, host);
        out.extend(Self::ack(config, connection, window));
        Self::send_pending(config, connection, flow, now, host, sender, out);
        Ok(())
    }

    /// The host connect of `flow` completed: answer the guest's SYN.
    pub fn on_connected(
        &mut self,
        config: &GatewayConfig,
        flow: FlowId,
        now: Instant,
        host: &mut dyn GatewayIo,
        out: &mut Vec<Frame>,
    ) {
        let Some(connection) = self.connections.get_mut(&flow) else {
            return;
        };
        if connection.state != State::Connecting {
            return;
        }
        connection.host_connect = None;
        connection.state = State::SynAckSent;
        connection.snd_nxt = connection.snd_una.wrapping_add(1);
        connection.retransmit_at = Some(now + connection.rto);
        out.extend(Self::syn_ack(config, connection, flow, host));
        self.arm(flow, now);
    }

    /// The SYN-ACK answering the guest's SYN.
    fn syn_ack(
        config: &GatewayConfig,
        connection: &mut Connection,
        flow: FlowId,
        host: &mut dyn GatewayIo,
    ) -> BuiltFrame {
        let window = Self::window_for_guest(connection, flow, host);
        let syn_ack = Outgoing {
            control: TcpControl::Syn,
            seq: connection.snd_una,
            ack: Some(connection.rcv_nxt),
            window,
            syn_options: true,
            payload: &[],
        };
        Self::segment(config, connection, &syn_ack)
    }

    /// `flow`'s host socket failed (connect refused, unreachable or timed out; reset).
    /// A failed connect moves on to the next candidate if there is one; else the guest
    /// gets the ICMP error behind the failure, or RST, and the socket is closed.
    #[allow(clippy::too_many_arguments)]
    pub fn on_host_error(
        &mut self,
        config: &GatewayConfig,
        flow: FlowId,
        error: &io::Error,
        icmp: Option<HostIcmpError>,
        now: Instant,
        host: &mut dyn GatewayIo,
        out: &mut Vec<Frame>,
    ) {
        let Some(connection) = self.connections.get_mut(&flow) else {
            return;
        };
        if connection.state == State::Connecting && Self::fail_over(connection, flow, now, host) {
            return self.arm(flow, now);
        }
        info!(guest = %connection.guest, remote = %connection.remote, %error, reason = "host side failed", "connection dropped");
        match Self::connect_error(connection, icmp, error) {
            Some(report) => out.extend(icmp::error_for_guest(config, connection.guest_mac, &report)),
            None => Self::reset(config, connection, out),
        }
        host.tcp_close(flow, true);
        self.remove(flow);
    }

    /// The ICMP error that tells the guest why its SYN got nowhere, quoting the SYN; None
    /// where RST says it (refused, timed out, or the connection was already up).
    fn connect_error(
        connection: &Connection,
        icmp: Option<HostIcmpError>,
        error: &io::Error,
    ) -> Option<GuestError> {
        let connect = connection.host_connect.as_ref()?;
        if icmp.is_none() && error.kind() == io::ErrorKind::ConnectionRefused {
            return None; // the remote answered with RST
        }
        let mut syn_header = [0u8; 8];
        syn_header[..2].copy_from_slice(&connection.guest.port().to_be_bytes());
        syn_header[2..4].copy_from_slice(&connection.remote.port().to_be_bytes());
        syn_header[4..].copy_from_slice(&connection.rcv_nxt.wrapping_sub(1).to_be_bytes());
        GuestError::from_host(
            *connection.guest.ip(),
            *connection.remote.ip(),
            connect.remote.ip(),
            IpProtocol::Tcp,
            syn_header,
            icmp,
            error,
        )
    }

    /// Moves `connection`'s host connect on to its next candidate. False if there is
    /// none, or none would start; the connection is then lost.
    fn fail_over(connection: &mut Connection, flow: FlowId, now: Instant, host: &mut dyn GatewayIo) -> bool {
        let Some(connect) = connection.host_connect.as_mut() else {
            return false;
        };
        if connect.fallbacks.len() == 0 {
            return false;
        }
        host.tcp_close(flow, true);
        let Some(remote) = connect_first(host, flow, &mut connect.fallbacks, connect.ttl) else {
            return false;
        };
        debug!(failed = %connect.remote, next = %remote, "connect failed; trying the next candidate");
        connect.remote = remote;
        connection.retransmit_at = (connect.fallbacks.len() > 0).then(|| now + FAILOVER_TIMEOUT);
        true
    }

    /// `flow`'s host socket has data (or EOF): send what the guest's window allows.
    pub fn on_host_readable(
        &mut self,
        config: &GatewayConfig,
        flow: FlowId,
        now: Instant,
        host: &mut dyn GatewayIo,
        out: &mut Vec<Frame>,
    ) {
        if let Some(connection) = self.connections.get_mut(&flow) {
            connection.host_unpeeked = true;
            Self::send_pending(config, connection, flow, now, host, &mut self.sender, out);
            self.settle(flow, now, host);
        }
    }

    /// `flow`'s host socket can take data again: if the guest was told the window is
    /// closed, tell it that it opened; if the socket refused part of a segment, ask the
    /// guest for it again.
    pub fn on_host_writable(
        &mut self,
        config: &GatewayConfig,
        flow: FlowId,
        now: Instant,
        host: &mut dyn GatewayIo,
        out: &mut Vec<Frame>,
    ) {
        let Some(connection) = self.connections.get_mut(&flow) else {
            return;
        };
        Self::reopen_window(config, connection, flow, host, out);
        self.arm(flow, now);
    }

    /// If the guest was told the window is closed, or part of its data was refused, and
    /// the host socket has room now: tell it, and ask for what was refused at once.
    fn reopen_window(
        config: &GatewayConfig,
        connection: &mut Connection,
        flow: FlowId,
        host: &mut dyn GatewayIo,
        out: &mut Vec<Frame>,
    ) {
        let stalled = connection.advertised_zero || connection.guest_data_refused;
        if stalled && connection.state == State::Established {
            let window = Self::window_for_guest(connection, flow, host);
            if window > 0 {
                // The first ACK updates the window; three duplicates of it make the guest
                // retransmit what was refused at once (fast retransmit).
                let copies = if connection.guest_data_refused { 1 + DUPLICATE_ACKS } else { 1 };
                if let Ok(ack) = Self::ack(config, connection, window) {
                    out.extend(std::iter::repeat_n(ack, copies));
                }
                connection.guest_data_refused = false;
            }
        }
    }

    /// Whether data waits for room toward a guest.
    pub fn waits_for_guest_room(&self) -> bool {
        !self.sender.blocked.is_empty()
    }

    /// Frames toward guests were delivered: go on sending what waited for room.
    pub fn on_guest_room(
        &mut self,
        config: &GatewayConfig,
        now: Instant,
        host: &mut dyn GatewayIo,
        out: &mut Vec<Frame>,
    ) {
        let blocked: Vec<FlowId> = self.sender.blocked.drain().collect();
        for flow in blocked {
            if let Some(connection) = self.connections.get_mut(&flow) {
                Self::send_pending(config, connection, flow, now, host, &mut self.sender, out);
                self.settle(flow, now, host);
            }
        }
    }

    /// When a connection may want a retransmission, a connect fail-over or to be given
    /// up while closing.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// When `connection` wants its timer next.
    fn deadline(connection: &Connection) -> Option<Instant> {
        [
            connection.retransmit_at,
            connection.closing_since.map(|since| since + CLOSING_TIMEOUT),
            connection.window_check_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Arms the timer of the connection between `guest` and `dst`, if there is one, after
    /// [`Nat::on_guest_segment`] (which may have created, changed or removed it).
    pub fn arm_connection(&mut self, guest: SocketAddrV4, dst: SocketAddrV4, now: Instant) {
        if let Some(&flow) = self.by_tuple.get(&(guest, dst)) {
            self.arm(flow, now);
        }
    }

    /// Makes sure `flow` comes out of the timer heap no later than its deadline, and that
    /// a window told closed is looked at again soon.
    fn arm(&mut self, flow: FlowId, now: Instant) {
        let Some(connection) = self.connections.get_mut(&flow) else {
            return;
        };
        let window_closed = connection.advertised_zero && connection.state == State::Established;
        connection.window_check_at =
            window_closed.then(|| connection.window_check_at.unwrap_or(now + ZERO_WINDOW_RECHECK));
        let Some(deadline) = Self::deadline(connection) else {
            return;
        };
        if connection.timer_armed.is_none_or(|armed| deadline < armed) {
            connection.timer_armed = Some(deadline);
            self.timers.schedule(deadline, flow);
        }
    }

    /// Retransmits from the last acknowledged byte where the guest has been silent too
    /// long, and drops connections stuck closing.
    pub fn expire(
        &mut self,
        config: &GatewayConfig,
        now: Instant,
        host: &mut dyn GatewayIo,
        out: &mut Vec<Frame>,
    ) {
        while let Some((armed, flow)) = self.timers.pop_due(now) {
            let Some(connection) = self.connections.get_mut(&flow) else {
                continue;
            };
            if connection.timer_armed != Some(armed) {
                continue; // an entry the connection moved away from
            }
            connection.timer_armed = None;
            if connection.closing_since.is_some_and(|since| now >= since + CLOSING_TIMEOUT) {
                host.tcp_close(flow, true);
                self.remove(flow);
                continue;
            }
            if connection.window_check_at.is_some_and(|at| at <= now) {
                connection.window_check_at = None;
                Self::reopen_window(config, connection, flow, host, out);
            }
            if connection.retransmit_at.is_none_or(|at| at > now) {
                self.arm(flow, now);
                continue;
            }
            if connection.state == State::Connecting {
                // Only a connect with candidates left has a deadline: it took too long.
                if !Self::fail_over(connection, flow, now, host) {
                    Self::reset(config, connection, out);
                    host.tcp_close(flow, true);
                    self.remove(flow);
                }
                continue;
            }
            connection.retransmits += 1;
            if connection.retransmits > MAX_RETRANSMITS {
                info!(guest = %connection.guest, remote = %connection.remote, reason = "guest stopped answering", "connection dropped");
                Self::reset(config, connection, out);
                host.tcp_close(flow, true);
                self.remove(flow);
                continue;
            }
            connection.rto = (connection.rto * 2).min(MAX_RTO);
            connection.retransmit_at = Some(now + connection.rto);
            match connection.state {
                State::SynSent => out.extend(Self::syn(config, connection, flow, host)),
                State::SynAckSent => out.extend(Self::syn_ack(config, connection, flow, host)),
                State::Established => {
                    connection.snd_nxt = connection.snd_una;
                    connection.host_unpeeked = true;
                    connection.fin_sent = false;
                    Self::send_pending(config, connection, flow, now, host, &mut self.sender, out);
                }
                State::Connecting => {}
            }
            self.settle(flow, now, host);
        }
    }

    /// Closes and forgets `flow` if it failed (abortively) or both sides finished.
    fn settle(&mut self, flow: FlowId, now: Instant, host: &mut dyn GatewayIo) {
        let Some(connection) = self.connections.get(&flow) else {
            return;
        };
        if connection.failed {
            host.tcp_close(flow, true);
            self.remove(flow);
        } else if Self::finished(connection) {
            host.tcp_close(flow, false);
            self.remove(flow);
        } else {
            self.arm(flow, now);
        }
    }

    /// Takes the guest's ACK: consumes what it acknowledges from the host socket and
    /// keeps the retransmission timer running while anything is still unacknowledged.
    /// An error means the connection must be reset.
    #[allow(clippy::too_many_arguments)]
    fn on_ack(
        connection: &mut Connection,
        ack: u32,
        window: u16,
        carries_data: bool,
        now: Instant,
        flow: FlowId,
        host: &mut dyn GatewayIo,
    ) -> Result<(), GatewayDropReason> {
        if connection.state == State::SynAckSent {
            if ack != connection.snd_nxt {
                return Err(GatewayDropReason::Malformed);
            }
            connection.state = State::Established;
            connection.snd_una = ack;
            connection.retransmit_at = None;
        }
        let window = usize::from(window) << connection.guest_window_scale;
        let duplicate = ack == connection.snd_una
            && connection.snd_nxt != connection.snd_una
            && !carries_data
            && window == connection.guest_window;
        connection.guest_window = window;
        if duplicate {
            connection.duplicate_acks += 1;
            if connection.duplicate_acks == DUPLICATE_ACKS as u32 {
                // The guest lost a segment (a full tap queue, say): send again from the
                // first byte it lacks now rather than after the retransmission timeout.
                connection.snd_nxt = connection.snd_una;
                connection.fin_sent = false;
                connection.host_unpeeked = true;
            }
        }
        if seq_lt(connection.snd_una, ack) && !seq_lt(connection.snd_nxt, ack) {
            connection.duplicate_acks = 0;
            let mut acked = ack.wrapping_sub(connection.snd_una) as usize;
            if connection.fin_sent && ack == connection.snd_nxt {
                acked -= 1; // the FIN takes a sequence number but no byte
            }
            if acked > 0 && host.tcp_consume(flow, acked).is_err() {
                return Err(GatewayDropReason::HostSocket);
            }
            connection.snd_una = ack;
            connection.rto = INITIAL_RTO;
            connection.retransmits = 0;
            connection.retransmit_at =
                (connection.snd_una != connection.snd_nxt).then(|| now + connection.rto);
        }
        Ok(())
    }

    fn on_guest_data(
        connection: &mut Connection,
        seq: u32,
        payload: &[u8],
        fin: bool,
        now: Instant,
        flow: FlowId,
        host: &mut dyn GatewayIo,
    ) {
        if connection.guest_fin {
            return;
        }
        // A retransmission that overlaps what was taken: keep only the new bytes.
        let already = connection.rcv_nxt.wrapping_sub(seq) as usize;
        if seq_lt(connection.rcv_nxt, seq) || already > payload.len() {
            return; // out of order or wholly old: the ACK we send says where we are
        }
        let payload = &payload[already..];
        let taken = if payload.is_empty() {
            0
        } else {
            match host.tcp_send(flow, payload) {
                Ok(taken) => taken,
                Err(e) => {
                    info!(error = %e, reason = "host write failed", "connection dropped");
                    connection.failed = true;
                    return;
                }
            }
        };
        connection.rcv_nxt = connection.rcv_nxt.wrapping_add(taken as u32);
        connection.guest_data_refused |= taken < payload.len();
        if fin && taken == payload.len() {
            connection.rcv_nxt = connection.rcv_nxt.wrapping_add(1);
            connection.guest_fin = true;
            host.tcp_shutdown_write(flow);
            if connection.fin_sent {
                connection.closing_since.get_or_insert(now);
            }
        }
    }

    /// Peeks what the host has beyond what was sent and sends it within the guest's
    /// window; sends FIN once the host closed and everything before it went out.
    fn send_pending(
        config: &GatewayConfig,
        connection: &mut Connection,
        flow: FlowId,
        now: Instant,
        host: &mut dyn GatewayIo,
        sender: &mut Sender,
        out: &mut Vec<Frame>,
    ) {
        if connection.state != State::Established {
            return;
        }
        let mut egress = egress_left(host.guest_room(connection.guest_mac), connection.guest_mac, out);
        loop {
            let in_flight = connection.snd_nxt.wrapping_sub(connection.snd_una) as usize;
            let limit = MAX_IN_FLIGHT.min(connection.mss * MAX_SEGMENTS_IN_FLIGHT);
            let room = connection.guest_window.min(limit).saturating_sub(in_flight);
            if room == 0 || connection.fin_sent || !connection.host_unpeeked {
                break;
            }
            // Toward a port that offloads, one frame carries as much as an IPv4 packet
            // holds and the port (or the guest's kernel) cuts it at the MSS.
            let frame_payload = if egress.takes_offloads { MAX_OFFLOADED_PAYLOAD } else { connection.mss };
            let affordable = payload_room(egress, frame_payload);
            if affordable == 0 {
                // The guest's port is full: the data stays in the host socket until the
                // port drains.
                sender.blocked.insert(flow);
                break;
            }
            // Whole frames per peek, straight into the payload room of pooled frames: as
            // many as the last peek filled (twice that if it filled all it asked for), so
            // a trickle takes few buffers and a stream soon takes many.
            let batch = connection.peek_batch;
            let want = room.min(affordable).min(frame_payload * batch);
            let frames = want.div_ceil(frame_payload);
            sender.buffers.clear();
            sender.buffers.extend((0..frames).map(|_| FrameBuffer::for_len(frame_payload)));
            let peeked = {
                let mut slices: [IoSliceMut<'_>; MAX_FRAMES_PER_PEEK] =
                    std::array::from_fn(|_| IoSliceMut::new(&mut []));
                let mut left = want;
                for (slice, buffer) in slices.iter_mut().zip(sender.buffers.iter_mut()) {
                    let len = left.min(frame_payload);
                    *slice = IoSliceMut::new(&mut buffer.spare_mut()[..len]);
                    left -= len;
                }
                host.tcp_peek(flow, in_flight, &mut slices[..frames])
            };
            let got = match peeked {
                Ok(got) if got == want => {
                    connection.peek_batch = (batch * 2).min(MAX_FRAMES_PER_PEEK);
                    got
                }
                Ok(0) => {
                    connection.host_eof = true;
                    break;
                }
                Ok(got) => {
                    connection.peek_batch = got.div_ceil(frame_payload).max(FIRST_PEEK_BATCH);
                    got
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    connection.host_unpeeked = false;
                    break;
                }
                Err(e) => {
                    info!(error = %e, reason = "host read failed", "connection dropped");
                    connection.failed = true;
                    break;
                }
            };
            let window = Self::window_for_guest(connection, flow, host);
            for (index, mut payload) in sender.buffers.drain(..).enumerate() {
                let len = got.saturating_sub(index * frame_payload).min(frame_payload);
                if len == 0 {
                    break;
                }
                payload.commit(len);
                let header = Outgoing {
                    control: TcpControl::Psh,
                    seq: connection.snd_nxt,
                    ack: Some(connection.rcv_nxt),
                    window,
                    syn_options: false,
                    payload: &[],
                };
                let Ok(segment) =
                    Self::data_segment(config, connection, &header, payload, egress.takes_offloads)
                else {
                    break;
                };
                egress.frames = egress.frames.saturating_sub(1);
                egress.bytes = egress.bytes.saturating_sub(segment.len());
                out.push(segment);
                connection.snd_nxt = connection.snd_nxt.wrapping_add(len as u32);
            }
            connection.retransmit_at.get_or_insert(now + connection.rto);
            if got < want {
                break;
            }
        }
        if connection.host_eof && !connection.fin_sent && connection.guest_window > 0 {
            let fin = Outgoing {
                control: TcpControl::Fin,
                seq: connection.snd_nxt,
                ack: Some(connection.rcv_nxt),
                window: Self::window_for_guest(connection, flow, host),
                syn_options: false,
                payload: &[],
            };
            out.extend(Self::segment(config, connection, &fin));
            connection.snd_nxt = connection.snd_nxt.wrapping_add(1);
            connection.fin_sent = true;
            connection.retransmit_at.get_or_insert(now + connection.rto);
            if connection.guest_fin {
                connection.closing_since.get_or_insert(now);
            }
        }
    }

    /// Both sides closed and the guest acknowledged our FIN.
    fn finished(connection: &Connection) -> bool {
        connection.guest_fin && connection.fin_sent && connection.snd_una == connection.snd_nxt
    }

    /// The window to offer the guest: the host socket's free send space.
    fn window_for_guest(connection: &mut Connection, flow: FlowId, host: &mut dyn GatewayIo) -> usize {
        let space = host.tcp_send_space(flow);
        connection.advertised_zero = space >> connection.our_window_scale == 0;
        space
    }

    /// Resets the guest's side of `connection`.
    fn reset(config: &GatewayConfig, connection: &Connection, out: &mut Vec<Frame>) {
        let seq = if connection.state == State::Connecting { 0 } else { connection.snd_nxt };
        let reset = Outgoing {
            control: TcpControl::Rst,
            seq,
            ack: Some(connection.rcv_nxt),
            window: 0,
            syn_options: false,
            payload: &[],
        };
        out.extend(Self::segment(config, connection, &reset));
    }

    /// A segment that only acknowledges and offers `window`.
    fn ack(config: &GatewayConfig, connection: &Connection, window: usize) -> BuiltFrame {
        let ack = Outgoing {
            control: TcpControl::None,
            seq: connection.snd_nxt,
            ack: Some(connection.rcv_nxt),
            window,
            syn_options: false,
            payload: &[],
        };
        Self::segment(config, connection, &ack)
    }

    fn segment(config: &GatewayConfig, connection: &Connection, outgoing: &Outgoing<'_>) -> BuiltFrame {
        let repr = Self::repr(config, connection, outgoing);
        packet::tcp(config.mac(), connection.guest_mac, connection.remote, connection.guest, &repr)
    }

    /// The header fields (and payload) of `outgoing` on `connection`.
    fn repr<'p>(config: &GatewayConfig, connection: &Connection, outgoing: &Outgoing<'p>) -> TcpRepr<'p> {
        let scale = if outgoing.control == TcpControl::Syn { 0 } else { connection.our_window_scale };
        TcpRepr {
            src_port: connection.remote.port(),
            dst_port: connection.guest.port(),
            control: outgoing.control,
            seq_number: TcpSeqNumber(outgoing.seq as i32),
            ack_number: outgoing.ack.map(|ack| TcpSeqNumber(ack as i32)),
            window_len: (outgoing.window >> scale).min(usize::from(u16::MAX)) as u16,
            window_scale: (outgoing.syn_options && connection.our_window_scale > 0)
                .then_some(OUR_WINDOW_SCALE),
            max_seg_size: outgoing.syn_options.then(|| (usize::from(config.mtu) - 40) as u16),
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: outgoing.payload,
        }
    }

    /// A data segment around `payload` (peeked into a pooled buffer). For a port that
    /// offloads, its checksum is left partial and it is cut at the guest's MSS by the port
    /// if it is longer; for others it is whole and at most one MSS long.
    fn data_segment(
        config: &GatewayConfig,
        connection: &Connection,
        header: &Outgoing<'_>,
        payload: FrameBuffer,
        offloaded: bool,
    ) -> BuiltFrame {
        let repr = Self::repr(config, connection, header);
        let payload_len = payload.len();
        let (guest_mac, remote, guest) = (connection.guest_mac, connection.remote, connection.guest);
        let frame = packet::tcp_around(payload, config.mac(), guest_mac, remote, guest, &repr, offloaded)?;
        if !offloaded {
            return Ok(frame);
        }
        let segmentation = (payload_len > connection.mss)
            .then_some(Segmentation { kind: SegmentKind::TcpV4, size: connection.mss as u16 });
        Ok(frame.with_offload(Offload { checksum: Some(packet::TCP_PARTIAL_CHECKSUM), segmentation }))
    }

    fn remove(&mut self, flow: FlowId) {
        self.sender.blocked.remove(&flow);
        if let Some(connection) = self.connections.remove(&flow) {
            self.by_tuple.remove(&(connection.guest, connection.remote));
        }
    }
}

/// What is left of `room` toward `guest` once the frames for it already in `out` are
/// counted.
fn egress_left(room: EgressRoom, guest: MacAddress, out: &[Frame]) -> EgressRoom {
    out.iter().filter(|frame| frame.destination() == guest).fold(room, |left, frame| EgressRoom {
        frames: left.frames.saturating_sub(1),
        bytes: left.bytes.saturating_sub(frame.len()),
        ..left
    })
}

/// How many payload bytes fit into `room` as whole frames of `frame_payload` bytes.
fn payload_room(room: EgressRoom, frame_payload: usize) -> usize {
    let frames = room.frames.min(room.bytes / (frame_payload + SEGMENT_OVERHEAD));
    frames.saturating_mul(frame_payload)
}

/// Starts a host connect for `flow` to the first of `candidates` that takes one, and
/// returns where to.
fn connect_first(
    host: &mut dyn GatewayIo,
    flow: FlowId,
    candidates: &mut std::vec::IntoIter<SocketAddr>,
    ttl: Option<u8>,
) -> Option<SocketAddr> {
    candidates.find(|remote| match host.tcp_connect(flow, *remote, ttl) {
        Ok(()) => true,
        Err(e) => {
            info!(%remote, error = %e, reason = "host connect failed", "connection dropped");
            false
        }
    })
}

/// A RST answering `repr`, which has no connection.
fn reset_for(
    config: &GatewayConfig,
    guest_mac: MacAddress,
    guest: SocketAddrV4,
    dst: SocketAddrV4,
    repr: &TcpRepr<'_>,
) -> BuiltFrame {
    let (seq, ack) = match repr.ack_number {
        Some(ack) => (ack, None),
        None => (TcpSeqNumber(0), Some(repr.seq_number + repr.segment_len())),
    };
    let reset = TcpRepr {
        src_port: dst.port(),
        dst_port: guest.port(),
        control: TcpControl::Rst,
        seq_number: seq,
        ack_number: ack,
        window_len: 0,
        window_scale: None,
        max_seg_size: None,
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    packet::tcp(config.mac(), guest_mac, dst, guest, &reset)
}
