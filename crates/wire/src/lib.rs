//! Zero-copy views of the frames vnet moves, and the limits every layer agrees on.
//!
//! This crate is the bottom layer: it knows byte layouts (Ethernet today; IP, UDP and TCP
//! come from [`smoltcp::wire`]) and nothing about ports, sockets or the event loop. A
//! [`Frame`] owns its bytes through a reference-counted [`Bytes`], so flooding one frame to
//! many ports clones a pointer, not the payload.

pub mod offload;
pub mod vlan;

pub use bytes::Bytes;
pub use offload::Offload;
pub use smoltcp::wire::EthernetAddress as MacAddress;
use smoltcp::wire::EthernetFrame;

/// Length of an untagged Ethernet header: destination, source, EtherType.
pub const ETHERNET_HEADER_LEN: usize = 14;

/// The largest frame any vnet port accepts: a 65535-byte IP packet plus its Ethernet
/// header. QEMU's own stream backend refuses anything much larger.
pub const MAX_FRAME_LEN: usize = 65535 + ETHERNET_HEADER_LEN;

/// Why bytes are not a frame vnet will switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Shorter than an Ethernet header.
    Runt,
    /// Longer than [`MAX_FRAME_LEN`].
    Oversize,
}

/// One Ethernet frame without FCS, as every QEMU backend hands it over.
///
/// Construction checks the length once; the address accessors can then never fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    bytes: Bytes,
    offload: Offload,
}

impl Frame {
    /// Wraps `bytes` after checking that they can hold an Ethernet header and are not
    /// larger than [`MAX_FRAME_LEN`].
    pub fn new(bytes: Bytes) -> Result<Self, FrameError> {
        if bytes.len() < ETHERNET_HEADER_LEN {
            return Err(FrameError::Runt);
        }
        if bytes.len() > MAX_FRAME_LEN {
            return Err(FrameError::Oversize);
        }
        Ok(Self { bytes, offload: Offload::NONE })
    }

    /// Like [`Frame::new`], for a frame that still needs `offload` done.
    pub fn with_offload(bytes: Bytes, offload: Offload) -> Result<Self, FrameError> {
        Ok(Self { offload, ..Self::new(bytes)? })
    }

    /// A frame from bytes this crate built itself, whose length it has checked.
    pub(crate) fn unchecked(bytes: Bytes, offload: Offload) -> Self {
        Self { bytes, offload }
    }

    /// What the frame still needs done before it is what the wire carries.
    pub fn offload(&self) -> Offload {
        self.offload
    }

    /// The destination MAC address.
    pub fn destination(&self) -> MacAddress {
        self.header().dst_addr()
    }

    /// The source MAC address.
    pub fn source(&self) -> MacAddress {
        self.header().src_addr()
    }

    /// The whole frame, header included.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The frame's length in bytes, header included.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Always false: a [`Frame`] holds at least an Ethernet header.
    pub fn is_empty(&self) -> bool {
        false
    }

    fn header(&self) -> EthernetFrame<&[u8]> {
        EthernetFrame::new_unchecked(&self.bytes[..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_bytes(dst: [u8; 6], src: [u8; 6], payload_len: usize) -> Bytes {
        let mut v = Vec::new();
        v.extend_from_slice(&dst);
        v.extend_from_slice(&src);
        v.extend_from_slice(&[0x08, 0x00]);
        v.resize(ETHERNET_HEADER_LEN + payload_len, 0xab);
        Bytes::from(v)
    }

    #[test]
    fn addresses_are_read_from_the_header() {
        let dst = [0xff; 6];
        let src = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let frame = Frame::new(frame_bytes(dst, src, 46)).unwrap();
        assert_eq!(frame.destination(), MacAddress(dst));
        assert_eq!(frame.source(), MacAddress(src));
        assert_eq!(frame.len(), 60);
    }

    #[test]
    fn runts_and_giants_are_refused() {
        assert_eq!(Frame::new(Bytes::from_static(&[0; 13])), Err(FrameError::Runt));
        let giant = frame_bytes([1; 6], [2; 6], MAX_FRAME_LEN - ETHERNET_HEADER_LEN + 1);
        assert_eq!(Frame::new(giant), Err(FrameError::Oversize));
        let largest = frame_bytes([1; 6], [2; 6], MAX_FRAME_LEN - ETHERNET_HEADER_LEN);
        assert!(Frame::new(largest).is_ok());
    }
}
