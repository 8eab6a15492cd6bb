//! vhost-user-net inside vnet: QEMU's virtio-net rings, in memory the guest shares, served
//! by vnet's own loop, so a VM's frames skip the socket hop and its 64 KiB TSO segments
//! cross the switch and the gateway as one unit (`--listen vhost-user:PATH`).
//!
//! [`device`] answers the vhost-user requests with rust-vmm's `vhost` crate, [`rings`]
//! moves frames between the rings and vnet's buffers with `virtio-queue` and
//! `vm-memory`, and [`socket`] is the endpoint that ties a socket, a VM and a switch
//! port together. Like every transport, it only moves frames between a ring and a port:
//! it does not look inside them.

pub mod device;
pub mod rings;
pub mod socket;

pub use socket::{directory_socket_name, VhostUserSocket};

/// The events this transport counts on the network, besides the stream listeners'
/// `accepted`: `vhost_user_busy`, frontends turned away from a socket that already
/// serves a VM.
pub const EVENTS: [&str; 1] = ["vhost_user_busy"];
