//! What `--listen` and `--attach` name ([`ListenSpec`], [`AttachSpec`]), and the
//! transport endpoint each one opens on a network. Parsing the spellings is
//! [`crate::spec`]'s job; moving frames is the transports'.

use std::fmt;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

use vnet_runtime::{Endpoint, Network};
use vnet_switch::PortPolicy;
use vnet_transport::vxlan::{VxlanSpec, VxlanTunnel};
use vnet_transport::{dgram, mcast, netns, stream, tap, vde, McastSpec, NetnsSpec, TransportError};
use vnet_vhost_user::VhostUserSocket;

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
    /// `vhost-user:PATH`: QEMU `-netdev vhost-user` over `-chardev socket,path=PATH`, one VM.
    VhostUser(PathBuf),
    /// `vhost-user:DIR/`: a fresh vhost-user socket per VM in DIR (`vm-N.sock`).
    VhostUserDir(PathBuf),
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
    /// `vxlan:REMOTE[:PORT],vni=N,...`: a VNI shared with remote VTEPs.
    Vxlan(VxlanSpec),
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
            ListenSpec::VhostUser(path) => write!(f, "vhost-user:{}", path.display()),
            ListenSpec::VhostUserDir(dir) => write!(f, "vhost-user:{}/", dir.display()),
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
            AttachSpec::Vxlan(spec) => write!(f, "{spec}"),
        }
    }
}

/// Accepts peers at `spec` on `network`, their ports following `policy`; a datagram peer is
/// dropped after `dgram_peer_timeout` of silence. Binds now, so a bad address fails
/// before the loop runs.
pub fn listen(
    network: &mut Network,
    spec: &ListenSpec,
    policy: PortPolicy,
    dgram_peer_timeout: Duration,
) -> anyhow::Result<()> {
    let endpoint: Box<dyn Endpoint> = match spec {
        ListenSpec::StreamUnix(path) => Box::new(stream::Listener::bind_unix(path)?),
        ListenSpec::StreamTcp(addr) => Box::new(stream::Listener::bind_tcp(addr)?),
        ListenSpec::DgramUnix(path) => Box::new(dgram::DgramListener::bind_unix(path)?),
        ListenSpec::DgramUdp(addr) => Box::new(dgram::DgramListener::bind_udp(addr, dgram_peer_timeout)?),
        ListenSpec::Vde(dir) => Box::new(vde::VdeListener::bind(dir)?),
        ListenSpec::VhostUser(path) => Box::new(VhostUserSocket::bind(path)?),
        ListenSpec::VhostUserDir(dir) => Box::new(VhostUserSocket::bind_directory(dir)?),
    };
    network.add_endpoint(endpoint, policy)?;
    Ok(())
}

/// Opens the VXLAN specs among `attach` as tunnels, those that share a local port
/// together (see [`VxlanTunnel::open_all`]); add them to the network with
/// [`Network::add_endpoint`].
pub fn open_vxlan<'a>(
    attach: impl IntoIterator<Item = (&'a AttachSpec, &'a PortPolicy)>,
) -> Result<Vec<VxlanTunnel>, TransportError> {
    let specs: Vec<(VxlanSpec, PortPolicy)> = attach
        .into_iter()
        .filter_map(|(spec, policy)| match spec {
            AttachSpec::Vxlan(spec) => Some((spec.clone(), policy.clone())),
            _ => None,
        })
        .collect();
    VxlanTunnel::open_all(&specs)
}

/// Connects `network` to or joins `spec`, its port following `policy`. Stream peers that are not
/// up yet are retried from the loop; a namespace is entered now, so call this before
/// starting any thread. VXLAN specs are left to [`open_vxlan`], which opens them together.
pub fn attach(network: &mut Network, spec: &AttachSpec, policy: PortPolicy) -> anyhow::Result<()> {
    let endpoint: Box<dyn Endpoint> = match spec {
        AttachSpec::StreamUnix(path) => Box::new(stream::Dialer::new(stream::DialTarget::Unix(path.clone()))),
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
        AttachSpec::Vxlan(_) => return Ok(()),
    };
    network.add_endpoint(endpoint, policy)?;
    Ok(())
}

/// Relays an open tap descriptor, such as the one [`netns::spawn_in_new_namespace`]
/// returns.
pub fn attach_tap(network: &mut Network, tap: OwnedFd, name: String) -> Result<(), TransportError> {
    network
        .add_endpoint(Box::new(tap::TapPort::new(tap, name)), PortPolicy::default())
        .map(drop)
        .map_err(|e| TransportError::io(e.context, e.source))
}
