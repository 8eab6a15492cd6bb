//! Opening connections, both ways. A guest's SYN starts a host connect (trying each
//! candidate of a [`ConnectTarget`] in turn) and is answered with SYN-ACK once the host
//! side is up, or with the RST or ICMP error behind its failure; a host client on a
//! hostfwd port gets a connection to the guest from the gateway's address and a port of
//! its own.

use std::hash::BuildHasher;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use smoltcp::wire::{IpProtocol, TcpControl, TcpRepr};
use tracing::{debug, info};
use vnet_wire::MacAddress;

use super::connection::{Connection, State, INITIAL_RTO, MIN_MSS, OUR_WINDOW_SCALE};
use super::segment::mss_for_mtu;
use super::send::Sender;
use super::{Context, Nat};
use crate::counters::GatewayDropReason;
use crate::egress::GatewayIo;
use crate::host::{FlowId, FlowIds};
use crate::icmp::{self, GuestError, HostIcmpError};

/// Ports of the gateway's address that inbound (hostfwd) connections come from.
const INBOUND_PORTS: std::ops::RangeInclusive<u16> = 49152..=65534;
/// How long a connect may take before the next candidate is tried, where there is one.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(2);
/// The MSS a guest's SYN without the option stands for (RFC 9293).
const DEFAULT_MSS: u16 = 536;

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
pub(super) struct HostConnect {
    /// Where the host socket is connecting to.
    pub remote: SocketAddr,
    /// Candidates still to try if that connect fails.
    fallbacks: std::vec::IntoIter<SocketAddr>,
    /// The TTL the host's SYN carries.
    ttl: Option<u8>,
}

/// Who a guest's first segment on a new connection is from and to.
pub(super) struct NewConnection {
    pub guest_mac: MacAddress,
    pub guest: SocketAddr,
    pub dst: SocketAddr,
}

impl Nat {
    /// The first segment of a connection the table does not have: a SYN opens one (its
    /// host connect starts now); anything else is answered with RST.
    pub(super) fn on_new_segment(
        &mut self,
        cx: &mut Context<'_>,
        new: NewConnection,
        repr: &TcpRepr<'_>,
        target: impl FnOnce() -> Result<ConnectTarget, GatewayDropReason>,
        flows: &mut FlowIds,
    ) -> Result<(), GatewayDropReason> {
        if repr.control == TcpControl::Rst {
            return Ok(());
        }
        if repr.control != TcpControl::Syn || repr.ack_number.is_some() {
            cx.out.extend(new.reset(cx.config, repr));
            return Err(GatewayDropReason::UnknownFlow);
        }
        let target = match target() {
            Ok(target) => target,
            Err(reason) => {
                cx.out.extend(new.reset(cx.config, repr));
                return Err(reason);
            }
        };
        let flow = flows.next();
        let mut candidates = target.remotes.into_iter();
        let Some(host_remote) = connect_first(cx.host, flow, &mut candidates, target.ttl) else {
            cx.out.extend(new.reset(cx.config, repr));
            return Err(GatewayDropReason::HostSocket);
        };
        let isn = self.next_isn(new.guest, new.dst);
        let guest_mss = usize::from(repr.max_seg_size.unwrap_or(DEFAULT_MSS));
        let failover_at = (candidates.len() > 0).then(|| cx.now + FAILOVER_TIMEOUT);
        let mss = guest_mss.clamp(MIN_MSS, mss_for_mtu(cx.config.mtu, new.guest));
        let connection = Connection {
            host_connect: Some(HostConnect { remote: host_remote, fallbacks: candidates, ttl: target.ttl }),
            rcv_nxt: (repr.seq_number.0 as u32).wrapping_add(1),
            guest_window: usize::from(repr.window_len),
            guest_window_scale: repr.window_scale.unwrap_or(0),
            our_window_scale: if repr.window_scale.is_some() { OUR_WINDOW_SCALE } else { 0 },
            retransmit_at: failover_at,
            ..Connection::new(flow, new.guest_mac, new.guest, new.dst, State::Connecting, isn, mss)
        };
        self.insert(connection, cx.now);
        Ok(())
    }

    /// A host client connected to a hostfwd port, and its socket is `flow`: connect to
    /// `guest` from the gateway's address and a port of its own. False if no port is
    /// free for that guest.
    pub fn on_inbound(
        &mut self,
        cx: &mut Context<'_>,
        flow: FlowId,
        guest_mac: MacAddress,
        guest: SocketAddr,
    ) -> bool {
        let Some(apparent) = self.free_apparent_address(IpAddr::V4(cx.config.host), guest) else {
            return false;
        };
        let isn = self.next_isn(guest, apparent);
        let mss = mss_for_mtu(cx.config.mtu, guest);
        let connection = Connection {
            snd_nxt: isn.wrapping_add(1),
            retransmit_at: Some(cx.now + INITIAL_RTO),
            ..Connection::new(flow, guest_mac, guest, apparent, State::SynSent, isn, mss)
        };
        cx.out.extend(connection.syn(cx.config, cx.host));
        self.insert(connection, cx.now);
        true
    }

    /// The host connect of `flow` completed: answer the guest's SYN.
    pub fn on_connected(&mut self, cx: &mut Context<'_>, flow: FlowId) {
        let Some(connection) = self.connections.get_mut(&flow) else {
            return;
        };
        if connection.state != State::Connecting {
            return;
        }
        connection.host_connect = None;
        connection.state = State::SynAckSent;
        connection.snd_nxt = connection.snd_una.wrapping_add(1);
        connection.retransmit_at = Some(cx.now + connection.rto);
        cx.out.extend(connection.syn_ack(cx.config, cx.host));
        self.arm(flow, cx.now);
    }

    /// `flow`'s host socket failed (connect refused, unreachable or timed out; reset).
    /// A failed connect moves on to the next candidate if there is one; else the guest
    /// gets the ICMP error behind the failure, or RST, and the socket is closed.
    pub fn on_host_error(
        &mut self,
        cx: &mut Context<'_>,
        flow: FlowId,
        error: &io::Error,
        icmp: Option<HostIcmpError>,
    ) {
        let Some(connection) = self.connections.get_mut(&flow) else {
            return;
        };
        if connection.state == State::Connecting && connection.fail_over(cx) {
            return self.arm(flow, cx.now);
        }
        info!(guest = %connection.guest, remote = %connection.remote, %error, reason = "host side failed", "connection dropped");
        match connection.connect_error(icmp, error) {
            Some(report) => cx.out.extend(icmp::error_for_guest(cx.config, connection.guest_mac, &report)),
            None => cx.out.extend(connection.reset(cx.config)),
        }
        connection.failed = true;
        self.settle(flow, cx);
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
}

impl Connection {
    /// A SYN from the guest on a connection that exists: its answer to our SYN (inbound),
    /// or a retransmission of its own.
    pub fn on_syn(
        &mut self,
        cx: &mut Context<'_>,
        repr: &TcpRepr<'_>,
        sender: &mut Sender,
    ) -> Result<(), GatewayDropReason> {
        match self.state {
            State::SynSent => return self.on_syn_ack(cx, repr, sender),
            // The guest did not get our SYN-ACK: send it again.
            State::SynAckSent => cx.out.extend(self.syn_ack(cx.config, cx.host)),
            // Our ACK of its SYN-ACK was lost: acknowledge again.
            State::Established => self.send_ack(cx),
            // A retransmitted SYN while the host connect is under way.
            State::Connecting => {}
        }
        Ok(())
    }

    /// The guest answered an inbound SYN: acknowledge, and start relaying.
    fn on_syn_ack(
        &mut self,
        cx: &mut Context<'_>,
        repr: &TcpRepr<'_>,
        sender: &mut Sender,
    ) -> Result<(), GatewayDropReason> {
        if repr.ack_number.map(|ack| ack.0 as u32) != Some(self.snd_nxt) {
            return Err(GatewayDropReason::Malformed);
        }
        self.state = State::Established;
        self.snd_una = self.snd_nxt;
        self.rcv_nxt = (repr.seq_number.0 as u32).wrapping_add(1);
        self.guest_window_scale = repr.window_scale.unwrap_or(0);
        if repr.window_scale.is_none() {
            self.our_window_scale = 0;
        }
        self.guest_window = usize::from(repr.window_len);
        self.mss = self.mss.min(usize::from(repr.max_seg_size.unwrap_or(DEFAULT_MSS))).max(MIN_MSS);
        self.retransmit_at = None;
        self.rto = INITIAL_RTO;
        self.send_ack(cx);
        self.send_pending(cx, sender);
        Ok(())
    }

    /// The ICMP error that tells the guest why its SYN got nowhere, quoting the SYN; None
    /// where RST says it (refused, timed out, or the connection was already up).
    fn connect_error(&self, icmp: Option<HostIcmpError>, error: &io::Error) -> Option<GuestError> {
        let connect = self.host_connect.as_ref()?;
        if icmp.is_none() && error.kind() == io::ErrorKind::ConnectionRefused {
            return None; // the remote answered with RST
        }
        let (IpAddr::V4(guest), IpAddr::V4(remote)) = (self.guest.ip(), self.remote.ip()) else {
            return None; // ICMP errors are IPv4's only; RST says it over IPv6
        };
        let mut syn_header = [0u8; 8];
        syn_header[..2].copy_from_slice(&self.guest.port().to_be_bytes());
        syn_header[2..4].copy_from_slice(&self.remote.port().to_be_bytes());
        syn_header[4..].copy_from_slice(&self.rcv_nxt.wrapping_sub(1).to_be_bytes());
        GuestError::from_host(guest, remote, connect.remote.ip(), IpProtocol::Tcp, syn_header, icmp, error)
    }

    /// Moves the host connect on to its next candidate. False if there is none, or none
    /// would start; the connection is then lost.
    pub fn fail_over(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(connect) = self.host_connect.as_mut() else {
            return false;
        };
        if connect.fallbacks.len() == 0 {
            return false;
        }
        cx.host.tcp_close(self.flow, true);
        let Some(remote) = connect_first(cx.host, self.flow, &mut connect.fallbacks, connect.ttl) else {
            return false;
        };
        debug!(failed = %connect.remote, next = %remote, "connect failed; trying the next candidate");
        connect.remote = remote;
        self.retransmit_at = (connect.fallbacks.len() > 0).then(|| cx.now + FAILOVER_TIMEOUT);
        true
    }
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
