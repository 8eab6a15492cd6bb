//! Opening connections, both ways. A guest's SYN starts a host connect (trying each
//! candidate of a [`ConnectTarget`] in turn) and is answered with SYN-ACK once the host
//! side is up, or with the RST or ICMP error behind its failure; a host client on a
//! hostfwd port gets a connection to the guest from the gateway's address and a port of
//! its own. The table the connections go into is `mod.rs`'s, which this file does not
//! know.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use smoltcp::wire::{IpProtocol, TcpControl, TcpRepr};
use tracing::{debug, info};
use vnet_wire::MacAddress;

use super::congestion::CongestionWindow;
use super::connection::{Connection, HostConnect, State, INITIAL_RTO, MIN_MSS, OUR_WINDOW_SCALE};
use super::context::Context;
use super::segment::{mss_for_mtu, reset_for};
use super::send::Sender;
use crate::budget::FlowKind;
use crate::config::GatewayConfig;
use crate::counters::GatewayDropReason;
use crate::egress::GatewayIo;
use crate::flows::FlowId;
use crate::guest::Guest;
use crate::icmp::{self, GuestError, HostIcmpError};
use crate::packet::BuiltFrame;

/// How long a connect may take before the next candidate is tried, where there is one.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the connect to the last (or only) candidate may take before the guest gets
/// RST. A handshake holds a host socket and counts against its guest's half-open
/// budget, so it must not last the two minutes the kernel would give it.
const LAST_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The MSS a guest's SYN without the option stands for (RFC 9293).
const DEFAULT_MSS: u16 = 536;

/// Where the host side of a new guest connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectTarget {
    /// The candidates, tried in order until one connects; empty for a command.
    pub remotes: Vec<SocketAddr>,
    /// The TTL the host's SYN carries; None for the host's default.
    pub ttl: Option<u8>,
    /// A guestfwd command run for the connection instead of a connect.
    pub command: Option<String>,
}

/// Who a guest's first segment on a new connection is from and to.
pub(super) struct NewConnection {
    /// The guest whose budget the connection is charged to.
    pub sender: Guest,
    pub guest_mac: MacAddress,
    pub guest: SocketAddr,
    pub dst: SocketAddr,
}

impl NewConnection {
    /// The connection a guest's first segment `repr` opens, its host connect started,
    /// with our initial sequence number `isn`. A SYN opens one; a RST is let go (None);
    /// anything else, or a SYN that `target` refuses or no host socket takes, is
    /// answered with RST.
    pub fn open(
        &self,
        cx: &mut Context<'_>,
        repr: &TcpRepr<'_>,
        target: impl FnOnce() -> Result<ConnectTarget, GatewayDropReason>,
        isn: u32,
    ) -> Result<Option<Connection>, GatewayDropReason> {
        if repr.control == TcpControl::Rst {
            return Ok(None);
        }
        if repr.control != TcpControl::Syn || repr.ack_number.is_some() {
            cx.out.extend(self.reset(cx.config, repr));
            return Err(GatewayDropReason::UnknownFlow);
        }
        let target = match target() {
            Ok(target) => target,
            Err(reason) => {
                cx.out.extend(self.reset(cx.config, repr));
                return Err(reason);
            }
        };
        let flow = match cx.flows.open(self.sender, FlowKind::Tcp) {
            Ok(flow) => flow,
            Err(_) => {
                cx.out.extend(self.reset(cx.config, repr));
                return Err(GatewayDropReason::GuestBudget);
            }
        };
        let mut candidates = target.remotes.into_iter();
        let host_remote = match &target.command {
            Some(command) => cx.host.tcp_run_command(flow, command).ok().map(|()| self.dst),
            None => connect_first(cx.host, flow, &mut candidates, target.ttl),
        };
        let Some(host_remote) = host_remote else {
            cx.flows.release(flow);
            cx.out.extend(self.reset(cx.config, repr));
            return Err(GatewayDropReason::HostSocket);
        };
        let guest_mss = usize::from(repr.max_seg_size.unwrap_or(DEFAULT_MSS));
        let connect_deadline = connect_deadline(cx.now, &candidates);
        let mss = guest_mss.clamp(MIN_MSS, mss_for_mtu(cx.config.mtu, self.guest));
        Ok(Some(Connection {
            host_connect: Some(HostConnect { remote: host_remote, fallbacks: candidates, ttl: target.ttl }),
            rcv_nxt: (repr.seq_number.0 as u32).wrapping_add(1),
            guest_window: usize::from(repr.window_len),
            guest_window_scale: repr.window_scale.unwrap_or(0),
            our_window_scale: if repr.window_scale.is_some() { OUR_WINDOW_SCALE } else { 0 },
            retransmit_at: Some(connect_deadline),
            ..Connection::new(flow, self.guest_mac, self.guest, self.dst, State::Connecting, isn, mss)
        }))
    }

    /// A RST answering `repr`, the guest's first segment, which has no connection.
    fn reset(&self, config: &GatewayConfig, repr: &TcpRepr<'_>) -> BuiltFrame {
        reset_for(config, self.guest_mac, self.guest, self.dst, repr)
    }
}

impl Connection {
    /// A connection to `guest` from `apparent` (an address and port of the gateway) for a
    /// host client on a hostfwd port whose socket is `flow`, with our initial sequence
    /// number `isn`; its SYN is sent.
    pub fn inbound(
        cx: &mut Context<'_>,
        flow: FlowId,
        guest_mac: MacAddress,
        guest: SocketAddr,
        apparent: SocketAddr,
        isn: u32,
    ) -> Self {
        let mss = mss_for_mtu(cx.config.mtu, guest);
        let connection = Connection {
            snd_nxt: isn.wrapping_add(1),
            retransmit_at: Some(cx.now + INITIAL_RTO),
            ..Connection::new(flow, guest_mac, guest, apparent, State::SynSent, isn, mss)
        };
        cx.out.extend(connection.syn(cx.config, cx.host));
        connection
    }

    /// The host connect completed: answer the guest's SYN.
    pub fn on_connected(&mut self, cx: &mut Context<'_>) {
        if self.state != State::Connecting {
            return;
        }
        self.host_connect = None;
        self.state = State::SynAckSent;
        self.snd_nxt = self.snd_una.wrapping_add(1);
        self.retransmit_at = Some(cx.now + self.rto);
        cx.out.extend(self.syn_ack(cx.config, cx.host));
    }

    /// The host socket failed (connect refused, unreachable or timed out; reset). A
    /// failed connect moves on to the next candidate if there is one; else the guest
    /// gets the ICMP error behind the failure, or RST, and the connection has failed.
    pub fn on_host_error(&mut self, cx: &mut Context<'_>, error: &io::Error, icmp: Option<HostIcmpError>) {
        if self.state == State::Connecting && self.fail_over(cx) {
            return;
        }
        match self.connect_error(icmp, error) {
            Some(report) => {
                info!(guest = %self.guest, remote = %self.remote, %error, reason = "host side failed", "connection dropped");
                cx.out.extend(icmp::error_for_guest(cx.config, self.guest_mac, &report).and_then(Result::ok));
                cx.counters.record(GatewayDropReason::HostError);
                self.failed = true;
            }
            None => self.abort_on_host_error(cx, error, "host side failed"),
        }
    }

    /// Ends the connection because its host socket failed (`what` says how): the guest
    /// gets RST at once, rather than on its next segment, and the end is counted.
    pub fn abort_on_host_error(&mut self, cx: &mut Context<'_>, error: &io::Error, what: &'static str) {
        info!(guest = %self.guest, remote = %self.remote, %error, reason = what, "connection dropped");
        cx.out.extend(self.reset(cx.config));
        cx.counters.record(GatewayDropReason::HostError);
        self.failed = true;
    }

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
        cx.flows.handshake_done(self.flow);
        self.snd_una = self.snd_nxt;
        self.rcv_nxt = (repr.seq_number.0 as u32).wrapping_add(1);
        self.guest_window_scale = repr.window_scale.unwrap_or(0);
        if repr.window_scale.is_none() {
            self.our_window_scale = 0;
        }
        self.guest_window = usize::from(repr.window_len);
        self.mss = self.mss.min(usize::from(repr.max_seg_size.unwrap_or(DEFAULT_MSS))).max(MIN_MSS);
        self.congestion = CongestionWindow::new(self.mss);
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
        let mut syn_header = [0u8; 8];
        syn_header[..2].copy_from_slice(&self.guest.port().to_be_bytes());
        syn_header[2..4].copy_from_slice(&self.remote.port().to_be_bytes());
        syn_header[4..].copy_from_slice(&self.rcv_nxt.wrapping_sub(1).to_be_bytes());
        let (guest, remote) = (self.guest.ip(), self.remote.ip());
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
        self.retransmit_at = Some(connect_deadline(cx.now, &connect.fallbacks));
        true
    }
}

/// When a host connect started `now` is given up: moved on to the next of `fallbacks`,
/// or, with none left, failed.
fn connect_deadline(now: Instant, fallbacks: &std::vec::IntoIter<SocketAddr>) -> Instant {
    now + if fallbacks.len() > 0 { FAILOVER_TIMEOUT } else { LAST_CONNECT_TIMEOUT }
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
