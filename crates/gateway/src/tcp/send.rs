//! Sending toward the guest: host data peeked straight into pooled frames within the
//! guest's window and the room on its port, the FIN after it, and window updates once
//! the host socket has room again. [`Sender`] keeps what that needs across connections.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;

use smoltcp::wire::{TcpControl, ETHERNET_HEADER_LEN};
use vnet_wire::frame::LendRefusal;
use vnet_wire::{Frame, FrameBuffer, MacAddress, MAX_FRAME_LEN};

use super::connection::{Connection, State, DUPLICATE_ACKS, FIRST_PEEK_BATCH};
use super::context::Context;
use super::segment::{ip_tcp_headers_len, Outgoing};
use crate::egress::{EgressRoom, GatewayIo};
use crate::flows::FlowId;

/// Most frames filled by one peek of a host socket.
const MAX_FRAMES_PER_PEEK: usize = 64;
/// Peeks of up to this many frames use a short list of slices.
const FEW_FRAMES: usize = 4;

/// What sending to guests needs besides the connection: the frames being peeked into
/// (kept so that the list's room is reused), and the connections whose data waits for
/// room on the segment (each once: a connection knows whether it is listed), with a
/// second list that the waiting ones move to while they are resumed, kept likewise.
#[derive(Default)]
pub(super) struct Sender {
    buffers: Vec<FrameBuffer>,
    blocked: Vec<FlowId>,
    resuming: Vec<FlowId>,
}

impl Sender {
    /// Whether some connection's data waits for room toward its guest.
    pub fn waits_for_room(&self) -> bool {
        !self.blocked.is_empty()
    }

    /// The connections whose data waited for room (some may be gone since), which no
    /// longer count as waiting; hand the list back with [`Sender::give_back`].
    pub fn take_blocked(&mut self) -> Vec<FlowId> {
        let spare = std::mem::take(&mut self.resuming);
        std::mem::replace(&mut self.blocked, spare)
    }

    /// Keeps the (emptied) list [`Sender::take_blocked`] gave out, for its room.
    pub fn give_back(&mut self, resuming: Vec<FlowId>) {
        self.resuming = resuming;
    }
}

/// What sending in lent receive buffers did.
struct Lent {
    /// Bytes sent.
    sent: usize,
    /// Whether it stopped because the guest has not posted enough buffers yet.
    waits_for_buffers: bool,
}

/// What one peek of the host socket gave.
enum Peeked {
    /// This many bytes, in the sender's buffers.
    Data(usize),
    /// Nothing more now, or the connection ended or failed: stop sending.
    Stop,
}

impl Connection {
    /// Peeks what the host has beyond what was sent and sends it within the guest's
    /// window; sends FIN once the host closed and everything before it went out.
    pub fn send_pending(&mut self, cx: &mut Context<'_>, sender: &mut Sender) {
        if self.state != State::Established {
            return;
        }
        let mut egress = egress_left(cx.host.guest_room(self.guest_mac), self.guest_mac, cx.out);
        loop {
            let in_flight = self.in_flight();
            let room = self.guest_window.min(self.congestion.allowed()).saturating_sub(in_flight);
            if room == 0 || self.fin_sent || !self.host_unpeeked {
                break;
            }
            // Toward a port that offloads, one frame carries as much as the largest frame
            // holds and the port (or the guest's kernel) cuts it at the MSS.
            let frame_payload =
                if egress.takes_offloads { max_offloaded_payload(self.guest) } else { self.mss };
            let affordable =
                payload_room(egress, frame_payload, ETHERNET_HEADER_LEN + ip_tcp_headers_len(self.guest));
            if affordable == 0 {
                // The guest's port is full: the data stays in the host socket until the
                // port drains.
                self.wait_for_room(sender);
                break;
            }
            let want = room.min(affordable).min(frame_payload * self.peek_batch);
            if egress.takes_offloads && egress.lends_receive {
                match self.send_lent(cx, want, frame_payload, &mut egress) {
                    Lent { sent, .. } if sent == want => continue,
                    Lent { waits_for_buffers: true, .. } => {
                        // The guest posts receive buffers before more is sent, as it
                        // would make room in a full queue.
                        self.wait_for_room(sender);
                        break;
                    }
                    Lent { sent, .. } if sent > 0 => break,
                    Lent { .. } => {}
                }
            }
            let Peeked::Data(got) = self.peek(cx, sender, want, frame_payload) else {
                break;
            };
            let all_sent = self.send_peeked(cx, sender, got, frame_payload, &mut egress);
            // Frames in vnet's buffers now go ahead of any that lent buffers would carry.
            egress.lends_receive = false;
            if !all_sent || got < want {
                break;
            }
        }
        self.watch_shut_window(cx.now);
        self.send_fin(cx);
    }

    /// Peeks up to `want` bytes beyond what was sent into whole frames of
    /// `frame_payload` bytes, straight into the payload room of pooled frames: as many
    /// frames as the last peek filled (twice that if it filled all it asked for), so a
    /// trickle takes few buffers and a stream soon takes many.
    fn peek(
        &mut self,
        cx: &mut Context<'_>,
        sender: &mut Sender,
        want: usize,
        frame_payload: usize,
    ) -> Peeked {
        let frames = want.div_ceil(frame_payload);
        sender.buffers.clear();
        sender.buffers.extend((0..frames).map(|_| FrameBuffer::for_len(frame_payload)));
        let in_flight = self.in_flight();
        let buffers = &mut sender.buffers[..];
        // Most peeks of a trickle fill a frame or two: their list of slices is short.
        let peeked = if frames <= FEW_FRAMES {
            peek_into::<FEW_FRAMES>(cx.host, self.flow, in_flight, buffers, want, frame_payload)
        } else {
            peek_into::<MAX_FRAMES_PER_PEEK>(cx.host, self.flow, in_flight, buffers, want, frame_payload)
        };
        match peeked {
            Ok(0) => {
                self.host_eof = true;
                Peeked::Stop
            }
            Ok(got) => {
                self.peek_batch = if got == want {
                    (self.peek_batch * 2).min(MAX_FRAMES_PER_PEEK)
                } else {
                    got.div_ceil(frame_payload).max(FIRST_PEEK_BATCH)
                };
                Peeked::Data(got)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.host_unpeeked = false;
                Peeked::Stop
            }
            Err(e) => {
                self.abort_on_host_error(cx, &e, "host read failed");
                Peeked::Stop
            }
        }
    }

    /// The header fields of the next data segment toward the guest, advertising
    /// `window`.
    fn next_data(&self, window: usize) -> Outgoing<'static> {
        Outgoing {
            control: TcpControl::Psh,
            seq: self.snd_nxt,
            ack: Some(self.rcv_nxt),
            window,
            syn_options: false,
            payload: &[],
        }
    }

    /// Sends `segment`, carrying `len` bytes of data, and counts it against `egress`.
    fn send_data_segment(
        &mut self,
        cx: &mut Context<'_>,
        segment: Frame,
        len: usize,
        egress: &mut EgressRoom,
    ) {
        egress.frames = egress.frames.saturating_sub(1);
        egress.bytes = egress.bytes.saturating_sub(segment.len());
        cx.out.push(segment);
        self.snd_nxt = self.snd_nxt.wrapping_add(len as u32);
        self.sent_data(cx.now);
    }

    /// Lists the connection among those waiting for room toward their guest.
    fn wait_for_room(&mut self, sender: &mut Sender) {
        if !self.waits_for_room {
            self.waits_for_room = true;
            sender.blocked.push(self.flow);
        }
    }

    /// Sends up to `want` bytes of what waits in the host socket in frames of up to
    /// `frame_payload` bytes whose payload is peeked straight into the guest's own
    /// receive buffers, where its port lends them; counts them against `egress`. Sends
    /// nothing where the port does not lend or the socket's queue is not known, and the
    /// caller peeks into vnet's buffers instead.
    fn send_lent(
        &mut self,
        cx: &mut Context<'_>,
        want: usize,
        frame_payload: usize,
        egress: &mut EgressRoom,
    ) -> Lent {
        let mut lent = Lent { sent: 0, waits_for_buffers: false };
        let Some(unread) = cx.host.tcp_unread(self.flow) else {
            return lent;
        };
        let mut left = unread.saturating_sub(self.snd_nxt.wrapping_sub(self.snd_una) as usize).min(want);
        let mut window = None;
        while left > 0 {
            let len = left.min(frame_payload);
            let window = *window.get_or_insert_with(|| self.window_for_guest(cx.host));
            let header = self.next_data(window);
            let Ok(headers) = self.headers_for_lent(cx.config, &header, len) else {
                break;
            };
            let tail = match cx.host.lend_receive(self.guest_mac, headers.len(), len) {
                Ok(tail) => tail,
                Err(refusal) => {
                    lent.waits_for_buffers = refusal == LendRefusal::NoBuffers;
                    break;
                }
            };
            let offset = self.snd_nxt.wrapping_sub(self.snd_una) as usize;
            // A tail not filled whole goes back to the guest unused.
            if !matches!(cx.host.tcp_peek_lent(self.flow, offset, &tail), Ok(got) if got == len) {
                break;
            }
            let Ok(segment) = self.lent_data_segment(headers, tail) else {
                break;
            };
            self.send_data_segment(cx, segment, len, egress);
            lent.sent += len;
            left -= len;
        }
        if lent.sent > 0 {
            self.retransmit_at.get_or_insert(cx.now + self.rto);
        }
        lent
    }

    /// Sends the `got` bytes the last peek put into the sender's buffers, a segment per
    /// buffer, and counts them against `egress`. False if a segment could not be built:
    /// what is left stays in the host socket, and peeking it again now would only fail
    /// again.
    fn send_peeked(
        &mut self,
        cx: &mut Context<'_>,
        sender: &mut Sender,
        got: usize,
        frame_payload: usize,
        egress: &mut EgressRoom,
    ) -> bool {
        let window = self.window_for_guest(cx.host);
        let mut all_sent = true;
        for (index, mut payload) in sender.buffers.drain(..).enumerate() {
            let len = got.saturating_sub(index * frame_payload).min(frame_payload);
            if len == 0 {
                break;
            }
            payload.commit(len);
            let header = self.next_data(window);
            let Ok(segment) = self.data_segment(cx.config, &header, payload, egress.takes_offloads) else {
                all_sent = false;
                break;
            };
            self.send_data_segment(cx, segment, len, egress);
        }
        self.retransmit_at.get_or_insert(cx.now + self.rto);
        all_sent
    }

    /// Sends FIN once the host closed, everything before it went out and the guest has a
    /// window for it.
    fn send_fin(&mut self, cx: &mut Context<'_>) {
        if !self.host_eof || self.fin_sent || self.guest_window == 0 {
            return;
        }
        let fin = Outgoing {
            control: TcpControl::Fin,
            seq: self.snd_nxt,
            ack: Some(self.rcv_nxt),
            window: self.window_for_guest(cx.host),
            syn_options: false,
            payload: &[],
        };
        cx.out.extend(self.segment(cx.config, &fin));
        self.fin_seq = Some(self.snd_nxt);
        self.ack_due = None;
        self.snd_nxt = self.snd_nxt.wrapping_add(1);
        self.fin_sent = true;
        self.retransmit_at.get_or_insert(cx.now + self.rto);
        if self.guest_fin {
            self.closing_since.get_or_insert(cx.now);
        }
    }

    /// If the guest was told a window too small for a segment, or part of its data was
    /// refused, and the host socket has room now: tell it, and ask for what was refused
    /// at once. An update that would still be too small is not sent, so that rechecks do
    /// not send the guest duplicate ACKs.
    pub fn reopen_window(&mut self, cx: &mut Context<'_>) {
        let stalled = self.window_unusable || self.guest_data_refused;
        if !stalled || self.state != State::Established {
            return;
        }
        let window = self.window_for_guest(cx.host);
        let usable = if self.guest_data_refused { window > 0 } else { !self.window_unusable };
        if !usable {
            return;
        }
        // The first ACK updates the window; three duplicates of it make the guest
        // retransmit what was refused at once (fast retransmit).
        let copies = if self.guest_data_refused { 1 + DUPLICATE_ACKS } else { 1 };
        if let Ok(ack) = self.ack(cx.config, window) {
            cx.out.extend(std::iter::repeat_n(ack, copies));
            self.ack_due = None;
        }
        self.guest_data_refused = false;
    }
}

/// The most payload one offloaded segment to or from `guest` carries: the largest frame
/// less its Ethernet, IP and TCP headers (an IPv6 header is 20 bytes longer than IPv4's).
fn max_offloaded_payload(guest: SocketAddr) -> usize {
    MAX_FRAME_LEN - ETHERNET_HEADER_LEN - ip_tcp_headers_len(guest)
}

/// Peeks `want` bytes of `flow` from `offset` on into `buffers` (at most `N` of them),
/// `frame_payload` bytes into each but the last.
fn peek_into<const N: usize>(
    host: &mut dyn GatewayIo,
    flow: FlowId,
    offset: usize,
    buffers: &mut [FrameBuffer],
    want: usize,
    frame_payload: usize,
) -> io::Result<usize> {
    let mut slices: [IoSliceMut<'_>; N] = std::array::from_fn(|_| IoSliceMut::new(&mut []));
    let mut left = want;
    let mut used = 0;
    for (slice, buffer) in slices.iter_mut().zip(buffers.iter_mut()) {
        let len = left.min(frame_payload);
        *slice = IoSliceMut::new(&mut buffer.spare_mut()[..len]);
        left -= len;
        used += 1;
    }
    host.tcp_peek(flow, offset, &mut slices[..used])
}

/// What is left of `room` toward `guest` once the frames for it already in `out` are
/// counted. Lent receive buffers are asked for only while every frame ahead toward the
/// guest brings its own: a frame waiting for buffers in front of frames that hold some
/// could wait for ever.
fn egress_left(room: EgressRoom, guest: MacAddress, out: &[Frame]) -> EgressRoom {
    out.iter().filter(|frame| frame.destination() == guest).fold(room, |left, frame| EgressRoom {
        frames: left.frames.saturating_sub(1),
        bytes: left.bytes.saturating_sub(frame.len()),
        lends_receive: left.lends_receive && frame.tail().is_some_and(|tail| tail.ticket() != 0),
        ..left
    })
}

/// How many payload bytes fit into `room` as whole frames of `frame_payload` bytes behind
/// `headers_len` bytes of headers.
fn payload_room(room: EgressRoom, frame_payload: usize, headers_len: usize) -> usize {
    let frames = room.frames.min(room.bytes / (frame_payload + headers_len));
    frames.saturating_mul(frame_payload)
}
