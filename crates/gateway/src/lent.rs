//! Guest TCP segments whose payload stays in lent memory (a vhost-user guest's transmit
//! buffers) while the gateway handles them, so that it reaches the host socket without a
//! copy in vnet.
//!
//! The gateway parses packets as contiguous bytes. For such a segment it parses a
//! [`ParseView`]: the frame's head (every header) in a scratch buffer of the frame's
//! length, zeros after it. The payload's place in that view is then mapped back to the
//! frame ([`LentPayload::range_of`]), and the host socket reads it from guest memory.
//! Only segments whose checksum the guest left to offload qualify, as checking a
//! checksum reads every byte; any other frame is read whole, as before.
//!
//! This module knows Ethernet, IP and TCP header layouts; nothing of connections.

use std::ops::Range;

use smoltcp::wire::{EthernetProtocol, IpProtocol, ETHERNET_HEADER_LEN};
use vnet_wire::{Frame, MAX_FRAME_LEN};

const IPV4_PROTOCOL_AT: usize = 9;
const IPV6_NEXT_HEADER_AT: usize = 6;
const IPV6_HEADER_LEN: usize = 40;
const TCP_DATA_OFFSET_AT: usize = 12;

/// A lent frame being handled, and where its bytes are in the view the gateway parses.
pub(crate) struct LentPayload {
    frame: Frame,
    view: Range<usize>,
}

impl LentPayload {
    /// Where `data`, a slice of the parsed view, lies in the frame; None if it is not
    /// part of the view.
    pub fn range_of(&self, data: &[u8]) -> Option<(&Frame, Range<usize>)> {
        let start = data.as_ptr() as usize;
        let end = start.checked_add(data.len())?;
        if start < self.view.start || end > self.view.end {
            return None;
        }
        let offset = start - self.view.start;
        Some((&self.frame, offset..offset + data.len()))
    }
}

/// A zeroed buffer of the largest frame's length that heads of lent frames are copied
/// into for parsing, and zeroed again after; it takes its memory with the first lent
/// frame.
#[derive(Default)]
pub(crate) struct ParseView {
    scratch: Box<[u8]>,
    head_len: usize,
}

impl ParseView {
    /// The bytes to parse `frame` from, and for a lent TCP segment the mapping of its
    /// payload back to the frame: its head with zeros in place of its payload. Any other
    /// frame is its whole bytes.
    pub fn of<'a>(&'a mut self, frame: &'a Frame, mtu: usize) -> (&'a [u8], Option<LentPayload>) {
        if !parses_from_head(frame, mtu) {
            return (frame.as_bytes(), None);
        }
        if self.scratch.is_empty() {
            self.scratch = vec![0; MAX_FRAME_LEN].into_boxed_slice();
        }
        let head = frame.head();
        self.scratch[..head.len()].copy_from_slice(head);
        self.head_len = head.len();
        let view = &self.scratch[..frame.len()];
        let range = view.as_ptr() as usize..view.as_ptr() as usize + view.len();
        (view, Some(LentPayload { frame: frame.clone(), view: range }))
    }

    /// Zeroes what the last [`ParseView::of`] copied in.
    pub fn clear(&mut self) {
        self.scratch[..self.head_len].fill(0);
        self.head_len = 0;
    }
}

/// Whether `frame` is a lent TCP segment over IPv4 or IPv6 whose checksum the guest left
/// to offload and whose head holds its Ethernet, IP and TCP headers; a packet over the
/// MTU must be a segment the guest left to cut, as only those pass the gateway whole.
fn parses_from_head(frame: &Frame, mtu: usize) -> bool {
    let head = frame.head();
    if head.len() == frame.len() || frame.offload().checksum.is_none() {
        return false;
    }
    if frame.len() > ETHERNET_HEADER_LEN + mtu && frame.offload().segmentation.is_none() {
        return false;
    }
    let ethertype = EthernetProtocol::from(u16::from_be_bytes([head[12], head[13]]));
    let ip = &head[ETHERNET_HEADER_LEN..];
    let (protocol, ip_header_len) = match ethertype {
        EthernetProtocol::Ipv4 => {
            (ip.get(IPV4_PROTOCOL_AT).copied(), ip.first().map(|b| usize::from(b & 0x0f) * 4))
        }
        EthernetProtocol::Ipv6 => (ip.get(IPV6_NEXT_HEADER_AT).copied(), Some(IPV6_HEADER_LEN)),
        _ => return false,
    };
    let (Some(protocol), Some(ip_header_len)) = (protocol, ip_header_len) else {
        return false;
    };
    if IpProtocol::from(protocol) != IpProtocol::Tcp {
        return false;
    }
    let tcp_header_len = ip.get(ip_header_len + TCP_DATA_OFFSET_AT).map(|b| usize::from(b >> 4) * 4);
    tcp_header_len.is_some_and(|len| ip_header_len + len <= ip.len())
}
