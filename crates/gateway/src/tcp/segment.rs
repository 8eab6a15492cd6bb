//! The segments vnet sends a guest on a connection: their header fields from the
//! connection's state ([`Outgoing`]), and the frames around them (SYN, SYN-ACK, ACK, RST,
//! data). What to send and when is decided elsewhere; this file only builds.

use std::net::SocketAddr;
use std::rc::Rc;

use smoltcp::wire::{TcpControl, TcpRepr, TcpSeqNumber};
use vnet_wire::frame::LentTail;
use vnet_wire::offload::{SegmentKind, Segmentation};
use vnet_wire::{Frame, FrameBuffer, FrameError, MacAddress, Offload};

use super::connection::{Connection, State, OUR_WINDOW_SCALE};
use crate::config::GatewayConfig;
use crate::egress::GatewayIo;
use crate::packet::{self, BuiltFrame};

/// A segment to send to the guest: its fields that the connection does not fix.
pub(super) struct Outgoing<'a> {
    pub control: TcpControl,
    pub seq: u32,
    pub ack: Option<u32>,
    pub window: usize,
    pub syn_options: bool,
    pub payload: &'a [u8],
}

impl Connection {
    /// Our SYN toward the guest, for an inbound (hostfwd) connection.
    pub fn syn(&self, config: &GatewayConfig, host: &mut dyn GatewayIo) -> BuiltFrame {
        let syn = Outgoing {
            control: TcpControl::Syn,
            seq: self.snd_una,
            ack: None,
            window: host.tcp_send_space(self.flow),
            syn_options: true,
            payload: &[],
        };
        self.segment(config, &syn)
    }

    /// The SYN-ACK answering the guest's SYN.
    pub fn syn_ack(&mut self, config: &GatewayConfig, host: &mut dyn GatewayIo) -> BuiltFrame {
        let window = self.window_for_guest(host);
        let syn_ack = Outgoing {
            control: TcpControl::Syn,
            seq: self.snd_una,
            ack: Some(self.rcv_nxt),
            window,
            syn_options: true,
            payload: &[],
        };
        self.segment(config, &syn_ack)
    }

    /// A segment that only acknowledges and offers `window`.
    pub fn ack(&self, config: &GatewayConfig, window: usize) -> BuiltFrame {
        let ack = Outgoing {
            control: TcpControl::None,
            seq: self.snd_nxt,
            ack: Some(self.rcv_nxt),
            window,
            syn_options: false,
            payload: &[],
        };
        self.segment(config, &ack)
    }

    /// A window probe: an ACK with a sequence number the guest has already taken, which
    /// it answers with an ACK that tells its window (RFC 9293, 3.8.6.1), so a lost
    /// window update cannot stall the connection.
    pub fn window_probe(&self, config: &GatewayConfig, window: usize) -> BuiltFrame {
        let probe = Outgoing {
            control: TcpControl::None,
            seq: self.snd_una.wrapping_sub(1),
            ack: Some(self.rcv_nxt),
            window,
            syn_options: false,
            payload: &[],
        };
        self.segment(config, &probe)
    }

    /// A RST for the guest's side of the connection.
    pub fn reset(&self, config: &GatewayConfig) -> BuiltFrame {
        let seq = if self.state == State::Connecting { 0 } else { self.snd_nxt };
        let reset = Outgoing {
            control: TcpControl::Rst,
            seq,
            ack: Some(self.rcv_nxt),
            window: 0,
            syn_options: false,
            payload: &[],
        };
        self.segment(config, &reset)
    }

    /// `outgoing` as a frame, its payload copied.
    pub fn segment(&self, config: &GatewayConfig, outgoing: &Outgoing<'_>) -> BuiltFrame {
        let repr = self.repr(config, outgoing);
        packet::tcp(config.mac(), self.guest_mac, self.remote, self.guest, &repr)
    }

    /// A data segment with `header`'s fields around `payload` (peeked into a pooled
    /// buffer). For a port that offloads, its checksum is left partial and it is cut at
    /// the guest's MSS by the port if it is longer; for others it is whole and at most
    /// one MSS long.
    pub fn data_segment(
        &self,
        config: &GatewayConfig,
        header: &Outgoing<'_>,
        payload: FrameBuffer,
        offloaded: bool,
    ) -> BuiltFrame {
        let repr = self.repr(config, header);
        let payload_len = payload.len();
        let frame = packet::tcp_around(
            payload,
            config.mac(),
            self.guest_mac,
            self.remote,
            self.guest,
            &repr,
            offloaded,
        )?;
        if !offloaded {
            return Ok(frame);
        }
        Ok(frame.with_offload(self.offload_for(payload_len)))
    }

    /// The headers of a data segment with `header`'s fields and `payload_len` bytes of
    /// payload that will lie elsewhere (in the guest's receive buffers), to go in front
    /// of them with [`Connection::lent_data_segment`].
    pub fn headers_for_lent(
        &self,
        config: &GatewayConfig,
        header: &Outgoing<'_>,
        payload_len: usize,
    ) -> Result<FrameBuffer, FrameError> {
        let repr = self.repr(config, header);
        packet::tcp_headers_before(payload_len, config.mac(), self.guest_mac, self.remote, self.guest, &repr)
    }

    /// A data segment of `headers` and the payload peeked into `tail`, which the guest's
    /// port lent: offloaded as toward any port that offloads.
    pub fn lent_data_segment(&self, headers: FrameBuffer, tail: Rc<LentTail>) -> BuiltFrame {
        let offload = self.offload_for(tail.len());
        Frame::with_lent_tail(headers, tail, offload)
    }

    /// What a port that offloads does to a data segment of `payload_len` bytes: completes
    /// its partial checksum, and cuts it at the guest's MSS if it is longer.
    fn offload_for(&self, payload_len: usize) -> Offload {
        let kind = if self.guest.is_ipv4() { SegmentKind::TcpV4 } else { SegmentKind::TcpV6 };
        let segmentation = (payload_len > self.mss).then_some(Segmentation { kind, size: self.mss as u16 });
        let checksum = Some(packet::tcp_partial_checksum(self.guest.ip()));
        Offload { checksum, segmentation }
    }

    /// The header fields (and payload) of `outgoing` on this connection.
    fn repr<'p>(&self, config: &GatewayConfig, outgoing: &Outgoing<'p>) -> TcpRepr<'p> {
        let scale = if outgoing.control == TcpControl::Syn { 0 } else { self.our_window_scale };
        TcpRepr {
            src_port: self.remote.port(),
            dst_port: self.guest.port(),
            control: outgoing.control,
            seq_number: TcpSeqNumber(outgoing.seq as i32),
            ack_number: outgoing.ack.map(|ack| TcpSeqNumber(ack as i32)),
            window_len: (outgoing.window >> scale).min(usize::from(u16::MAX)) as u16,
            window_scale: (outgoing.syn_options && self.our_window_scale > 0).then_some(OUR_WINDOW_SCALE),
            max_seg_size: outgoing.syn_options.then(|| mss_for_mtu(config.mtu, self.guest) as u16),
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: outgoing.payload,
        }
    }
}

/// The IP and TCP headers (without options) of a segment to or from `guest`.
pub(super) fn ip_tcp_headers_len(guest: SocketAddr) -> usize {
    packet::ip_header_len(guest.ip()) + packet::TCP_HEADER_LEN
}

/// The largest TCP payload in a packet of `mtu` bytes to or from `guest`.
pub(super) fn mss_for_mtu(mtu: u16, guest: SocketAddr) -> usize {
    usize::from(mtu).saturating_sub(ip_tcp_headers_len(guest))
}

/// A RST from `dst` to the guest at `guest_mac`/`guest`, answering `repr`, a segment
/// that has no connection.
pub(super) fn reset_for(
    config: &GatewayConfig,
    guest_mac: MacAddress,
    guest: SocketAddr,
    dst: SocketAddr,
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
