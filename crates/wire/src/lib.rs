//! Zero-copy views of the frames vnet moves, and the limits every layer agrees on.
//!
//! This crate is the bottom layer: it knows byte layouts (Ethernet, 802.1Q, virtio-net
//! headers, QEMU's stream framing, the VDE request, the VXLAN header; IP, UDP and TCP come from
//! [`smoltcp::wire`]) and nothing about ports, sockets or the event loop. A [`Frame`]
//! lives in a pooled buffer ([`frame`]), so flooding one frame to many ports counts a
//! reference, not a copy, and a buffer whose last frame is gone is reused.

#![forbid(unsafe_code)]

pub mod frame;
pub mod framing;
pub mod offload;
pub mod vde;
pub mod vlan;
pub mod vxlan;

pub use frame::{Frame, FrameBuffer, FrameError};
pub use offload::Offload;
pub use smoltcp::wire::EthernetAddress as MacAddress;

/// Length of an untagged Ethernet header: destination, source, EtherType.
pub const ETHERNET_HEADER_LEN: usize = 14;

/// The largest frame any vnet port accepts: a 65535-byte IP packet plus its Ethernet
/// header. QEMU's own stream backend refuses anything much larger.
pub const MAX_FRAME_LEN: usize = 65535 + ETHERNET_HEADER_LEN;
