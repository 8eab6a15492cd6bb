//! The ways frames enter vnet, one module per transport, each an endpoint of
//! [`vnet_runtime`]'s loop.
//!
//! Each transport only moves frames between a file descriptor and a switch port: the
//! stream transport speaks QEMU's length-prefixed framing ([`vnet_wire::framing`]); the
//! datagram, multicast and VDE transports carry one frame per datagram, and VXLAN one per
//! datagram behind its header to other hosts ([`vxlan`]); the tap transport relays a tap
//! device, the host's or one created inside a network namespace ([`netns`]). None of
//! them looks inside a frame (switching is [`vnet_switch`]'s job), and none knows the
//! command line that asked for it.

pub mod dgram;
pub mod mcast;
pub mod netns;
pub mod stream;
pub mod tap;
pub mod unix_path;
pub mod vde;
pub mod vxlan;

use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use thiserror::Error;

/// The events the transports count on the network ([`vnet_runtime::Context::count`]),
/// so that a report can show each of them, counted or not:
/// - `accepted`: connections accepted by stream and VDE listeners (not a loss);
/// - `bad_frame_length`: stream connections closed for a frame length of 0 or above the
///   limit;
/// - `truncated_frame`: stream connections that ended in the middle of a frame;
/// - `stalled_frame`: stream connections closed because their peer left a frame
///   unfinished for a minute;
/// - `unanswerable_datagram`: datagrams from peers vnet cannot answer (unnamed unix
///   sockets);
/// - `dgram_peer_evicted`: datagram peers that lost their port to a new peer because
///   the socket served its maximum and they were heard from least recently;
/// - `bad_vde_request`: VDE control connections closed for a malformed or refused port
///   request.
pub const EVENTS: [&str; 7] = [
    "accepted",
    "bad_frame_length",
    "truncated_frame",
    "stalled_frame",
    "unanswerable_datagram",
    "dgram_peer_evicted",
    "bad_vde_request",
];

/// A tap to create inside an existing network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetnsSpec {
    /// The namespace.
    pub target: NamespaceRef,
    /// The tap's name inside it.
    pub ifname: String,
}

/// A multicast segment to join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct McastSpec {
    /// The IPv4 multicast group.
    pub group: Ipv4Addr,
    /// The UDP port every member binds.
    pub port: u16,
    /// The local interface address to send and join on (QEMU's `localaddr=`).
    pub local: Option<Ipv4Addr>,
}

/// How a network namespace is named on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceRef {
    /// A bind-mounted namespace file such as `/run/netns/NAME`.
    Path(PathBuf),
    /// The namespace a process is in.
    Pid(u32),
}

impl fmt::Display for NamespaceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NamespaceRef::Path(path) => write!(f, "netns:{}", path.display()),
            NamespaceRef::Pid(pid) => write!(f, "netns:{pid}"),
        }
    }
}

/// A transport that could not be set up. The messages say what to change.
#[derive(Debug, Error)]
pub enum TransportError {
    /// A socket path exists but is something else.
    #[error("{0} exists and is not a socket; remove it or choose another path")]
    PathNotSocket(PathBuf),
    /// A live process serves the socket path.
    #[error("{0} is in use by a running process; stop that process or choose another path")]
    PathInUse(PathBuf),
    /// The socket file cannot be created.
    #[error("cannot create socket {0}: its directory is missing or not writable; choose a writable path")]
    PathNotWritable(PathBuf),
    /// A TCP or UDP port is taken.
    #[error("{0} is already in use; choose another port")]
    AddressInUse(String),
    /// A host name or address did not resolve.
    #[error("cannot resolve {0}: {1}; give an address as HOST:PORT, for example 127.0.0.1:1234")]
    Resolve(String, io::Error),
    /// A multicast segment was given a unicast group address.
    #[error("{0} is not a multicast address; use one in 224.0.0.0/4, for example 230.0.0.1")]
    NotMulticast(Ipv4Addr),
    /// A namespace could not be entered or a tap created there.
    #[error("{0}")]
    Namespace(String),
    /// The host tap could not be created for want of privilege.
    #[error("cannot create tap {0}: that needs CAP_NET_ADMIN; run vnet as root, or create the tap once for your user with `ip tuntap add {0} mode tap user $USER` (as root)")]
    TapPermission(String),
    /// The tun/tap device cannot be opened; the message says why and how to fix it.
    #[error("{0}")]
    TunDevice(String),
    /// VXLAN specs that do not fit together; the message says how to fix them.
    #[error("{0}")]
    Vxlan(String),
    /// Any other system error, with what vnet was doing.
    #[error("{context}: {source}")]
    Io {
        /// What vnet was doing.
        context: String,
        /// The system's error.
        source: io::Error,
    },
}

impl TransportError {
    /// An I/O error with context.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io { context: context.into(), source }
    }
}
