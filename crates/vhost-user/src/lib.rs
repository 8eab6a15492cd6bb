//! vhost-user-net inside vnet: QEMU's virtio-net rings, in memory the guest shares, served
//! by vnet's own loop, so a VM's frames skip the socket hop and its 64 KiB TSO segments
//! cross the switch and the gateway as one unit (`--listen vhost-user:PATH`).
//!
//! [`device`] answers the vhost-user requests with rust-vmm's `vhost` crate, [`rings`]
//! moves frames between the rings and vnet's buffers with `virtio-queue` and
//! `vm-memory`, [`lending`] leaves transmitted payloads in guest memory while vnet
//! handles them, [`receiving`] lends the guest's receive buffers so that host data is
//! peeked straight into them, and [`socket`] is the endpoint that ties a socket, a VM and a switch
//! port together. Like every transport, it only moves frames between a ring and a port:
//! it does not look inside them.

pub mod device;
pub mod lending;
pub mod receiving;
pub mod rings;
pub mod socket;

pub use socket::{directory_socket_name, VhostUserSocket};

/// The events this transport counts on the network, besides the stream listeners'
/// `accepted`: `vhost_user_busy`, frontends turned away from a socket that already
/// serves a VM; `vhost_user_lent`, transmitted frames whose payload crossed vnet in the
/// guest's memory; `vhost_user_lent_copied`, those of them copied after all, as a
/// port still held them when their loop turn ended; `vhost_user_received_in_place`,
/// frames whose payload was peeked straight into the guest's receive buffers; and
/// `vhost_user_receive_unclaimed`, receive buffers taken for a frame that never came,
/// given back empty.
pub const EVENTS: [&str; 5] = [
    "vhost_user_busy",
    "vhost_user_lent",
    "vhost_user_lent_copied",
    "vhost_user_received_in_place",
    "vhost_user_receive_unclaimed",
];
