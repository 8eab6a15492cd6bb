//! The ways frames enter vnet, one module per transport, and the event loop that drives
//! them.
//!
//! Each transport only moves frames between a file descriptor and a switch port: the
//! stream transport speaks QEMU's length-prefixed framing ([`framing`]), the datagram and
//! multicast transports carry one frame per datagram, and the tap transport relays a tap
//! device created inside a network namespace ([`netns`]). None of them looks inside a
//! frame; switching is [`vnet_switch`]'s job. [`network::Network`] owns the switch and
//! every endpoint and runs them on one thread.

pub mod dgram;
pub mod framing;
pub mod gateway;
pub mod mcast;
pub mod netns;
pub mod network;
pub mod stream;
mod sys;
pub mod tap;
mod unix_path;
pub mod vde;

use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use thiserror::Error;
use vnet_switch::PortVlans;

pub use network::{Network, NetworkConfig, NetworkCounters, NetworkStopped, Remote, Supervisor};

/// Where vnet accepts peers (`--listen`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenSpec {
    /// `stream:unix:PATH`: QEMU `-netdev stream,server=off,addr.type=unix`.
    StreamUnix(PathBuf),
    /// `stream:tcp:HOST:PORT`: QEMU `-netdev stream,server=off,addr.type=inet` or
    /// `-netdev socket,connect=`.
    StreamTcp(String),
    /// `dgram:unix:PATH`: QEMU `-netdev dgram` with unix addresses.
    DgramUnix(PathBuf),
    /// `dgram:udp:HOST:PORT`: QEMU `-netdev dgram` with inet addresses.
    DgramUdp(String),
    /// `vde:DIR`: a vde_switch directory, for QEMU `-netdev vde,sock=DIR` and vde_plug.
    Vde(PathBuf),
}

/// What vnet connects to (`--attach`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachSpec {
    /// `stream:unix:PATH`: a QEMU listening with `-netdev stream,server=on`.
    StreamUnix(PathBuf),
    /// `stream:tcp:HOST:PORT`: a QEMU listening with `server=on` or `socket,listen=`.
    StreamTcp(String),
    /// `mcast:GROUP:PORT`: a QEMU `-netdev socket,mcast=` segment.
    Mcast(McastSpec),
    /// `netns:PATH|PID[,ifname=NAME]`: a tap inside an existing network namespace.
    Netns(NetnsSpec),
    /// `vde:DIR`: a port of the vde_switch serving DIR.
    Vde(PathBuf),
    /// `tap:NAME`: the host's tap NAME, created if absent.
    Tap(String),
}

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

/// The spec as `--listen` spells it.
impl fmt::Display for ListenSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenSpec::StreamUnix(path) => write!(f, "stream:unix:{}", path.display()),
            ListenSpec::StreamTcp(addr) => write!(f, "stream:tcp:{addr}"),
            ListenSpec::DgramUnix(path) => write!(f, "dgram:unix:{}", path.display()),
            ListenSpec::DgramUdp(addr) => write!(f, "dgram:udp:{addr}"),
            ListenSpec::Vde(dir) => write!(f, "vde:{}", dir.display()),
        }
    }
}

/// The spec as `--attach` spells it.
impl fmt::Display for AttachSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttachSpec::StreamUnix(path) => write!(f, "stream:unix:{}", path.display()),
            AttachSpec::StreamTcp(addr) => write!(f, "stream:tcp:{addr}"),
            AttachSpec::Mcast(McastSpec { group, port, local: None }) => write!(f, "mcast:{group}:{port}"),
            AttachSpec::Mcast(McastSpec { group, port, local: Some(local) }) => {
                write!(f, "mcast:{group}:{port},localaddr={local}")
            }
            AttachSpec::Netns(NetnsSpec { target, ifname }) => write!(f, "{target},ifname={ifname}"),
            AttachSpec::Vde(dir) => write!(f, "vde:{}", dir.display()),
            AttachSpec::Tap(name) => write!(f, "tap:{name}"),
        }
    }
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
    /// A gateway operation on a network started with `--no-user`.
    #[error("the network has no gateway (it runs with --no-user)")]
    NoGateway,
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

impl Network {
    /// Accepts peers at `spec`, their ports on `vlans`: binds now, so a bad address fails
    /// before the loop runs.
    pub fn listen(&mut self, spec: &ListenSpec, vlans: PortVlans) -> Result<(), TransportError> {
        let endpoint: Box<dyn network::Endpoint> = match spec {
            ListenSpec::StreamUnix(path) => Box::new(stream::Listener::bind_unix(path)?),
            ListenSpec::StreamTcp(addr) => Box::new(stream::Listener::bind_tcp(addr)?),
            ListenSpec::DgramUnix(path) => Box::new(dgram::DgramListener::bind_unix(path)?),
            ListenSpec::DgramUdp(addr) => {
                Box::new(dgram::DgramListener::bind_udp(addr, self.config().dgram_peer_timeout)?)
            }
            ListenSpec::Vde(dir) => Box::new(vde::VdeListener::bind(dir)?),
        };
        self.add_endpoint(endpoint, vlans).map(drop)
    }

    /// Connects to or joins `spec`, its port on `vlans`. Stream peers that are not up
    /// yet are retried from the loop; a namespace is entered now, so call this before
    /// starting any thread.
    pub fn attach(&mut self, spec: &AttachSpec, vlans: PortVlans) -> Result<(), TransportError> {
        let endpoint: Box<dyn network::Endpoint> = match spec {
            AttachSpec::StreamUnix(path) => {
                Box::new(stream::Dialer::new(stream::DialTarget::Unix(path.clone())))
            }
            AttachSpec::StreamTcp(addr) => {
                Box::new(stream::Dialer::new(stream::DialTarget::Tcp(stream::resolve(addr)?)))
            }
            AttachSpec::Mcast(spec) => Box::new(mcast::McastSegment::join(spec)?),
            AttachSpec::Netns(spec) => {
                let tap = netns::open_tap_in(&spec.target, &spec.ifname)?;
                Box::new(tap::TapPort::new(tap, format!("{} ifname={}", spec.target, spec.ifname)))
            }
            AttachSpec::Vde(dir) => Box::new(vde::VdeAttachment::connect(dir)?),
            AttachSpec::Tap(name) => {
                Box::new(tap::TapPort::new(tap::open_host_tap(name)?, format!("tap:{name}")))
            }
        };
        self.add_endpoint(endpoint, vlans).map(drop)
    }

    /// Relays an open tap descriptor, such as the one [`netns::spawn_in_new_namespace`]
    /// returns.
    pub fn attach_tap(&mut self, tap: OwnedFd, name: String) -> Result<(), TransportError> {
        self.add_endpoint(Box::new(tap::TapPort::new(tap, name)), PortVlans::default()).map(drop)
    }
}
