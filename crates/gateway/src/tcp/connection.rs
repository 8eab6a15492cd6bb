//! One TCP connection between a guest and a host socket ([`Connection`]), and what the
//! guest's ACKs and data do to it. Building segments, sending toward the guest and
//! opening connections are the sibling files' business; the table of connections is
//! `mod.rs`'s.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use smoltcp::wire::{TcpControl, TcpRepr};
use vnet_wire::MacAddress;

use super::congestion::CongestionWindow;
use super::context::Context;
use crate::counters::GatewayDropReason;
use crate::egress::GatewayIo;
use crate::flows::FlowId;

/// Window scale vnet offers: windows up to 8 MiB.
pub(super) const OUR_WINDOW_SCALE: u8 = 7;
/// First retransmission timeout, doubled on each timeout up to [`MAX_RTO`].
pub(super) const INITIAL_RTO: Duration = Duration::from_millis(1000);
pub(super) const MAX_RTO: Duration = Duration::from_secs(60);
/// Timeouts in a row (SYN, SYN-ACK or data) before a connection is given up.
pub(super) const MAX_RETRANSMITS: u32 = 8;
/// Retransmissions of a SYN or SYN-ACK before the handshake is given up: about 15 s, as
/// a guest that never answers must not hold a host socket for long.
pub(super) const MAX_HANDSHAKE_RETRANSMITS: u32 = 3;
/// The smallest MSS vnet uses, whatever the guest says.
pub(super) const MIN_MSS: usize = 64;
/// How long a connection may linger once both sides sent FIN, before it is dropped.
pub(super) const CLOSING_TIMEOUT: Duration = Duration::from_secs(60);
/// ACKs for one sequence number that make a sender retransmit at once (RFC 5681).
pub(super) const DUPLICATE_ACKS: usize = 3;
/// How soon a window too small for the guest is looked at again, at first; each look
/// that finds it still too small doubles the wait, up to [`MAX_WINDOW_RECHECK`], so a
/// host peer that stopped reading costs a few wake-ups a second, not a thousand.
const FIRST_WINDOW_RECHECK: Duration = Duration::from_millis(1);
/// The longest wait between looks at a window too small: well below the 200 ms after
/// which a Linux guest probes the window itself.
const MAX_WINDOW_RECHECK: Duration = Duration::from_millis(64);
/// How long an ACK of a guest's request may wait for the host's answer to carry it, on a
/// connection that goes back and forth (request, answer). Shorter than any guest's own
/// delayed ACK, so a guest that waits for the ACK (Nagle) waits no longer than it would
/// for a Linux peer.
const DELAYED_ACK: Duration = Duration::from_millis(1);
/// Frames the first peek of a connection fills at most, and the fewest any peek asks for.
pub(super) const FIRST_PEEK_BATCH: usize = 1;

/// A host connect under way for a guest's SYN.
#[derive(Debug)]
pub(super) struct HostConnect {
    /// Where the host socket is connecting to.
    pub remote: SocketAddr,
    /// Candidates still to try if that connect fails.
    pub fallbacks: std::vec::IntoIter<SocketAddr>,
    /// The TTL the host's SYN carries.
    pub ttl: Option<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
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
pub(super) struct Connection {
    /// The host socket.
    pub flow: FlowId,
    pub guest_mac: MacAddress,
    pub guest: SocketAddr,
    /// The address the guest sees the connection go to (or, inbound, come from).
    pub remote: SocketAddr,
    /// The host connect under way, while the state is [`State::Connecting`].
    pub host_connect: Option<HostConnect>,
    pub state: State,
    /// Next byte expected from the guest.
    pub rcv_nxt: u32,
    /// Oldest byte sent to the guest and not yet acknowledged.
    pub snd_una: u32,
    /// Next byte to send to the guest.
    pub snd_nxt: u32,
    /// The guest's receive window, in bytes.
    pub guest_window: usize,
    pub guest_window_scale: u8,
    /// The scale of the windows vnet advertises: [`OUR_WINDOW_SCALE`] if the guest
    /// offered scaling in its SYN, else 0 (scaling is used only if both offer it).
    pub our_window_scale: u8,
    /// The largest segment payload to send.
    pub mss: usize,
    /// The host closed its side and every byte before the FIN has been peeked.
    pub host_eof: bool,
    /// The host socket may hold bytes not yet peeked: false once a peek found nothing
    /// more, true again when the host says it is readable.
    pub host_unpeeked: bool,
    pub fin_sent: bool,
    /// The FIN's sequence number, once it was sent (a rewind sends it again there).
    pub fin_seq: Option<u32>,
    /// One past the last sequence number ever sent: after a rewind, the guest may still
    /// acknowledge what it got before, up to here.
    pub snd_max: u32,
    pub guest_fin: bool,
    /// The window last advertised to the guest was too small for a segment (zero, or
    /// less than one MSS): a Linux sender then sends nothing until its persist timer
    /// (200 ms or more), so an update must follow as soon as the host socket has room.
    pub window_unusable: bool,
    /// The largest window offered so far. A Linux sender cuts its segments to half of
    /// the largest window it has seen, so a window is too small for it only below that
    /// or the MSS, whichever is less.
    pub max_window: usize,
    /// How long to wait before the next look at a window too small.
    pub window_recheck: Duration,
    /// The connection goes back and forth: the host answered the guest's last data
    /// within [`DELAYED_ACK`]. The ACK of a short segment then waits for the answer to
    /// carry it, one frame instead of two.
    pub interactive: bool,
    /// When the last guest data that the host may answer arrived.
    pub guest_data_at: Option<Instant>,
    /// An ACK the guest is owed, and when it must go if no segment carries it first.
    pub ack_due: Option<Instant>,
    /// Data waits for room on the guest's port, and the connection is on the sender's
    /// list of those.
    pub waits_for_room: bool,
    /// ACKs in a row that acknowledged nothing new; at [`DUPLICATE_ACKS`] the data since
    /// the last acknowledged byte is sent again.
    pub duplicate_acks: u32,
    /// The host socket took only part of a guest segment: once it has room again, the
    /// guest is asked to send the rest at once (duplicate ACKs) instead of after its
    /// retransmission timeout.
    pub guest_data_refused: bool,
    /// How much may be unacknowledged toward the guest, as losses past the gateway allow.
    pub congestion: CongestionWindow,
    /// When to probe a window the guest closed while the host has data for it, and how
    /// many probes in a row went unanswered by an open window.
    pub probe_at: Option<Instant>,
    pub probes: u32,
    pub rto: Duration,
    pub retransmit_at: Option<Instant>,
    pub closing_since: Option<Instant>,
    /// Timeouts in a row without progress.
    pub retransmits: u32,
    /// How many frames the next peek of the host socket fills at most.
    pub peek_batch: usize,
    /// When to look again whether the host socket has room, while the guest was told the
    /// window is closed: the socket signals writability only after a write it refused,
    /// and a closed window means no write was tried.
    pub window_check_at: Option<Instant>,
    /// The time the connection is in the timer heap for; when its deadline moves, it is
    /// added again for the new one, and the old entry is stale.
    pub timer_armed: Option<Instant>,
    /// The host socket failed or the connection was given up: the flow must go, its host
    /// socket closed abortively.
    pub failed: bool,
}

/// How long to wait before a window probe after `probes` unanswered ones.
fn probe_interval(probes: u32) -> Duration {
    INITIAL_RTO.saturating_mul(1 << probes.min(6)).min(MAX_RTO)
}

/// Whether `a` is before `b` in sequence space.
fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

impl Connection {
    /// A connection of host socket `flow` between `guest` and `remote` (the address the
    /// guest sees) in `state`, with our initial sequence number `isn` and segments of up
    /// to `mss` bytes, before anything was sent or received.
    pub fn new(
        flow: FlowId,
        guest_mac: MacAddress,
        guest: SocketAddr,
        remote: SocketAddr,
        state: State,
        isn: u32,
        mss: usize,
    ) -> Self {
        Self {
            flow,
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
            fin_seq: None,
            snd_max: isn,
            guest_fin: false,
            window_unusable: false,
            max_window: 0,
            window_recheck: FIRST_WINDOW_RECHECK,
            interactive: false,
            guest_data_at: None,
            ack_due: None,
            waits_for_room: false,
            guest_data_refused: false,
            duplicate_acks: 0,
            congestion: CongestionWindow::new(mss),
            probe_at: None,
            probes: 0,
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

    /// The state for an operator: the handshake step, or which side has closed.
    pub fn state_name(&self) -> &'static str {
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

    /// Both sides closed and the guest acknowledged our FIN.
    pub fn finished(&self) -> bool {
        self.guest_fin && self.fin_sent && self.snd_una == self.snd_nxt
    }

    /// The window to offer the guest: the host socket's free send space.
    pub fn window_for_guest(&mut self, host: &mut dyn GatewayIo) -> usize {
        let space = host.tcp_send_space(self.flow);
        self.max_window = self.max_window.max(space);
        let smallest_segment = self.mss.min(self.max_window / 2);
        self.window_unusable = space >> self.our_window_scale == 0 || space < smallest_segment;
        if !self.window_unusable {
            self.window_recheck = FIRST_WINDOW_RECHECK;
        }
        space
    }

    /// A look at a window too small found it still too small: wait longer next time.
    pub fn back_off_window_recheck(&mut self) {
        if self.window_unusable {
            self.window_recheck = (self.window_recheck * 2).min(MAX_WINDOW_RECHECK);
        }
    }

    /// Sends the guest an ACK with the current window now.
    pub fn send_ack(&mut self, cx: &mut Context<'_>) {
        let window = self.window_for_guest(cx.host);
        cx.out.extend(self.ack(cx.config, window));
        self.ack_due = None;
    }

    /// Acknowledges the guest's data in `repr`, just taken: at once, or, on an
    /// interactive connection and for a short segment, with the host's answer if it comes
    /// within [`DELAYED_ACK`].
    pub fn acknowledge_guest_data(&mut self, cx: &mut Context<'_>, repr: &TcpRepr<'_>) {
        let short = !repr.payload.is_empty() && repr.payload.len() < self.mss;
        let plain = repr.control != TcpControl::Fin && !self.guest_data_refused && !self.window_unusable;
        if short {
            self.guest_data_at = Some(cx.now);
        }
        if self.interactive && short && plain {
            self.ack_due.get_or_insert(cx.now + DELAYED_ACK);
        } else {
            self.send_ack(cx);
        }
    }

    /// A segment carrying data went to the guest: it carries the ACK owed too, and if it
    /// answers guest data that came just before, the connection is interactive.
    pub fn sent_data(&mut self, now: Instant) {
        self.ack_due = None;
        if let Some(at) = self.guest_data_at.take() {
            self.interactive = now < at + DELAYED_ACK;
        }
    }

    /// The ACK owed went unanswered for [`DELAYED_ACK`]: send it, and ACK at once from now
    /// on until the host answers quickly again.
    pub fn on_delayed_ack(&mut self, cx: &mut Context<'_>) {
        if self.ack_due.is_some_and(|due| due <= cx.now) {
            self.interactive = false;
            self.send_ack(cx);
        }
    }

    /// One past the last sequence number sent, before a rewind or since.
    fn highest_sent(&self) -> u32 {
        if seq_lt(self.snd_max, self.snd_nxt) {
            self.snd_nxt
        } else {
            self.snd_max
        }
    }

    /// Bytes sent to the guest and not acknowledged yet.
    pub fn in_flight(&self) -> usize {
        self.snd_nxt.wrapping_sub(self.snd_una) as usize
    }

    /// Notes whether the guest's window, shut with nothing in flight, keeps data the host
    /// has from going: then a probe asks for the window after a timeout (doubled for
    /// each unanswered probe), since the guest's update may have been lost on the way.
    pub fn watch_shut_window(&mut self, now: Instant) {
        let shut = self.guest_window == 0 && self.in_flight() == 0 && self.host_unpeeked && !self.fin_sent;
        self.probe_at = shut.then(|| self.probe_at.unwrap_or(now + probe_interval(self.probes)));
    }

    /// The probe timer went off: probe the window and wait longer for the next one.
    pub fn probe_window(&mut self, cx: &mut Context<'_>) {
        let window = self.window_for_guest(cx.host);
        cx.out.extend(self.window_probe(cx.config, window));
        self.probes = self.probes.saturating_add(1);
        self.probe_at = None;
        self.watch_shut_window(cx.now);
    }

    /// Sends again from the first byte the guest has not acknowledged.
    pub fn rewind(&mut self) {
        self.snd_max = self.highest_sent();
        self.snd_nxt = self.snd_una;
        self.fin_sent = false;
        self.host_unpeeked = true;
    }

    /// When the connection wants its timer next.
    fn deadline(&self) -> Option<Instant> {
        let closing_timeout = self.closing_since.map(|since| since + CLOSING_TIMEOUT);
        [self.retransmit_at, closing_timeout, self.window_check_at, self.ack_due, self.probe_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// Notes when a window told closed is to be looked at again, and returns the time the
    /// connection must be put in the timer heap for, if it is not there for that time
    /// yet. The entry for any other time is stale from then on.
    pub fn arm(&mut self, now: Instant) -> Option<Instant> {
        let window_closed = self.window_unusable && self.state == State::Established;
        self.window_check_at =
            window_closed.then(|| self.window_check_at.unwrap_or(now + self.window_recheck));
        let deadline = self.deadline();
        if self.timer_armed == deadline {
            return None;
        }
        self.timer_armed = deadline;
        deadline
    }

    /// Takes the guest's ACK in `repr`: consumes what it acknowledges from the host
    /// socket and keeps the retransmission timer running while anything is still
    /// unacknowledged. An error means the connection must be reset.
    pub fn on_ack(&mut self, cx: &mut Context<'_>, repr: &TcpRepr<'_>) -> Result<(), GatewayDropReason> {
        let Some(ack) = repr.ack_number.map(|ack| ack.0 as u32) else {
            return Ok(());
        };
        if self.state == State::SynAckSent {
            if ack != self.snd_nxt {
                return Err(GatewayDropReason::Malformed);
            }
            self.state = State::Established;
            cx.flows.handshake_done(self.flow);
            self.snd_una = ack;
            self.retransmit_at = None;
        }
        let window = usize::from(repr.window_len) << self.guest_window_scale;
        let duplicate = ack == self.snd_una
            && self.snd_nxt != self.snd_una
            && repr.payload.is_empty()
            && window == self.guest_window;
        self.guest_window = window;
        if window > 0 {
            self.probes = 0;
        }
        if duplicate {
            self.duplicate_acks += 1;
            if self.duplicate_acks == DUPLICATE_ACKS as u32 {
                // The guest lost a segment (a full tap queue, say): send again from the
                // first byte it lacks now rather than after the retransmission timeout,
                // and less at a time.
                self.congestion.on_loss(self.in_flight());
                self.rewind();
            }
        }
        if seq_lt(self.snd_una, ack) && !seq_lt(self.highest_sent(), ack) {
            self.duplicate_acks = 0;
            let mut acked = ack.wrapping_sub(self.snd_una) as usize;
            if self.fin_seq.is_some_and(|fin| seq_lt(fin, ack)) {
                acked -= 1; // the FIN takes a sequence number but no byte
                self.fin_sent = true;
            }
            if seq_lt(self.snd_nxt, ack) {
                // What went before a rewind arrived after all: go on from there.
                self.snd_nxt = ack;
            }
            if acked > 0 && cx.host.tcp_consume(self.flow, acked).is_err() {
                return Err(GatewayDropReason::HostSocket);
            }
            self.snd_una = ack;
            self.congestion.on_acked(acked);
            self.rto = INITIAL_RTO;
            self.retransmits = 0;
            self.retransmit_at = (self.snd_una != self.snd_nxt).then(|| cx.now + self.rto);
        }
        Ok(())
    }

    /// Whether `repr` carries nothing new: an empty segment from before what was taken
    /// (a keepalive or a window probe), which an ACK answers (RFC 9293, 3.10.7.4).
    pub fn is_probe(&self, repr: &TcpRepr<'_>) -> bool {
        repr.payload.is_empty()
            && repr.control == TcpControl::None
            && seq_lt(repr.seq_number.0 as u32, self.rcv_nxt)
    }

    /// Writes the guest's data in `repr` to the host socket, as much as it takes, and
    /// passes a FIN on once everything before it was taken.
    pub fn on_guest_data(&mut self, cx: &mut Context<'_>, repr: &TcpRepr<'_>) {
        if self.guest_fin {
            return;
        }
        let seq = repr.seq_number.0 as u32;
        // A retransmission that overlaps what was taken: keep only the new bytes.
        let already = self.rcv_nxt.wrapping_sub(seq) as usize;
        if seq_lt(self.rcv_nxt, seq) || already > repr.payload.len() {
            return; // out of order or wholly old: the ACK we send says where we are
        }
        let payload = &repr.payload[already..];
        let taken = if payload.is_empty() {
            0
        } else {
            match cx.send_guest_data(self.flow, payload) {
                Ok(taken) => taken,
                Err(e) => return self.abort_on_host_error(cx, &e, "host write failed"),
            }
        };
        self.rcv_nxt = self.rcv_nxt.wrapping_add(taken as u32);
        self.guest_data_refused |= taken < payload.len();
        if repr.control == TcpControl::Fin && taken == payload.len() {
            self.rcv_nxt = self.rcv_nxt.wrapping_add(1);
            self.guest_fin = true;
            cx.host.tcp_shutdown_write(self.flow);
            if self.fin_sent {
                self.closing_since.get_or_insert(cx.now);
            }
        }
    }
}
