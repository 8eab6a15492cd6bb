//! Room on the segment toward a guest: how much TCP may send it before its port's queue
//! is full ([`GuestEgress`]), answered by whoever runs the gateway on a switch. The host
//! sockets are [`crate::HostSockets`]' business; [`GatewayIo`] is both together, as the
//! gateway core's calls take them.

use std::rc::Rc;

use vnet_wire::frame::{LendRefusal, LentTail};
use vnet_wire::MacAddress;

use crate::host::HostSockets;

/// How much more the segment takes toward one guest now, and in what form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EgressRoom {
    /// Frames.
    pub frames: usize,
    /// Bytes, headers included.
    pub bytes: usize,
    /// Whether the guest's port takes frames with offloads left to do, so TCP can send it
    /// 64 KiB segments with partial checksums.
    pub takes_offloads: bool,
    /// Whether the guest's port lends its receive buffers
    /// ([`GuestEgress::lend_receive`]).
    pub lends_receive: bool,
}

impl EgressRoom {
    /// No limit known (the guest's port is not known, so its frames are flooded), and
    /// frames ready for any wire.
    pub const UNLIMITED: EgressRoom =
        EgressRoom { frames: usize::MAX, bytes: usize::MAX, takes_offloads: false, lends_receive: false };
}

/// Room toward guests on the segment.
pub trait GuestEgress {
    /// How much more the segment takes toward the guest at `guest` now. TCP sends the
    /// guest no more than this, leaving the rest in the host socket, and goes on when
    /// [`crate::Gateway::on_guest_room`] is called.
    fn guest_room(&mut self, guest: MacAddress) -> EgressRoom;

    /// Whether the switch port numbered `port` is still there. Port numbers are never
    /// reused, so a lease of a gone port may pass to its guest on a new one.
    fn port_exists(&self, port: u32) -> bool;

    /// Room in the receive buffers of the guest at `guest` itself, if its port lends
    /// them: a tail of `payload_len` bytes behind `headers_len` bytes of headers, for
    /// TCP to peek a host socket into ([`crate::HostSockets::tcp_peek_lent`]) and send as
    /// a frame's tail; or why there is none. A port that does not lend (this default)
    /// is [`LendRefusal::Unable`].
    fn lend_receive(
        &mut self,
        guest: MacAddress,
        headers_len: usize,
        payload_len: usize,
    ) -> Result<Rc<LentTail>, LendRefusal> {
        let _ = (guest, headers_len, payload_len);
        Err(LendRefusal::Unable)
    }
}

/// Everything the gateway core calls out to: host sockets and room on the segment.
pub trait GatewayIo: HostSockets + GuestEgress {}

impl<T: HostSockets + GuestEgress> GatewayIo for T {}
